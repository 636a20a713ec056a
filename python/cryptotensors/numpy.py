"""numpy save and load, as safetensors.numpy, with encryption options."""

from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from ._core import DTYPES, SafetensorError, spec_dtype
from ._frameworks import Framework, numpy_types
from ._open import safe_open
from ._serialize import TensorSpec, open_bytes, serialize, serialize_file

# numpy dtype -> TensorSpec dtype name, for numpy's own types.
_NAMES = {np_dtype: DTYPES[code][1] for code, np_dtype in numpy_types().items()}


def _specs(tensor_dict: Dict[str, np.ndarray]):
    """Contiguous little-endian arrays and their TensorSpecs; the arrays are
    returned so that the caller keeps them alive while serializing."""
    keep, specs = [], {}
    for name, arr in tensor_dict.items():
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"Key `{name}` is invalid, expected np.ndarray but received {type(arr)}")
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        # np.ascontiguousarray would turn a 0-d array into shape (1,).
        arr = np.require(arr, requirements="C")
        dtype = _NAMES.get(np.dtype(arr.dtype).newbyteorder("="))
        if dtype is None:
            # safetensors' "Unknown dtype" error, from the binding; the types
            # ml_dtypes adds (bfloat16...) are refused too, as safetensors does.
            spec_dtype(arr.dtype.name)
            raise SafetensorError(f"Unknown dtype \"{arr.dtype.name}\"")
        keep.append(arr)
        specs[name] = TensorSpec._of(dtype, arr.shape, arr, arr.ctypes.data)
    return keep, specs


def save(tensor_dict: Dict[str, np.ndarray], metadata: Optional[Dict[str, str]] = None, **options) -> bytes:
    """Saves arrays to bytes. Options: encrypt_for, encrypted_tensors, algorithm, segment_size, sign_with."""
    keep, specs = _specs(tensor_dict)
    out = serialize(specs, metadata=metadata, **options)
    del keep
    return out


def save_file(tensor_dict: Dict[str, np.ndarray], filename, metadata: Optional[Dict[str, str]] = None, **options) -> None:
    """Saves arrays to a file, atomically."""
    keep, specs = _specs(tensor_dict)
    serialize_file(specs, filename, metadata=metadata, **options)
    del keep


def load(data: bytes, **load_options) -> Dict[str, np.ndarray]:
    """Loads arrays from bytes. Options: keys, trusted_signers, require_encryption, num_threads."""
    h = open_bytes(data, **load_options)
    fw = Framework()
    out = {}
    for name in h.offset_keys():
        dtype, shape, nbytes, _, _ = h.info(name)
        if dtype not in fw._types:
            raise KeyError(dtype)  # as safetensors, for dtypes numpy lacks
        arr, dest = fw.empty(dtype, shape, nbytes)
        h.read_into(name, dest)
        out[name] = arr
    return out


def load_file(filename, *, backend: str = "mmap", **load_options) -> Dict[str, np.ndarray]:
    """Loads every array of a file. Options: keys, trusted_signers, require_encryption, num_threads."""
    with safe_open(os.fspath(filename), framework="np", backend=backend, _every_tensor=True, **load_options) as f:
        return f.get_tensors()
