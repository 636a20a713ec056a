"""serialize, serialize_file, deserialize and TensorSpec, with the save and
load options shared by every framework module."""

from __future__ import annotations

import ctypes
import os
import re
from typing import Any, Dict, List, Optional, Sequence

from . import _core, _keys, _policy, _providers
from ._core import SafetensorError


class TensorSpec:
    """One tensor for serialize(): its dtype (constructor-style name such as
    "float32"), shape, and the address and length of its contiguous bytes.

    As in safetensors 0.8, `data_ptr` is a raw address: the caller keeps
    `data_len` readable bytes there, unchanged, until serialization returns
    (a wrong address is undefined behaviour, a crash at best). The
    library's own savers never build a spec from an address: they pass the
    owning array, whose memory the writer reads through the buffer protocol."""

    __slots__ = ("_dtype", "_shape", "_data_ptr", "_data_len", "_data")

    def __init__(self, *, dtype: str, shape: Sequence[int], data_ptr: int, data_len: int):
        code = _core.spec_dtype(dtype)  # safetensors' errors, from the binding
        shape = [int(d) for d in shape]
        # Unsigned fields, as in safetensors (which raises OverflowError).
        if any(d < 0 for d in shape) or data_ptr < 0 or data_len < 0:
            raise OverflowError("can't convert negative int to unsigned")
        if code == "F4" and shape:
            # float4_e2m1fn_x2 packs two values: the header counts elements.
            shape[-1] *= 2
        self._dtype, self._shape, self._data_ptr, self._data_len = code, shape, int(data_ptr), int(data_len)
        self._data = None

    @classmethod
    def _of(cls, dtype: str, shape: Sequence[int], data, data_ptr: int) -> TensorSpec:
        """A spec over `data`, a C-contiguous numpy array of the tensor's
        bytes (at `data_ptr`, for the property), which the spec keeps and
        the writer reads as a buffer."""
        spec = cls(dtype=dtype, shape=shape, data_ptr=data_ptr, data_len=data.nbytes)
        spec._data = data
        return spec

    def _buffer(self):
        """The tensor's bytes as a buffer for the core, which takes no addresses."""
        if self._data is not None:
            return self._data
        if not self._data_len:
            return b""
        if not self._data_ptr:
            raise ValueError(f"TensorSpec: data_ptr is null but data_len is {self._data_len}")
        # A bare address (the public contract above): ctypes turns it into a
        # buffer here, on the caller's word, as safetensors takes it.
        return (ctypes.c_char * self._data_len).from_address(self._data_ptr)

    dtype = property(lambda self: self._dtype, doc="The dtype's format code, e.g. 'F32'.")
    shape = property(lambda self: list(self._shape), doc="The logical (header) shape.")
    data_ptr = property(lambda self: self._data_ptr, doc="Address of the bytes.")
    data_len = property(lambda self: self._data_len, doc="Length of the bytes.")

    def __repr__(self):
        return f"TensorSpec(dtype={self._dtype!r}, shape={self._shape}, data_ptr={self._data_ptr}, data_len={self._data_len})"


def save_options(
    names: Sequence[str],
    encrypt_for: Any = None,
    encrypted_tensors: Any = None,
    algorithm: Optional[str] = None,
    segment_size: Optional[int] = None,
    sign_with: Any = None,
    policy: Optional[str] = None,
    num_threads: Optional[int] = None,
) -> dict:
    """Keyword arguments for the core serializer from the public save options."""
    opts: Dict[str, Any] = {"threads": _keys.threads(num_threads)}
    if segment_size is not None:
        opts["segment_size"] = int(segment_size)
    if sign_with is not None:
        # The binding refuses a ring of anything but one private signing key.
        opts["sign_with"] = _keys.signer(sign_with)
    if policy is not None:
        opts["policy"] = _policy.policy_text(policy)
    if encrypt_for is None:
        if encrypted_tensors is not None or algorithm is not None or policy is not None:
            raise SafetensorError("encrypted_tensors, algorithm and policy need encrypt_for= (the recipients)")
        return opts
    # Key wrappers (objects with wrap(data_key) -> recipient stanza, such as
    # cryptotensors.pkcs11.Pkcs11Recipient) wrap with a key that never leaves
    # them; everything else is JWKs. The core draws the data key and hands
    # it to each wrapper (as a Python bytes object, which cannot be wiped).
    recipients, wrappers = _keys.split(encrypt_for, "encrypt_for")
    if wrappers:
        opts["wrappers"] = wrappers
        recipients = recipients or _keys.EMPTY
    elif recipients is None:
        raise SafetensorError("encrypt_for lists no recipient key")
    opts["recipients"] = recipients
    opts["algorithm"] = algorithm or "AES-256-GCM"
    if encrypted_tensors is not None:
        if isinstance(encrypted_tensors, (str, re.Pattern)):
            pattern = re.compile(encrypted_tensors)
            selected = {n for n in names if pattern.search(n)}
        else:
            selected = set(encrypted_tensors)
        opts["encrypted"] = selected
    return opts


