"""flax / jax save and load (through numpy), as safetensors.flax."""

import jax.numpy as jnp

from ._numpy_based import make

save, save_file, load, load_file = make("flax", lambda t: t, jnp.asarray)
