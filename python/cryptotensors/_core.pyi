"""Types of the Rust extension (rust/python). Checked against the built
module by tests/test_stubs.py (`python -m mypy.stubtest cryptotensors._core`)."""

import os
from typing import Any, Callable, ClassVar, Final, Iterable, Iterator, Literal, Optional, Union, final

from typing_extensions import Buffer

__all__ = [
    "SafetensorError", "UnsupportedError", "InvalidKeyError", "InvalidArgumentError", "KeyNotFoundError", "LegacyFormatError",
    "IntegrityError",
    "EncryptionRequiredError", "SignatureError", "PolicyDeniedError", "InternalError", "SafetensorOSError",
    "Handle", "KeyRing", "LegacyKeyRing", "SliceIndex", "load_target", "check_device", "spec_dtype", "serialize", "transcode", "rewrap", "rewrap_plan", "rekey", "rekey_plan", "read_legacy", "migrate", "inspect", "protection", "generate_key", "public_key", "key_id",
    "_check_panic_boundary", "DTYPES",
    "Inspection",
]

_Path = Union[str, os.PathLike[str]]

DTYPES: Final[dict[str, tuple[int, Optional[str]]]]
"""The core's dtype table: header name -> (bits, the frameworks' type name, None for the F6 types)."""

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
class KeyRing:
    """JWKs parsed once (a JWK, a list of JWKs or a JWKS, as JSON text); the repr shows no secret."""
    def __new__(cls, jwks: str) -> KeyRing: ...
    @staticmethod
    def join(rings: list[KeyRing]) -> KeyRing: ...
    def kids(self) -> list[str]: ...
    def __len__(self) -> int: ...

@final
class LegacyKeyRing:
    """Keys of cryptotensors 0.2.3 parsed once (its JWK dialect, as JSON text); the repr shows no secret."""
    def __new__(cls, jwks: str) -> LegacyKeyRing: ...
    def __len__(self) -> int: ...

