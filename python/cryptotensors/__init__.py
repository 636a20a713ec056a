"""cryptotensors: safetensors with per-tensor authenticated encryption.

A drop-in for the safetensors 0.8 API. Plain files are byte-identical to
safetensors'; encrypted files stay valid safetensors headers and decrypt
transparently given a key (keys=, CRYPTOTENSORS_KEYS or the config file).
"""

import json as _json

from . import _core
from ._core import (
    IntegrityError,
    KeyNotFoundError,
    PolicyDeniedError,
    SafetensorError,
    SignatureError,
)
from ._open import PySafeSlice, safe_open
from ._serialize import TensorSpec, deserialize, serialize, serialize_file

__version__ = "0.1.0"


def generate_key(kind: str = "oct") -> dict:
    """A fresh private JWK: "oct" (AES key wrap), "X25519" (public-key
    recipients) or "Ed25519" (signing). Its kid is its RFC 7638 thumbprint."""
    return _json.loads(_core.generate_key(kind))


def inspect(filename) -> dict:
    """Describes a file from its header alone, with no key: each tensor's
    dtype, shape and whether it is encrypted; the user metadata; the
    algorithm, segment size, recipients and the signer the file names (not
    verified: use safe_open with trusted_signers for that)."""
    import os

    return _core.inspect(os.fspath(filename))


def public_key(jwk) -> dict:
    """The public JWK of an X25519 or Ed25519 private JWK."""
    return _json.loads(_core.public_key(jwk if isinstance(jwk, str) else _json.dumps(jwk)))


__all__ = [
    "safe_open", "serialize", "serialize_file", "deserialize", "TensorSpec", "PySafeSlice",
    "SafetensorError", "KeyNotFoundError", "IntegrityError", "SignatureError", "PolicyDeniedError",
    "generate_key", "public_key", "inspect", "__version__",
]
