"""Shared body of the tensorflow, flax (jax), mlx and paddle modules: convert
to numpy on save, load through numpy and convert back."""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import numpy as np

from . import numpy as _np
from ._open import safe_open


def make(framework: str, to_numpy: Callable, from_numpy: Callable):
    """Builds save, save_file, load and load_file for one framework."""

    def save(tensors: Dict, metadata: Optional[Dict[str, str]] = None, **options) -> bytes:
        return _np.save({k: np.asarray(to_numpy(v)) for k, v in tensors.items()}, metadata=metadata, **options)

    def save_file(tensors: Dict, filename, metadata: Optional[Dict[str, str]] = None, **options) -> None:
        _np.save_file({k: np.asarray(to_numpy(v)) for k, v in tensors.items()}, filename, metadata=metadata, **options)

    def load(data: bytes, **load_options) -> Dict:
        return {k: from_numpy(v) for k, v in _np.load(data, **load_options).items()}

    def load_file(filename, *, backend: str = "mmap", **load_options) -> Dict:
        with safe_open(os.fspath(filename), framework=framework, backend=backend, _every_tensor=True, **load_options) as f:
            return f.get_tensors()

    return save, save_file, load, load_file
