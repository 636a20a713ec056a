"""safe_open: the lazy, safetensors-compatible reader, with transparent decryption."""

from __future__ import annotations

import operator
import os
from typing import Any, Optional

from . import _frameworks, _keys, _policy, _providers
from ._core import Handle, KeyNotFoundError, SafetensorError


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
        self._framework = _frameworks.get(framework)
        self._device = _frameworks.check_device(self._framework, device)
        self._filename = os.fspath(filename)
        self._backend = backend
        args = (
            self._filename,
            backend,
            _keys.keyring_json(keys),
            _keys.trusted_json(trusted_signers),
            bool(require_encryption),
            _keys.threads(num_threads),
        )
        policy = _policy.input_json(self._framework.name, self._device, policy_input, _every_tensor)
        try:
            self._handle = Handle.open(*args, policy_input=policy)
        except KeyNotFoundError:
            # Last in the provider chain: key providers (HSM, key service).
            provided = _providers.data_keys(_providers.recipients_of_file(self._filename)) if _providers.providers() else []
            if not provided:
                raise
            self._handle = Handle.open(*args, data_keys=provided, policy_input=policy)
        self._storage = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        self._storage = None
        return None

    def _torch_storage(self):
        if self._storage is None:
            import torch

            size = os.path.getsize(self._filename)
            self._storage = torch.UntypedStorage.from_file(self._filename, shared=False, nbytes=size)
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
        arr, ptr, size = fw.empty(dtype, shape)
        if size != nbytes:
            raise SafetensorError(f"tensor {name!r}: {dtype}{list(shape)} does not fit its {nbytes} bytes")
        self._handle.read_into(name, ptr, nbytes)
        return fw.finish(arr, self._device)

    def _mapped(self, raw, dtype, shape, nbytes):
        """A zero-copy view for a plain tensor (torch, CPU, mmap), else None."""
        if raw is None or self._backend != "mmap" or self._device != "cpu":
            return None
        return self._framework.mapped(self, raw, dtype, shape, nbytes)

    def get_tensors(self) -> dict:
        """Every tensor, in file order."""
        return {k: self.get_tensor(k) for k in self.offset_keys()}

    def get_slice(self, name: str) -> PySafeSlice:
        """A lazy view of one tensor; indexing it reads only what it needs."""
        dtype, shape, nbytes, _encrypted, raw = self._handle.info(name)
        mapped = self._mapped(raw, dtype, shape, nbytes)
        return PySafeSlice(self._handle.share(), self._framework, self._device, name, mapped)


class PySafeSlice:
    """A lazily indexed tensor; works after its file handle is closed."""

    def __init__(self, handle, framework, device, name, mapped=None):
        self._mapped = mapped  # a zero-copy torch view of a plain tensor, if any
        self._handle = handle
        self._framework = framework
        self._device = device
        self._name = name
        self._dtype, self._shape = handle.info(name)[:2]

    def get_shape(self) -> list:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __getitem__(self, index):
        if self._mapped is not None:
            return self._mapped[index]  # torch's own indexing, as in safetensors
        spec = _index_spec(index)
        if spec is None:
            return self[...][index]
        shape, nbytes = self._handle.slice_shape(self._name, spec)
        arr, ptr, size = self._framework.empty(self._dtype, shape)
        if size != nbytes:
            raise SafetensorError(f"slice of {self._name!r} does not fit its dtype {self._dtype}")
        self._handle.read_slice_into(self._name, spec, ptr, nbytes)
        return self._framework.finish(arr, self._device)
