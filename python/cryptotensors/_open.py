"""safe_open: the lazy, safetensors-compatible reader, with transparent decryption."""

from __future__ import annotations

import operator
import os
import threading
from typing import Any, Optional

from . import _frameworks, _keys, _policy, _providers, _serialize
from ._core import Handle, SafetensorError


def _index_spec(index) -> Optional[list]:
    """Turns a numpy-style index into the core's form, or None when it uses
    something the core does not slice natively (None, arrays, bools)."""
    items = index if isinstance(index, tuple) else (index,)
    spec = []
    for it in items:
        if it is Ellipsis:
            spec.append(("e",))
        elif isinstance(it, slice):
            try:
                start = None if it.start is None else operator.index(it.start)
                stop = None if it.stop is None else operator.index(it.stop)
                step = 1 if it.step is None else operator.index(it.step)
            except TypeError:
                return None
            if step < 1:
                return None
            spec.append(("s", start, stop, step))
        elif isinstance(it, bool) or it is None:
            return None
        else:
            try:
                spec.append(("i", operator.index(it)))
            except TypeError:
                return None
    return spec


_I32 = 1 << 31
_U64 = 1 << 64
_I64 = 1 << 63


def _unsigned(v) -> Optional[int]:
    """A slice bound as safetensors reads it (an unsigned 64-bit integer)."""
    if v is None:
        return None
    v = operator.index(v)  # TypeError for floats, strings...
    if v < 0:
        raise OverflowError("can't convert negative int to unsigned")
    if v >= _U64:
        raise OverflowError("int too big to convert")
    return v


def _show(spec) -> str:
    """An index in the core's form as safetensors prints it: [1, 0:2, ::2]."""

    def one(it):
        if it[0] == "i":
            return str(it[1])
        _, start, stop, step = it
        text = f"{'' if start is None else start}:{'' if stop is None else stop}"
        return text + (f":{step}" if step != 1 else "")

    return "[" + ", ".join(one(it) for it in spec) + "]"


def _strict_spec(index, shape) -> list:
    """The core's form of an index under safetensors 0.8's own slicer rules
    (its numpy framework and its "pread" backend), raising what it raises:

    * an index is an int (32-bit; negative counts from the end), a slice with
      non-negative bounds (else OverflowError) and a positive step, or one
      ellipsis, which stands for full slices of the dimensions not named;
      None, floats, arrays and nested sequences are refused, a list only
      when empty (it means [0:0]);
    * an int must be inside its dimension; a slice must start inside it and
      not stop past it, so that nothing is selected from an empty dimension
      (dimensions not named are taken whole); these are checked from the
      last dimension to the first;
    * a slice stopping before it starts (where safetensors fails with a
      SystemError or a panic) is refused too.

    Items are checked one by one, in order, as safetensors does."""
    if isinstance(index, list):
        if index:
            raise SafetensorError("Non empty lists are not implemented")
        items = (slice(0, 0),)
    else:
        items = index if isinstance(index, tuple) else (index,)
    if sum(it is Ellipsis for it in items) > 1:
        raise SafetensorError("Only one ellipsis (...) is allowed in slice index")
    ndim = len(shape)
    named = sum(it is not Ellipsis for it in items)
    spec = []
    for it in items:
        dim = len(spec)  # positions count the dimensions the ellipsis stands for
        if it is Ellipsis:
            spec.extend(("s", None, None, 1) for _ in range(ndim - named))
        elif isinstance(it, slice):
            start, stop = _unsigned(it.start), _unsigned(it.stop)
            step = 1 if it.step is None else operator.index(it.step)
            if not -_I64 <= step < _I64:
                raise OverflowError("Python int too large to convert to C long")
            if step <= 0:
                raise SafetensorError(f"Slice step must be a positive integer, got {step}")
            spec.append(("s", start, stop, step))
        else:
            try:
                i = operator.index(it)
            except TypeError:
                i = None
            if i is None or not -_I32 <= i < _I32:
                raise SafetensorError(f"Unsupported slice index at position {dim}: expected slice, int, or ellipsis")
            size = shape[dim] if dim < ndim else 0
            if i < 0:
                if i + size < 0:
                    raise SafetensorError(f"Invalid index {i} for dimension {dim} of size {size}")
                i += size
            spec.append(("i", i))

    def fail(reason):
        raise SafetensorError(f"Error during slicing {_show(spec)} with shape {list(shape)}: {reason}")

    if len(spec) > ndim:
        fail("more slicing indexes than dimensions in tensor")
    for dim, (it, size) in reversed(list(enumerate(zip(spec, shape)))):  # last dimension first
        if it[0] == "i":
            bad = it[1] if it[1] >= size else None
        else:
            start = it[1] or 0
            stop = size if it[2] is None else it[2]
            bad = start if start >= size else stop - 1 if stop > size else None
        if bad is not None:
            fail(f"index {bad} out of bounds for tensor dimension #{dim} of size {size}")
    for it in spec:
        if it[0] == "s" and it[1] is not None and it[2] is not None and it[2] < it[1]:
            fail(f"the slice {it[1]}:{it[2]} stops before it starts")
    return spec


