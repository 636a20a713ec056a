"""safe_open: the lazy, safetensors-compatible reader, with transparent decryption."""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from . import _core, _frameworks, _keys, _policy, _providers, _serialize
from ._core import Handle


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
        # The binding converts the arguments, with safetensors' errors.
        name, self._device, self._backend = _core.load_target(framework, device, backend)
        self._framework = _frameworks.get(name)
        if os.path.isdir(self._filename):
            raise OSError("No such device (os error 19)")  # what mapping a directory gives in safetensors
        ring, trusted = _keys.keyring(keys), _keys.trusted(trusted_signers)
        policy = _policy.input_json(self._framework.name, self._device, policy_input, _every_tensor)
        try:
            # The key providers (HSM, key service) come last in the chain: the
            # core lists and asks them only when the key ring opens nothing.
            self._handle = Handle.open(
                self._filename, self._backend, ring, trusted, bool(require_encryption), _keys.threads(num_threads),
                providers=_providers.providers, policy_input=policy,
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"No such file or directory: {self._filename}") from None
        try:
            _core.check_device(framework, device)
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
        name, self._device, _ = _core.load_target(framework, device, backend)
        self._framework = _frameworks.get(name)
        self._backend = "pread"  # nothing to map: the bytes are already in memory
        self._handle = _serialize.open_bytes(
            data, keys, trusted_signers, require_encryption, num_threads, policy_input,
            framework=self._framework.name, device=self._device, every_tensor=False,
        )
        try:
            _core.check_device(framework, device)
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
        arr, dest = fw.empty(dtype, shape, nbytes)
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
            t, dest = fw.empty(self._dtype, self._shape, self._nbytes)
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
            # encrypted tensor slices by the same rules as the plain file
            # would: safetensors' own, converted (and refused, with its
            # errors) by the binding.
            selected = self._handle.select(self._name, index, torch=True)
            if selected is None:
                return self[...][index]
        else:
            selected = self._handle.select(self._name, index)
        spec, shape, nbytes = selected
        fw = self._framework
        if self._device.startswith("cuda") and isinstance(fw, _frameworks.Torch):
            # As get_tensor: through pinned memory, never pageable (see _cuda).
            return fw.slice_to_cuda(self._handle, self._name, spec, self._dtype, shape, nbytes, self._device)
        arr, dest = self._framework.empty(self._dtype, shape, nbytes)
        self._handle.read_slice_into(self._name, spec, dest)
        return self._framework.finish(arr, self._device)