def _not_instance(value, expected: str) -> TypeError:
    what = "'None'" if value is None else f"'{type(value).__name__}' object"
    return TypeError(f"argument 'tensor_dict': {what} is not an instance of '{expected}'")


def _records(tensor_dict) -> List[tuple]:
    # safetensors' TypeErrors, messages included.
    if not isinstance(tensor_dict, dict):
        raise _not_instance(tensor_dict, "dict")
    records = []
    for name, spec in tensor_dict.items():
        if not isinstance(name, str):
            raise _not_instance(name, "str")
        if not isinstance(spec, TensorSpec):
            raise _not_instance(spec, "TensorSpec")
        records.append((name, spec.dtype, spec.shape, spec._buffer()))
    return records


def serialize(tensor_dict: Dict[str, TensorSpec], metadata: Optional[Dict[str, str]] = None, **options) -> bytes:
    """Serializes tensors (and optional string metadata) to bytes.

    Options: encrypt_for, encrypted_tensors, algorithm, segment_size, sign_with, num_threads."""
    records = _records(tensor_dict)
    return _core.serialize(records, metadata, None, **save_options([r[0] for r in records], **options))


def serialize_file(
    tensor_dict: Dict[str, TensorSpec], filename, metadata: Optional[Dict[str, str]] = None, **options
) -> None:
    """Serializes tensors to a file, atomically (temporary file, then rename)."""
    records = _records(tensor_dict)
    opts = save_options([r[0] for r in records], **options)
    try:
        _core.serialize(records, metadata, os.fspath(filename), **opts)
    except SafetensorError:  # SafetensorOSError (disk full, ...): already both, and keeps its errno
        raise
    except OSError as e:  # e.g. a missing directory: a SafetensorError, as in safetensors
        raise SafetensorError(f"Error while serializing: {e}") from e


def open_bytes(
    data: bytes,
    keys: Any = None,
    trusted_signers: Any = None,
    require_encryption: bool = False,
    num_threads: Optional[int] = None,
    policy_input: Any = None,
    framework: str = "np",
    device: str = "cpu",
    every_tensor: bool = True,
):
    """A core handle over serialized bytes, with the loader's keys, trust and policy input."""
    if not isinstance(data, bytes):
        # As safetensors: bytes only (not bytearray or memoryview).
        what = "'None'" if data is None else f"'{type(data).__name__}' object"
        raise TypeError(f"argument 'bytes': {what} is not an instance of 'bytes'")
    ring, trusted = _keys.keyring(keys), _keys.trusted(trusted_signers)
    policy = _policy.input_json(framework, device, policy_input, every_tensor=every_tensor)
    return _core.Handle.from_bytes(
        data, ring, trusted, bool(require_encryption), _keys.threads(num_threads),
        providers=_providers.providers, policy_input=policy,
    )


def deserialize(bytes, **load_options) -> list:  # the parameter is named as in safetensors
    """Returns [(name, {"shape", "dtype", "data"})] in file order, "data" a
    bytearray. Encrypted tensors are decrypted and authenticated; nothing
    unauthenticated is returned."""
    h = open_bytes(bytes, **load_options)
    out = []
    for name in h.offset_keys():
        dtype, shape, nbytes, _, _ = h.info(name)
        buf = bytearray(nbytes)
        h.read_into(name, buf)
        out.append((name, {"shape": list(shape), "dtype": dtype, "data": buf}))
    return out
