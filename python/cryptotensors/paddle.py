"""paddle save and load (through numpy), as safetensors.paddle."""

import paddle

from ._numpy_based import make

save, save_file, load, load_file = make("paddle", lambda t: t.numpy(), paddle.to_tensor)
