"""Framework adapters: allocate the output array, hand its memory to the core,
and move the result to the requested device. Frameworks are imported lazily."""

from __future__ import annotations

import ctypes
import importlib

from ._core import SafetensorError

_PT_NAMES = {"pt", "torch", "pytorch"}
_NP_NAMES = {"np", "numpy"}
# name given -> (canonical name, module to import)
_OTHER = {
    "tf": ("tf", "tensorflow"),
    "tensorflow": ("tf", "tensorflow"),
    "flax": ("flax", "jax.numpy"),
    "jax": ("flax", "jax.numpy"),
    "mlx": ("mlx", "mlx.core"),
    "paddle": ("paddle", "paddle"),
}
_DEVICES = ("cpu", "cuda", "mps", "npu", "xpu", "xla", "mlu", "musa", "hpu")


def _import(module: str, framework: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SafetensorError(f"framework {framework!r} needs the {module!r} package, which is not installed") from e


def check_device(framework: Framework, device) -> str:
    if isinstance(device, int):
        device = f"cuda:{device}"
    if not isinstance(device, str):
        device = str(device)
    kind = device.split(":", 1)[0]
    if kind not in _DEVICES:
        raise SafetensorError(f"device {device!r} is not supported")
    if kind != "cpu" and framework.name not in ("pt", "paddle"):
        raise SafetensorError(f"device {device!r} is only supported for the pt and paddle frameworks")
    return device


def bytes_buffer(n: int):
    """A writable buffer of n bytes and its address."""
    buf = bytearray(n)
    ptr = ctypes.addressof((ctypes.c_char * n).from_buffer(buf)) if n else 0
    return buf, ptr


class Framework:
    """numpy arrays; the base of the other non-torch frameworks."""

    name = "np"

    def __init__(self):
        import numpy

        self.np = numpy
        self._types = {
            "F64": numpy.float64, "F32": numpy.float32, "F16": numpy.float16,
            "I64": numpy.int64, "U64": numpy.uint64, "I32": numpy.int32, "U32": numpy.uint32,
            "I16": numpy.int16, "U16": numpy.uint16, "I8": numpy.int8, "U8": numpy.uint8,
            "BOOL": numpy.bool_, "C64": numpy.complex64,
        }

    def empty(self, dtype: str, shape):
        try:
            np_dtype = self._types[dtype]
        except KeyError:
            raise SafetensorError(f"dtype {dtype} has no {self.name} equivalent") from None
        arr = self.np.empty(shape, dtype=np_dtype)
        return arr, arr.ctypes.data, arr.nbytes

    def finish(self, arr, device: str):
        return arr

    def mapped(self, handle, offset, dtype, shape, nbytes):
        return None


class Torch(Framework):
    name = "pt"

    def __init__(self):
        import torch

        self.torch = torch
        from .torch import _getdtype

        self._getdtype = _getdtype

    def _torch_shape(self, dtype: str, shape):
        shape = list(shape)
        if dtype == "F4":
            # torch packs two F4 values per float4_e2m1fn_x2 element.
            if not shape or shape[-1] % 2:
                raise SafetensorError("F4 tensors need an even last dimension")
            shape[-1] //= 2
        return shape

    def empty(self, dtype: str, shape):
        t = self.torch.empty(self._torch_shape(dtype, shape), dtype=self._getdtype(dtype))
        return t, t.data_ptr(), t.untyped_storage().nbytes()

    def finish(self, t, device: str):
        return t if device == "cpu" else t.to(device)

    def to_cuda(self, handle, name, dtype, shape, nbytes, device):
        """Straight to a CUDA device through pinned staging (see _cuda)."""
        from . import _cuda

        return _cuda.load(handle, name, self._getdtype(dtype), self._torch_shape(dtype, shape), nbytes, device)

    def mapped(self, opened, offset, dtype, shape, nbytes):
        """A zero-copy view of plain tensor bytes through torch's own file map."""
        tdtype = self._getdtype(dtype)
        itemsize = tdtype.itemsize
        if nbytes == 0 or offset % itemsize:
            return None
        storage = opened._torch_storage()
        t = self.torch.empty((0,), dtype=self.torch.uint8)
        t.set_(storage, offset, (nbytes,))
        return t.view(tdtype).reshape(self._torch_shape(dtype, shape))


class Converted(Framework):
    """Frameworks fed from numpy arrays: tensorflow, jax, mlx, paddle."""

    def __init__(self, name: str, module: str):
        super().__init__()
        self.name = name
        self.mod = _import(module, name)

    def finish(self, arr, device: str):
        if self.name == "tf":
            return self.mod.convert_to_tensor(arr)
        if self.name == "flax":
            return self.mod.asarray(arr)
        if self.name == "mlx":
            return self.mod.array(arr)
        t = self.mod.to_tensor(arr)
        return t if device == "cpu" else t.to(device)


def get(framework: str) -> Framework:
    if framework in _PT_NAMES:
        _import("torch", framework)
        return Torch()
    if framework in _NP_NAMES:
        return Framework()
    if framework in _OTHER:
        return Converted(*_OTHER[framework])
    raise SafetensorError(f"framework {framework!r} is not supported: use pt, np, tf, flax, mlx or paddle")
