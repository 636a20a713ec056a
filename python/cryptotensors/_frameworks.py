"""Framework adapters: allocate the output array, hand its memory to the core
(as a buffer: a numpy array over its bytes), and move the result to the
requested device. Frameworks are imported lazily.

Argument checking (framework names, devices, backends) follows safetensors
0.8 exactly, error classes and messages included."""

from __future__ import annotations

import importlib
import operator
import os
from typing import Tuple

from ._core import SafetensorError

_PT_NAMES = ("pt", "torch", "pytorch")
_NP_NAMES = ("np", "numpy")
# name given -> (canonical name, name in error messages, module to import)
_OTHER = {
    "tf": ("tf", "tensorflow", "tensorflow"),
    "tensorflow": ("tf", "tensorflow", "tensorflow"),
    "flax": ("flax", "flax", "jax.numpy"),
    "jax": ("flax", "flax", "jax.numpy"),
    "mlx": ("mlx", "mlx", "mlx.core"),
    "paddle": ("paddle", "paddle", "paddle"),
}
# Devices named "kind" or "kind:N" (N defaults to 0); "mps" has no index.
_INDEXED = ("cuda", "npu", "xpu", "xla", "mlu", "musa", "hpu")
BACKENDS = ("mmap", "pread")
_U64 = 1 << 64


def expect_str(value, argument: str) -> str:
    """`value` if it is a str, else the TypeError safetensors raises."""
    if isinstance(value, str):
        return value
    what = "'None'" if value is None else f"'{type(value).__name__}' object"
    raise TypeError(f"argument '{argument}': {what} is not an instance of 'str'")


def check_backend(backend) -> str:
    if expect_str(backend, "backend") not in BACKENDS:
        raise SafetensorError(f'backend "{backend}" is invalid (expected one of: "mmap", "pread")')
    return backend


def _parse_index(text: str) -> int:
    """Rust's `str::parse::<usize>`, with its error messages."""
    if not text:
        raise ValueError("cannot parse integer from empty string")
    digits = text[1:] if text[0] == "+" else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        raise ValueError("invalid digit found in string")
    n = int(digits)
    if n >= _U64:
        raise ValueError("number too large to fit in target type")
    return n


def parse_device(device) -> Tuple[str, str]:
    """`(device, shown)`: the torch-style device string ("cpu", "cuda:1",
    "mps", ...) and the name safetensors gives it in error messages. Accepts
    what safetensors accepts: None (the CPU), "cpu", "mps", "cuda", "cuda:N"
    and the other accelerators, and an int N (a CUDA device index)."""
    if device is None:
        return "cpu", "cpu"
    if isinstance(device, str):
        if device in ("cpu", "mps"):
            return device, device
        if device in _INDEXED:
            return f"{device}:0", f"{device}:0"
        parts = device.split(":")
        if len(parts) == 2 and parts[0] in _INDEXED + ("mps",):
            n = _parse_index(parts[1])
            if parts[0] == "mps":
                if n != 0:
                    raise SafetensorError(f"device {device} is invalid: only mps or mps:0 is supported")
                return "mps", "mps"
            return f"{parts[0]}:{n}", f"{parts[0]}:{n}"
        raise SafetensorError(f"device {device} is invalid")
    try:
        n = operator.index(device)
    except TypeError:
        n = -1
    if not 0 <= n < _U64:
        raise SafetensorError(f"device {device!r} is invalid")
    return f"cuda:{n}", str(n)


def check_device(framework: Framework, device: str, shown: str) -> None:
    """Refuses a device the framework cannot load to (after the file is opened, as in safetensors)."""
    kind = device.split(":", 1)[0]
    if kind == "cpu" or framework.name == "pt" or (framework.name == "paddle" and kind == "cuda"):
        return
    raise SafetensorError(f"Device {shown} is not supported for framework {framework.label}")


# numpy attribute safetensors looks up for dtypes numpy itself lacks
# (AttributeError, unless a framework such as jax registered them).
_NUMPY_ATTRS = {
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F4": "float4_e2m1fn_x2",
}


class Framework:
    """numpy arrays; the base of the other non-torch frameworks."""

    name = "np"
    label = "numpy"

    def __init__(self):
        import numpy

        self.np = numpy
        self._types = {
            "F64": numpy.float64, "F32": numpy.float32, "F16": numpy.float16,
            "I64": numpy.int64, "U64": numpy.uint64, "I32": numpy.int32, "U32": numpy.uint32,
            "I16": numpy.int16, "U16": numpy.uint16, "I8": numpy.int8, "U8": numpy.uint8,
            "BOOL": numpy.bool_, "C64": numpy.complex64,
        }

    def load(self) -> None:
        """Imports the framework's module (ModuleNotFoundError if it is not installed)."""

    def _np_dtype(self, dtype: str):
        np_dtype = self._types.get(dtype)
        if np_dtype is not None:
            return np_dtype
        # Same error classes as safetensors: numpy has no bfloat16 (TypeError)
        # nor float8/float4 types (AttributeError), unless ml_dtypes added them.
        if dtype == "BF16":
            try:
                return self.np.dtype("bfloat16")
            except TypeError:
                raise TypeError("dtype BF16 cannot be loaded with numpy: data type 'bfloat16' not understood") from None
        if dtype in _NUMPY_ATTRS:
            try:
                return getattr(self.np, _NUMPY_ATTRS[dtype])
            except AttributeError:
                raise AttributeError(
                    f"dtype {dtype} cannot be loaded with numpy: module 'numpy' has no attribute '{_NUMPY_ATTRS[dtype]}'"
                ) from None
        raise SafetensorError(f"Dtype not understood: {dtype}")

    def empty(self, dtype: str, shape):
        """A new array and its bytes, the buffer the core reads into."""
        self.load()
        arr = self.np.empty(shape, dtype=self._np_dtype(dtype))
        return arr, arr

    def finish(self, arr, device: str):
        return arr

    def slice_to_cuda(self, handle, name, spec, dtype, shape, nbytes, device):
        """A slice (`shape` is its own) to a CUDA device through pinned memory."""
        from . import _cuda

        return _cuda.load_slice(handle, name, spec, self._getdtype(dtype), self._torch_shape(dtype, shape), nbytes, device)

    def mapped(self, storage, offset, dtype, shape, nbytes):
        return None