class safe_open:
    """Opens a safetensors (or cryptotensors) file lazily.

    Args:
        filename: path of the file.
        framework: "pt", "np", "tf", "flax", "mlx" or "paddle".
        device: where tensors go ("cpu", "cuda:0", ...).
        backend: "mmap" (default) or "pread".
        keys: JWK(s) that may open an encrypted file (added to CRYPTOTENSORS_KEYS
            and the config file's keys).
        trusted_signers: public JWK(s); when set (here or in
            CRYPTOTENSORS_TRUSTED_SIGNERS) the file must be signed by one of them.
        require_encryption: refuse files that are not encrypted.
        num_threads: decryption threads (default: CRYPTOTENSORS_NUM_THREADS, else all cores).
    """

    def __init__(
        self,
        filename,
        framework: str,
        device: Any = "cpu",
        *,
        backend: str = "mmap",
        keys: Any = None,
        trusted_signers: Any = None,
        require_encryption: bool = False,
        num_threads: Optional[int] = None,
        policy_input: Optional[dict] = None,
        _every_tensor: bool = False,
    ):
        self._fd = None
        self._storage = None
        self._storage_lock = threading.Lock()
        # Arguments are checked in safetensors' order, with its errors.
        if isinstance(filename, (bytes, bytearray)):
            raise TypeError(f"argument 'filename': '{type(filename).__name__}' object is not an instance of 'str'")
        try:
            self._filename = os.fspath(filename)
        except TypeError as e:
            raise TypeError(f"argument 'filename': {e}") from None
        self._framework = _frameworks.get(framework)
        self._device, shown_device = _frameworks.parse_device(device)
        self._backend = _frameworks.check_backend(backend)
        if os.path.isdir(self._filename):
            raise OSError("No such device (os error 19)")  # what mapping a directory gives in safetensors
        ring, trusted = _keys.keyring(keys), _keys.trusted(trusted_signers)
        policy = _policy.input_json(self._framework.name, self._device, policy_input, _every_tensor)
        try:
            # The key providers (HSM, key service) come last in the chain: the
            # core lists and asks them only when the key ring opens nothing.
            self._handle = Handle.open(
                self._filename, backend, ring, trusted, bool(require_encryption), _keys.threads(num_threads),
                providers=_providers.providers, policy_input=policy,
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"No such file or directory: {self._filename}") from None
        try:
            _frameworks.check_device(self._framework, self._device, shown_device)
            if self._framework.name == "paddle":
                self._framework.load()  # safetensors imports paddle here, the others on first use
        except BaseException:
            self._handle.close()
            raise
        if self._framework.name == "pt" and self._backend == "mmap":
            # torch maps the file itself for zero-copy views of plain tensors
            # (see _torch_storage). Hold the file open from now on, so that the
            # map shows the file opened here even if its path is replaced.
            try:
                self._fd = os.open(self._filename, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self._fd = None

    @classmethod
    def _over_bytes(
        cls,
        data: bytes,
        framework: str,
        device: Any = "cpu",
        *,
        keys: Any = None,
        trusted_signers: Any = None,
        require_encryption: bool = False,
        num_threads: Optional[int] = None,
        policy_input: Optional[dict] = None,
        backend: str = "pread",
    ) -> safe_open:
        """A handle over a file's bytes held in memory (see _safe_open_handle),
        verified as an open of the file would be."""
        self = cls.__new__(cls)
        self._fd, self._storage, self._storage_lock = None, None, threading.Lock()
        self._filename = "<file object>"
        self._framework = _frameworks.get(framework)
        self._device, shown_device = _frameworks.parse_device(device)
        _frameworks.check_backend(backend)
        self._backend = "pread"  # nothing to map: the bytes are already in memory
        self._handle = _serialize.open_bytes(
            data, keys, trusted_signers, require_encryption, num_threads, policy_input,
            framework=self._framework.name, device=self._device, every_tensor=False,
        )
        try:
            _frameworks.check_device(self._framework, self._device, shown_device)
        except BaseException:
            self._handle.close()
            raise
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        with self._storage_lock:
            self._storage = None
            self._close_fd()
        return None

    def __del__(self):
        self._close_fd()

    def _close_fd(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def _torch_storage(self):
        """torch's private (copy-on-write) map of the file, made on first use."""
        with self._storage_lock:
            if self._storage is None:
                import torch

                path = self._filename
                if self._fd is not None:
                    size = os.fstat(self._fd).st_size
                    proc = f"/proc/self/fd/{self._fd}"
                    if os.path.exists(proc):
                        path = proc  # the file opened, even if its path was replaced since
                else:
                    size = os.path.getsize(path)
                self._storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=size)
                self._close_fd()
            return self._storage

    def keys(self) -> list:
        """Tensor names, sorted."""
        return sorted(self._handle.offset_keys())

    def offset_keys(self) -> list:
        """Tensor names in file order."""
        return self._handle.offset_keys()

    def metadata(self) -> Optional[dict]:
        """The user's `__metadata__`, or None."""
        return self._handle.metadata()

    def describe(self) -> dict:
        """Encryption and signature facts of the file (algorithm, recipients, signer...)."""
        return self._handle.describe()

    def get_tensor(self, name: str):
        """Loads one tensor; encrypted tensors are decrypted straight into the result."""
        dtype, shape, nbytes, _encrypted, raw = self._handle.info(name)
        fw = self._framework
        if self._device.startswith("cuda") and isinstance(fw, _frameworks.Torch):
            return fw.to_cuda(self._handle, name, dtype, shape, nbytes, self._device)
        t = self._mapped(raw, dtype, shape, nbytes)
        if t is not None:
            return t
        arr, dest = fw.empty(dtype, shape)
        if dest.nbytes != nbytes:
            raise SafetensorError(f"tensor {name!r}: {dtype}{list(shape)} does not fit its {nbytes} bytes")
        self._handle.read_into(name, dest)
        return fw.finish(arr, self._device)

    def _mapped(self, raw, dtype, shape, nbytes):
        """A zero-copy view for a plain tensor (torch, CPU, mmap), else None."""
        if raw is None or self._device != "cpu" or not self._torch_maps():
            return None
        return self._framework.mapped(self._torch_storage(), raw, dtype, shape, nbytes)

    def _torch_maps(self) -> bool:
        return self._framework.name == "pt" and self._backend == "mmap"

    def get_tensors(self) -> dict:
        """Every tensor, in file order."""
        return {k: self.get_tensor(k) for k in self.offset_keys()}

    def get_slice(self, name: str) -> PySafeSlice:
        """A lazy view of one tensor; indexing it reads only what it needs."""
        dtype, _shape, nbytes, _encrypted, raw = self._handle.info(name)
        # As in safetensors, torch with the "mmap" backend takes torch's own
        # indexing, on a view of the file map for a plain tensor (results are
        # views). F4, which torch packs two values to an element, is sliced by
        # the core's slicer under safetensors' rules (safetensors fails on F4
        # slices, but for empty tensors).
        torch_indexing = self._torch_maps() and (dtype != "F4" or not nbytes)
        storage = self._torch_storage() if torch_indexing and raw is not None else None
        return PySafeSlice(self._handle.share(), self._framework, self._device, name, storage, torch_indexing)


class PySafeSlice:
    """A lazily indexed tensor; works after its file handle is closed."""

    def __init__(self, handle, framework, device, name, storage=None, torch_indexing=False):
        self._storage = storage  # torch's map of the file, for torch indexing
        self._torch_indexing = torch_indexing
        self._handle = handle
        self._framework = framework
        self._device = device
        self._name = name
        self._dtype, self._shape, self._nbytes, self._encrypted, self._raw = handle.info(name)

    def get_shape(self) -> list:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def _whole(self):
        """The whole tensor for torch's indexing: a view of the map, else a copy."""
        fw = self._framework
        if self._dtype == "F4":  # empty (see get_slice): in its logical shape, as in safetensors
            return fw.torch.empty(self._shape, dtype=fw._getdtype("F4"))
        t = None
        if self._storage is not None:
            t = fw.mapped(self._storage, self._raw, self._dtype, self._shape, self._nbytes)
        if t is None:
            t, dest = fw.empty(self._dtype, self._shape)
            self._handle.read_into(self._name, dest)
        return t

    def __getitem__(self, index):
        if self._torch_indexing and (self._storage is not None or not self._nbytes):
            out = self._whole()[index]  # torch's own indexing, as in safetensors
            return out if self._device == "cpu" else out.to(self._device)
        if self._torch_indexing:
            # torch with mmap on the CPU, for what cannot be mapped (encrypted
            # tensors, and plain ones whose bytes must be verified first): the
            # core's slicer reads only what the index selects, with basic
            # indexing clamped as torch's; what it does not take (None,
            # negative steps...) is indexed on the whole tensor. Elsewhere an
            # encrypted tensor slices by the same rules as the plain file would.
            spec = _index_spec(index)
            if spec is None:
                return self[...][index]
        else:
            spec = _strict_spec(index, self._shape)
        shape, nbytes = self._handle.slice_shape(self._name, spec)
        fw = self._framework
        if self._device.startswith("cuda") and isinstance(fw, _frameworks.Torch):
            # As get_tensor: through pinned memory, never pageable (see _cuda).
            return fw.slice_to_cuda(self._handle, self._name, spec, self._dtype, shape, nbytes, self._device)
        arr, dest = self._framework.empty(self._dtype, shape)
        if dest.nbytes != nbytes:
            raise SafetensorError(f"slice of {self._name!r} does not fit its dtype {self._dtype}")
        self._handle.read_slice_into(self._name, spec, dest)
        return self._framework.finish(arr, self._device)
