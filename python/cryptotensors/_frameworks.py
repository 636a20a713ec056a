"""Framework adapters: allocate the output array, hand its memory to the core
(as a buffer: a numpy array over its bytes), and move the result to the
requested device. Frameworks are imported lazily.

The arguments (framework names, devices, backends) are converted and checked
by the binding (`_core.load_target`), with safetensors 0.8's errors. Each
adapter maps the core's dtype table (`_core.DTYPES`: header name -> (bits,
the frameworks' type name)) to its framework's dtype objects, here and
nowhere else."""

from __future__ import annotations

import functools
import importlib
import os

from ._core import DTYPES, SafetensorError

# canonical framework name (from _core.load_target) -> module to import
_MODULES = {"tf": "tensorflow", "flax": "jax.numpy", "mlx": "mlx.core", "paddle": "paddle"}

# numpy's own types; BF16, F8_* and F4 need ml_dtypes (or jax) to register
# them, the F6 types have none.
_NUMPY_NATIVE = ("F64", "F32", "F16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL", "C64")


@functools.cache
def numpy_types() -> dict:
    """{header dtype: numpy dtype} for numpy's own types."""
    import numpy

    return {code: numpy.dtype(DTYPES[code][1]) for code in _NUMPY_NATIVE}


class Framework:
    """numpy arrays; the base of the other non-torch frameworks."""

    name = "np"

    def __init__(self):
        import numpy

        self.np = numpy
        self._types = numpy_types()

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
        name = DTYPES[dtype][1]
        if name is None:
            raise SafetensorError(f"Dtype not understood: {dtype}")
        try:
            return getattr(self.np, name)
        except AttributeError:
            raise AttributeError(
                f"dtype {dtype} cannot be loaded with numpy: module 'numpy' has no attribute '{name}'"
            ) from None

    def empty(self, dtype: str, shape, nbytes: int):
        """A new array and its bytes (`nbytes`, the core's count), the buffer
        the core reads into."""
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


# The dtypes safetensors.torch._TYPES lists, in its order (cryptotensors.torch
# re-exports that table); torch also loads F8_E8M0 and F4, which it omits.
TORCH_LISTED = (
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
    "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ", "C64", "U64", "U32", "U16",
)
# Dtypes whose tensors torch's .numpy() converts as they are.
_TORCH_NUMPY = ("F64", "F32", "F16", "C64", "I64", "I32", "I16", "I8", "U8", "BOOL")


@functools.cache
def torch_types() -> dict:
    """{header dtype: torch dtype} for every format dtype this torch has."""
    import torch

    return {code: getattr(torch, name) for code, (_, name) in DTYPES.items() if name and hasattr(torch, name)}


def torch_dtype(dtype: str):
    """The torch dtype of a header dtype (safetensors.torch._getdtype)."""
    tdtype = torch_types().get(dtype)
    if tdtype is None:
        raise SafetensorError(f"Dtype not understood: {dtype}")
    return tdtype


@functools.cache
def _torch_numpy() -> frozenset:
    return frozenset(torch_types()[code] for code in _TORCH_NUMPY)


def torch_bytes(tensor):
    """A contiguous CPU tensor as a numpy array sharing its memory (uint8
    where numpy lacks the dtype): the buffer the core reads or fills, as it
    takes no addresses."""
    if tensor.dtype in _torch_numpy():
        return tensor.numpy()
    return (tensor if tensor.dim() else tensor.reshape(1)).view(torch_types()["U8"]).numpy()


class Torch(Framework):
    name = "pt"

    def __init__(self):
        import torch

        self.torch = torch

    _getdtype = staticmethod(torch_dtype)

    def _torch_shape(self, dtype: str, shape):
        shape = list(shape)
        if dtype == "F4":
            # torch packs two F4 values per float4_e2m1fn_x2 element.
            if not shape or shape[-1] % 2:
                raise SafetensorError(f"f4_x2 dtype requires that the last dim be divisible by 2 in torch: got {shape}")
            shape[-1] //= 2
        return shape

    def empty(self, dtype: str, shape, nbytes: int):
        """A new CPU tensor and its bytes (`nbytes`, the core's count), the
        buffer the core reads into."""
        tshape, tdtype = self._torch_shape(dtype, shape), self._getdtype(dtype)
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
        return t, torch_bytes(t)

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

    def __init__(self, name: str):
        super().__init__()
        self.name, self._module = name, _MODULES[name]
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


def get(name: str) -> Framework:
    """The adapter of a canonical framework name (see `_core.load_target`)."""
    if name == "pt":
        return Torch()
    if name == "np":
        return Framework()
    return Converted(name)