# Torch outputs from this size up are numpy buffers (see Torch.empty), the size
# from which numpy advises huge pages; CRYPTOTENSORS_HUGEPAGES=0 turns it off.
_HUGE = 1 << 22
_ALIGN = 64
_HUGEPAGES = os.environ.get("CRYPTOTENSORS_HUGEPAGES", "1") != "0"


class Torch(Framework):
    name = "pt"
    label = "pytorch"

    def __init__(self):
        import torch

        self.torch = torch
        from .torch import _bytes_of, _getdtype

        self._getdtype, self._bytes_of = _getdtype, _bytes_of

    def _torch_shape(self, dtype: str, shape):
        shape = list(shape)
        if dtype == "F4":
            # torch packs two F4 values per float4_e2m1fn_x2 element.
            if not shape or shape[-1] % 2:
                raise SafetensorError(f"f4_x2 dtype requires that the last dim be divisible by 2 in torch: got {shape}")
            shape[-1] //= 2
        return shape

    def empty(self, dtype: str, shape):
        """A new CPU tensor and its bytes, the buffer the core reads into."""
        tshape, tdtype = self._torch_shape(dtype, shape), self._getdtype(dtype)
        nbytes = tdtype.itemsize
        for d in tshape:
            nbytes *= d
        if nbytes >= _HUGE and _HUGEPAGES:
            # A load's main cost is faulting in fresh output memory. numpy asks
            # the kernel for transparent huge pages on large buffers, torch's
            # allocator does not (unless THP_MEM_ALLOC_ENABLE=1 at start-up):
            # 512 times fewer page faults, measured 0.055 s against 0.19 s to
            # fill 1 GiB here. Aligned to 64 bytes, as torch's own buffers.
            import numpy

            buf = numpy.empty(nbytes + _ALIGN, dtype=numpy.uint8)
            skip = -buf.ctypes.data % _ALIGN
            out = buf[skip : skip + nbytes]
            return self.torch.from_numpy(out).view(tdtype).view(tshape), out
        t = self.torch.empty(tshape, dtype=tdtype)
        return t, self._bytes_of(t)

    def finish(self, t, device: str):
        return t if device == "cpu" else t.to(device)

    def to_cuda(self, handle, name, dtype, shape, nbytes, device):
        """Straight to a CUDA device through pinned staging (see _cuda)."""
        from . import _cuda

        return _cuda.load(handle, name, self._getdtype(dtype), self._torch_shape(dtype, shape), nbytes, device)

    def slice_to_cuda(self, handle, name, spec, dtype, shape, nbytes, device):
        """A slice (`shape` is its own) to a CUDA device through pinned memory."""
        from . import _cuda

        return _cuda.load_slice(handle, name, spec, self._getdtype(dtype), self._torch_shape(dtype, shape), nbytes, device)

    def mapped(self, storage, offset, dtype, shape, nbytes):
        """A zero-copy view of plain tensor bytes in torch's own file map
        (`storage`, see safe_open), or None where none can be made."""
        tdtype = self._getdtype(dtype)
        if nbytes == 0 or offset % tdtype.itemsize:
            return None
        t = self.torch.empty((0,), dtype=self.torch.uint8)
        t.set_(storage, offset, (nbytes,))
        return t.view(tdtype).reshape(self._torch_shape(dtype, shape))


class Converted(Framework):
    """Frameworks fed from numpy arrays: tensorflow, jax, mlx, paddle."""

    def __init__(self, name: str, label: str, module: str):
        super().__init__()
        self.name, self.label, self._module = name, label, module
        self.mod = None

    def load(self) -> None:
        if self.mod is None:
            # As in safetensors, a missing framework is a ModuleNotFoundError.
            self.mod = importlib.import_module(self._module)

    def finish(self, arr, device: str):
        self.load()
        if self.name == "tf":
            return self.mod.convert_to_tensor(arr)
        if self.name == "flax":
            return self.mod.asarray(arr)
        if self.name == "mlx":
            return self.mod.array(arr)
        t = self.mod.to_tensor(arr)
        return t if device == "cpu" else t.to(device)


def get(framework) -> Framework:
    """The adapter of a framework name (names are case-sensitive, as in safetensors)."""
    expect_str(framework, "framework")
    if framework in _PT_NAMES:
        return Torch()
    if framework in _NP_NAMES:
        return Framework()
    if framework in _OTHER:
        return Converted(*_OTHER[framework])
    raise SafetensorError(f"framework {framework} is invalid")
