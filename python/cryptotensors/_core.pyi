"""Types of the Rust extension (rust/python). Checked against the built
module by tests/test_stubs.py (`python -m mypy.stubtest cryptotensors._core`)."""

import os
from typing import Any, Final, Optional, Union, final

from typing_extensions import Buffer

__all__ = [
    "SafetensorError", "UnsupportedError", "InvalidKeyError", "InvalidArgumentError", "KeyNotFoundError", "LegacyFormatError",
    "IntegrityError",
    "EncryptionRequiredError", "SignatureError", "PolicyDeniedError", "InternalError", "SafetensorOSError",
    "Handle", "serialize", "rewrap", "rekey", "read_legacy", "migrate", "inspect", "generate_key", "public_key", "key_id",
    "_check_panic_boundary", "DTYPES",
]

_Path = Union[str, os.PathLike[str]]

DTYPES: Final[list[str]]

class SafetensorError(Exception): ...
class UnsupportedError(SafetensorError): ...
class InvalidKeyError(SafetensorError): ...
class InvalidArgumentError(SafetensorError): ...
class KeyNotFoundError(SafetensorError): ...
class LegacyFormatError(SafetensorError): ...
class IntegrityError(SafetensorError): ...
class EncryptionRequiredError(IntegrityError): ...
class SignatureError(SafetensorError): ...
class PolicyDeniedError(SafetensorError): ...
class InternalError(SafetensorError): ...
class SafetensorOSError(SafetensorError, OSError): ...

@final
class Handle:
    """A verified open file: every read authenticates into the caller's buffer."""

    @staticmethod
    def open(
        path: _Path,
        backend: str,
        keys: Optional[str] = None,
        trusted: Optional[str] = None,
        require_encryption: bool = False,
        threads: int = ...,
        data_keys: Optional[list[bytes]] = None,
        policy_input: Optional[str] = None,
    ) -> Handle: ...
    @staticmethod
    def from_bytes(
        data: bytes,
        keys: Optional[str] = None,
        trusted: Optional[str] = None,
        require_encryption: bool = False,
        threads: int = ...,
        data_keys: Optional[list[bytes]] = None,
        policy_input: Optional[str] = None,
    ) -> Handle: ...
    def share(self) -> Handle: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def offset_keys(self) -> list[str]: ...
    def metadata(self) -> Optional[dict[str, str]]: ...
    def info(self, name: str) -> tuple[str, list[int], int, bool, Optional[int]]:
        """(dtype, shape, nbytes, encrypted, raw_offset)."""
    def read_into(self, name: str, out: Buffer) -> None: ...
    def read_range_into(self, name: str, offset: int, out: Buffer) -> None: ...
    def slice_shape(self, name: str, index: list[Any]) -> tuple[list[int], int]: ...
    def read_slice_into(self, name: str, index: list[Any], out: Buffer) -> None: ...
    def describe(self) -> dict[str, Any]: ...

def serialize(
    tensors: list[tuple[str, str, list[int], Buffer]],
    metadata: Optional[dict[str, str]] = None,
    path: Optional[_Path] = None,
    *,
    recipients: Optional[str] = None,
    encrypted: Optional[set[str]] = None,
    algorithm: Optional[str] = None,
    segment_size: int = 0,
    sign_with: Optional[str] = None,
    policy: Optional[str] = None,
    threads: int = ...,
    external: Optional[tuple[bytes, str]] = None,
) -> Optional[bytes]: ...
def rewrap(
    src: _Path,
    dst: _Path,
    *,
    keys: Optional[str] = None,
    trusted: Optional[str] = None,
    add: Optional[str] = None,
    remove: list[str] = ...,
    sign_with: Optional[str] = None,
    drop_signature: bool = False,
    data_keys: Optional[list[bytes]] = None,
    policy: Optional[str] = None,
    remove_policy: bool = False,
    policy_input: Optional[str] = None,
    replace: Optional[str] = None,
) -> None: ...
def rekey(
    src: _Path,
    dst: _Path,
    *,
    keys: Optional[str] = None,
    trusted: Optional[str] = None,
    recipients: Optional[str] = None,
    add: Optional[str] = None,
    remove: list[str] = ...,
    sign_with: Optional[str] = None,
    drop_signature: bool = False,
    data_keys: Optional[list[bytes]] = None,
    policy: Optional[str] = None,
    remove_policy: bool = False,
    policy_input: Optional[str] = None,
    threads: int = ...,
    external: Optional[tuple[bytes, str]] = None,
) -> None: ...
def read_legacy(path: _Path, keys: str, trusted: Optional[str] = None) -> dict[str, Any]:
    """Reads a cryptotensors 0.2.3 file: keys and trusted verifying keys as JSON text; every tag checked."""
    ...
def migrate(
    src: _Path,
    dst: _Path,
    keys: str,
    trusted: Optional[str] = None,
    *,
    encrypt_all: bool = False,
    recipients: Optional[str] = None,
    algorithm: Optional[str] = None,
    segment_size: int = 0,
    sign_with: Optional[str] = None,
    threads: int = ...,
    external: Optional[tuple[bytes, str]] = None,
) -> dict[str, Any]:
    """Writes a cryptotensors 0.2.3 file in this format, one tensor in memory at a time."""
    ...
def inspect(path: _Path) -> dict[str, Any]: ...
def generate_key(kind: str) -> str: ...
def public_key(jwk: str) -> str: ...
def key_id(jwk: str) -> tuple[str, str]: ...
def _check_panic_boundary(threads: int = ...) -> None: ...
