"""cryptotensors: safetensors with per-tensor authenticated encryption.

A drop-in for the safetensors 0.8 API. Plain files are byte-identical to
safetensors'; encrypted files stay valid safetensors headers and decrypt
transparently given a key (keys=, CRYPTOTENSORS_KEYS or the config file).
"""

import json as _json

from . import _core, _providers
from ._core import (
    IntegrityError,
    InternalError,
    KeyNotFoundError,
    PolicyDeniedError,
    SafetensorError,
    SignatureError,
)
from ._open import PySafeSlice, safe_open
from ._patch import patch, unpatch
from ._providers import register_key_provider
from ._serialize import TensorSpec, deserialize, serialize, serialize_file

__version__ = "0.1.0"


def generate_key(kind: str = "oct") -> dict:
    """A fresh private JWK: "oct" (AES key wrap), "X25519" (public-key
    recipients), "Ed25519" (EdDSA signing) or "P-256" (ES256 signing, an
    EC JWK; "ES256" and "EC" are aliases). Its kid is its RFC 7638
    thumbprint."""
    return _json.loads(_core.generate_key(kind))


def inspect(filename) -> dict:
    """Describes a file from its header alone, with no key: each tensor's
    dtype, shape and whether it is encrypted; the user metadata; the
    algorithm, segment size, recipients and the signer the file names (not
    verified: use safe_open with trusted_signers for that)."""
    import os

    return _core.inspect(os.fspath(filename))


def rewrap(
    filename,
    *,
    keys=None,
    add=None,
    remove=(),
    sign_with=None,
    drop_signature: bool = False,
    trusted_signers=None,
    policy=None,
    remove_policy: bool = False,
    output=None,
) -> None:
    """Rotates keys without re-encrypting: adds recipients (`add=`, JWKs),
    removes them (`remove=`, kids), and re-signs (`sign_with=`) or drops the
    signature (`drop_signature=True`; a signed file must do one or the other),
    and sets (`policy=`, Rego text) or removes (`remove_policy=True`) the
    access policy.
    Replacing a key-encryption key is `add=new, remove=[old kid]`.

    `keys=` (plus the usual key providers) must open the file now. Only the
    header changes; tensor bytes are copied unchanged, and the new file is
    renamed over `output` (default: `filename`), so a crash leaves the old
    file or the new one."""
    import os

    from . import _keys

    src = os.fspath(filename)
    kwargs = dict(
        keys=_keys.keyring_json(keys),
        trusted=_keys.trusted_json(trusted_signers),
        add=_json.dumps(_keys._as_list(add)) if add else None,
        remove=[remove] if isinstance(remove, str) else list(remove),
        sign_with=_json.dumps(sign_with) if isinstance(sign_with, dict) else sign_with,
        drop_signature=drop_signature,
        policy=policy,
        remove_policy=remove_policy,
    )
    dst = os.fspath(output) if output is not None else src
    try:
        _core.rewrap(src, dst, **kwargs)
    except KeyNotFoundError:
        provided = _providers.data_keys(_providers.recipients_of_file(src)) if _providers.providers() else []
        if not provided:
            raise
        _core.rewrap(src, dst, data_keys=provided, **kwargs)


def public_key(jwk) -> dict:
    """The public JWK of an X25519, Ed25519 or P-256 private JWK."""
    return _json.loads(_core.public_key(jwk if isinstance(jwk, str) else _json.dumps(jwk)))


__all__ = [
    "safe_open", "serialize", "serialize_file", "deserialize", "TensorSpec", "PySafeSlice",
    "SafetensorError", "KeyNotFoundError", "IntegrityError", "SignatureError", "PolicyDeniedError", "InternalError",
    "generate_key", "public_key", "inspect", "rewrap", "register_key_provider", "__version__", "patch", "unpatch",
]