@final
class Handle:
    """A verified open file: every read authenticates into the caller's buffer."""

    @staticmethod
    def open(
        path: _Path,
        backend: str,
        keys: Optional[KeyRing] = None,
        trusted: Optional[KeyRing] = None,
        require_encryption: bool = False,
        threads: int = ...,
        providers: Optional[Callable[[], Iterable[Any]]] = None,
        policy_input: Optional[str] = None,
    ) -> Handle: ...
    @staticmethod
    def from_bytes(
        data: bytes,
        keys: Optional[KeyRing] = None,
        trusted: Optional[KeyRing] = None,
        require_encryption: bool = False,
        threads: int = ...,
        providers: Optional[Callable[[], Iterable[Any]]] = None,
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
    def select(self, name: str, key: Any, torch: bool = False) -> Optional[tuple[SliceIndex, list[int], int]]:
        """(index, shape, nbytes) of a tensor index; None (torch=True only) where the core does not slice it."""
    def read_slice_into(self, name: str, index: SliceIndex, out: Buffer) -> None: ...
    def describe(self) -> dict[str, Any]: ...

@final
class SliceIndex:
    """An index converted by Handle.select, for read_slice_into."""

def load_target(
    framework: str, device: Union[str, int, None] = None, backend: str = ...
) -> tuple[str, str, Literal["mmap", "pread"]]:
    """(canonical framework, torch-style device, backend), with safetensors' errors."""
def check_device(framework: str, device: Union[str, int, None] = None) -> None: ...
def spec_dtype(dtype: str) -> str:
    """The header dtype of a TensorSpec dtype name ("float32" -> "F32")."""

def serialize(
    tensors: list[tuple[str, str, list[int], Buffer]],
    metadata: Optional[dict[str, str]] = None,
    path: Optional[_Path] = None,
    *,
    recipients: Optional[KeyRing] = None,
    encrypted: Optional[set[str]] = None,
    algorithm: Optional[str] = None,
    segment_size: int = 0,
    sign_with: Optional[KeyRing] = None,
    policy: Optional[str] = None,
    threads: int = ...,
    wrappers: Optional[list[Any]] = None,
) -> Optional[bytes]: ...
def transcode(
    handle: Handle,
    path: _Path,
    *,
    recipients: Optional[KeyRing] = None,
    encrypted: Optional[set[str]] = None,
    algorithm: Optional[str] = None,
    segment_size: int = 0,
    sign_with: Optional[KeyRing] = None,
    policy: Optional[str] = None,
    threads: int = ...,
    wrappers: Optional[list[Any]] = None,
    progress: Optional[Callable[[int], object]] = None,
) -> None:
    """Writes every tensor of an open file, with its user metadata, to path under serialize's options, streaming;
    progress(done) hears the tensor bytes written so far, and an exception it raises stops the write."""
    ...
def rewrap(
    src: _Path,
    dst: _Path,
    *,
    keys: Optional[KeyRing] = None,
    trusted: Optional[KeyRing] = None,
    add: Optional[KeyRing] = None,
    remove: list[str] = ...,
    sign_with: Optional[KeyRing] = None,
    drop_signature: bool = False,
    providers: Optional[Callable[[], Iterable[Any]]] = None,
    policy: Optional[str] = None,
    remove_policy: bool = False,
    policy_input: Optional[str] = None,
    replace: Optional[str] = None,
    add_wrappers: Optional[list[Any]] = None,
) -> None: ...
def rewrap_plan(
    src: _Path,
    *,
    add: Optional[KeyRing] = None,
    remove: list[str] = ...,
    sign_with: Optional[KeyRing] = None,
    drop_signature: bool = False,
    policy: Optional[str] = None,
    remove_policy: bool = False,
    add_wrappers: Optional[list[Any]] = None,
) -> dict[str, Any]:
    """What rewrap with these options would change, from the header alone; raises what it would refuse."""
    ...
def rekey(
    src: _Path,
    dst: _Path,
    *,
    keys: Optional[KeyRing] = None,
    trusted: Optional[KeyRing] = None,
    recipients: Optional[KeyRing] = None,
    add: Optional[KeyRing] = None,
    remove: list[str] = ...,
    sign_with: Optional[KeyRing] = None,
    drop_signature: bool = False,
    providers: Optional[Callable[[], Iterable[Any]]] = None,
    policy: Optional[str] = None,
    remove_policy: bool = False,
    policy_input: Optional[str] = None,
    threads: int = ...,
    wrappers: Optional[list[Any]] = None,
    progress: Optional[Callable[[int], object]] = None,
    add_wrappers: Optional[list[Any]] = None,
) -> None: ...
def rekey_plan(
    src: _Path,
    *,
    keys: Optional[KeyRing] = None,
    recipients: Optional[KeyRing] = None,
    add: Optional[KeyRing] = None,
    remove: list[str] = ...,
    sign_with: Optional[KeyRing] = None,
    drop_signature: bool = False,
    policy: Optional[str] = None,
    remove_policy: bool = False,
    wrappers: Optional[list[Any]] = None,
    add_wrappers: Optional[list[Any]] = None,
) -> dict[str, Any]:
    """What rekey with these options would do, from the header alone, by the rules rekey applies; or its refusal."""
    ...
def read_legacy(path: _Path, keys: LegacyKeyRing, trusted: Optional[LegacyKeyRing] = None) -> dict[str, Any]:
    """Reads a cryptotensors 0.2.3 file with its keys and trusted verifying keys; every tag checked."""
    ...
def migrate(
    src: _Path,
    dst: _Path,
    keys: LegacyKeyRing,
    trusted: Optional[LegacyKeyRing] = None,
    *,
    encrypt_all: bool = False,
    recipients: Optional[KeyRing] = None,
    algorithm: Optional[str] = None,
    segment_size: int = 0,
    sign_with: Optional[KeyRing] = None,
    threads: int = ...,
    wrappers: Optional[list[Any]] = None,
) -> dict[str, Any]:
    """Writes a cryptotensors 0.2.3 file in this format, one tensor in memory at a time."""
    ...
@final
class Inspection:
    """What a file's header says, with no key and nothing verified: typed attributes, and a
    read-only mapping of the keys inspect() always had plus "protection" and "damage"."""
    @property
    def protection(self) -> Literal["plain", "signed", "encrypted"]: ...
    @property
    def damage(self) -> Optional[str]: ...
    @property
    def legacy(self) -> bool: ...
    @property
    def tensors(self) -> list[dict[str, Any]]: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    @property
    def signer(self) -> Optional[str]: ...
    @property
    def format_version(self) -> Optional[int]: ...
    @property
    def segment_size(self) -> Optional[int]: ...
    @property
    def policy(self) -> Optional[str]: ...
    @property
    def algorithm(self) -> Optional[str]: ...
    @property
    def recipients(self) -> list[dict[str, Any]]: ...
    def check(self) -> None:
        """Raises the error behind `damage`; None for an undamaged file."""
        ...
    def to_dict(self) -> dict[str, Any]: ...
    def keys(self) -> list[str]: ...
    def values(self) -> list[Any]: ...
    def items(self) -> list[tuple[str, Any]]: ...
    def get(self, key: object, default: Any = None) -> Any: ...
    def __getitem__(self, key: object, /) -> Any: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

def inspect(path: _Path) -> Inspection: ...
def protection(path: _Path) -> Optional[str]:
    """"encrypted", "signed" or None (plain), from the header alone; fails closed on a rejected or damaged envelope."""
    ...
def generate_key(kind: str) -> str: ...
def public_key(jwk: str) -> str: ...
def key_id(jwk: str) -> tuple[str, str]: ...
def _check_panic_boundary(threads: int = ...) -> None: ...
