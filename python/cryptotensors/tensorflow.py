"""tensorflow save and load (through numpy), as safetensors.tensorflow."""

import tensorflow as tf

from ._numpy_based import make

save, save_file, load, load_file = make("tf", lambda t: t.numpy(), tf.convert_to_tensor)
