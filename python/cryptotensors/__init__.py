"""cryptotensors: safetensors with per-tensor authenticated encryption.

A drop-in for the safetensors 0.8 API. Plain files are byte-identical to
safetensors'; encrypted files stay valid safetensors headers and decrypt
transparently given a key (keys=, CRYPTOTENSORS_KEYS or the config file).
"""

import json as _json

from . import _core, _keys, _providers
from ._core import (
    EncryptionRequiredError,
    IntegrityError,
    InternalError,
    InvalidArgumentError,
    InvalidKeyError,
    KeyNotFoundError,
    LegacyFormatError,
    PolicyDeniedError,
    SafetensorError,
    SafetensorOSError,
    SignatureError,
    UnsupportedError,
)
from ._keys import KeyConfigError
from ._keys import _legacy_list as _legacy_key_list  # noqa: F401  (cli/migrate.py reads keys with it)
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


def inspect(filename) -> "_core.Inspection":
    """Describes a file from its header alone, with no key. Nothing is
    verified or decrypted: it is what the file says about itself (use
    safe_open with keys= or trusted_signers= to check it).

    The result is a read-only mapping (the keys `protection`, `damage`,
    `tensors`, `metadata`, `signer`; for a file with an envelope also
    `format_version`, `segment_size`, `policy`; for an encrypted one also
    `algorithm` and `recipients`) with the same values as attributes, and
    `legacy` (a cryptotensors 0.2.3 file). `protection` is "plain",
    "signed" or "encrypted", decided fail closed: a damaged or unknown
    envelope still counts as protected, a 0.2.3 file as encrypted.

    A damaged file does not raise: `damage` says why its header, envelope
    or data length was not understood (None for a file that was), the rest
    says what could still be learnt, and `check()` raises the error behind
    it. Raises only for a file that cannot be read, or that is not a
    safetensors file at all (shorter than its 8-byte length prefix, or
    declaring a header over the 100 MB cap). `to_dict()` is a plain,
    JSON-serializable dict."""
    import os

    return _core.inspect(os.fspath(filename))


def _safe_open_handle(file_obj, framework: str, device="cpu", **options) -> safe_open:
    """`safe_open` over a Python file object, as safetensors 0.8 exports it
    (same arguments; `options` are safe_open's keywords: keys=, backend=...).

    An object whose `name` is the path of the very file it has open (an
    `open(...)` file, fsspec's local files; checked by device and inode when
    it has a descriptor) is opened by that path, lazily, like
    `safe_open(file_obj.name, ...)`: that is all safetensors does. Any other
    readable object (io.BytesIO, fsspec's memory or remote files) is read
    whole, from its start, into memory and opened from there, with the same
    verification (safetensors raises AttributeError for those)."""
    import os

    name = getattr(file_obj, "name", None)
    if isinstance(name, (str, os.PathLike)) and _names_its_file(file_obj, name):
        return safe_open(name, framework, device, **options)
    read = getattr(file_obj, "read", None)
    if not callable(read):
        raise TypeError(f"argument 'file_obj': '{type(file_obj).__name__}' object is neither a named file nor readable")
    seekable = getattr(file_obj, "seekable", None)
    if callable(seekable) and seekable():
        file_obj.seek(0)
    data = read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"argument 'file_obj': read() returned {type(data).__name__}, not bytes (open it in binary mode)")
    return safe_open._over_bytes(bytes(data), framework, device, **options)


def _names_its_file(file_obj, name) -> bool:
    import os

    try:
        st = os.stat(name)
    except (OSError, ValueError):
        return False
    fileno = getattr(file_obj, "fileno", None)
    try:
        fd = fileno() if callable(fileno) else None
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        fd = None
    if not isinstance(fd, int):
        return os.path.isfile(name)  # no descriptor to compare: the name, as safetensors
    other = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


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
    policy_input=None,
    output=None,
) -> None:
    """Changes recipients, signature or policy without re-encrypting: adds
    recipients (`add=`: JWKs, or key wrappers as for `encrypt_for=`, such
    as `cryptotensors.pkcs11.Pkcs11Provider.recipient(label)` or
    `cryptotensors.vault.VaultProvider.recipient(name)`, which wrap the data
    key themselves and must name their `kid`), removes them (`remove=`, kids), and re-signs
    (`sign_with=`) or drops the signature (`drop_signature=True`; a signed
    file must do one or the other), and sets (`policy=`, Rego text) or
    removes (`remove_policy=True`) the access policy.
    Replacing a key-encryption key is `add=new, remove=[old kid]`.

    What it guarantees: from the new file on, only its recipients can unwrap
    the data key. What it does NOT do: revoke. The data key stays the same,
    so a removed recipient who ever unwrapped it, or anyone who kept the old
    header (a few KiB, e.g. from an old revision), can still decrypt this
    file. To revoke, use `rekey`, which draws a new data key.

    The file is verified as a load verifies it first: `keys=` (plus the
    usual key providers) must open it, its signature must verify (against
    `trusted_signers=` when given), and its access policy must allow the
    caller (`policy_input=`: claims, as for safe_open; the input's
    "framework" is "rewrap"). Only the header changes; tensor bytes are
    copied unchanged. Rewraps and rekeys of one file are serialized by an
    advisory lock on it. The result replaces `output` (default: `filename`)
    atomically: a crash leaves the old file or the new one."""
    _rotate(_core.rewrap, "rewrap", filename, output, keys, policy_input, dict(
        **_added(add),
        **_changes(remove, sign_with, drop_signature, trusted_signers, policy, remove_policy),
    ))


def rekey(
    filename,
    *,
    keys=None,
    recipients=None,
    add=None,
    remove=(),
    sign_with=None,
    drop_signature: bool = False,
    trusted_signers=None,
    policy=None,
    remove_policy: bool = False,
    policy_input=None,
    output=None,
    num_threads=None,
    progress=None,
) -> None:
    """Re-encrypts a file under a fresh data key and salt: every encrypted
    tensor is decrypted and verified under the old key and sealed under the
    new one, streaming (a few batches of segments in memory, never a whole
    tensor), in parallel.

    The recipients stay (less `remove=`, plus `add=`, JWKs or key wrappers
    as for `rewrap`, which wrap the new data key); the
    file holds only wrapped copies of the old key, so each recipient that
    stays needs its key: an opening key of `keys=`, or `recipients=` (JWKs:
    a public X25519 key is enough, an oct key is its secret; or key wrappers
    such as `cryptotensors.vault.VaultProvider.recipient(name)`, which wrap
    the new data key themselves). The signature,
    policy and verification rules are those of `rewrap` (the policy input's
    "framework" is "rekey").

    What it guarantees: the old data key opens nothing in the new file, so a
    removed recipient, or an old header spliced onto it, decrypts nothing.
    What it does NOT do: revoke copies of the old file, nor plaintext
    already loaded. The result replaces `output` (default: `filename`)
    atomically. `progress`, a callable, is called with the bytes of tensor
    data written so far, as they are (rising, ending at their total); an
    exception it raises (a KeyboardInterrupt) stops the rekey, leaving the
    target as it was, and is raised."""
    _rotate(_core.rekey, "rekey", filename, output, keys, policy_input, dict(
        **_rekey_keys(recipients, add),
        threads=_keys.threads(num_threads),
        progress=progress,
        **_changes(remove, sign_with, drop_signature, trusted_signers, policy, remove_policy),
    ))


def _added(add) -> dict:
    """rewrap()'s and rekey()'s add= as the core takes them (its plans, too):
    the key wrappers among them wrap the data key for the recipient of their kid."""
    ring, wrappers = _keys.split(add, "add")
    return dict(add=ring, add_wrappers=wrappers)


def _rekey_keys(recipients, add) -> dict:
    """rekey()'s recipients and add= as the core takes them (its plan, too).
    Key wrappers among the recipients wrap the fresh data key the core
    draws, for the recipient that stays of their kid."""
    ring, wrappers = _keys.split(recipients, "recipients")
    return dict(wrappers=wrappers, recipients=ring, **_added(add))


def _changes(remove, sign_with, drop_signature, trusted_signers, policy, remove_policy) -> dict:
    return dict(
        trusted=_keys.trusted(trusted_signers),
        remove=[remove] if isinstance(remove, str) else list(remove),
        sign_with=None if sign_with is None else _keys.signer(sign_with),
        drop_signature=drop_signature,
        policy=policy,
        remove_policy=remove_policy,
    )


def _rotate(core, operation: str, filename, output, keys, policy_input, kwargs: dict) -> None:
    """Runs a rewrap or rekey in the core, with the key providers (asked by
    the core when the call's keys do not open the file)."""
    import os

    from . import _policy

    src = os.fspath(filename)
    dst = os.fspath(output) if output is not None else src
    kwargs.update(keys=_keys.keyring(keys), policy_input=_policy.input_json(operation, "cpu", policy_input, True))
    core(src, dst, providers=_providers.providers, **kwargs)


def migrate(
    filename,
    output,
    *,
    legacy_keys,
    encrypt_for,
    trusted_signers=None,
    verify_signature: bool = True,
    sign_with=None,
    algorithm=None,
    segment_size=None,
    encrypt_all: bool = False,
    num_threads=None,
) -> dict:
    """Converts a file of cryptotensors 0.2.3 (the paper's reference
    implementation) into this format, atomically.

    `legacy_keys` are the old package's keys (its master key, selected by
    the file's kid; never fetched from the file's jku); `trusted_signers`
    the old signer's public key, which its header signature must verify
    under. With no trusted signer the call is refused, unless
    `verify_signature=False` says the old signature is not to be checked.
    Every tag of every encrypted tensor is verified before it is written.
    It streams: each tensor is decrypted when the writer first needs it and
    dropped once written, so memory holds a few tensors, not the model.
    The output is encrypted for `encrypt_for` (and signed with `sign_with`):
    the tensors the old file encrypted, or all with `encrypt_all=True`.

    Returns what the old file did not protect: {"version", "algorithm",
    "tensors", "plain_tensors" (stored in the clear and authenticated by
    nothing in the old format: carried as they were read),
    "signature_verified", "policy_dropped" (its __policy__ is not carried:
    set one with rewrap)}."""
    import os

    from ._serialize import save_options

    if trusted_signers is None and verify_signature:
        raise SafetensorError(
            "migrate: name the old signer's public key (trusted_signers=), "
            "or pass verify_signature=False to skip the old header signature")
    trusted = _keys.legacy(trusted_signers, "legacy trusted signers") if verify_signature else None
    # The names only matter for encrypted_tensors=, which migrate does not take.
    opts = save_options((), encrypt_for=encrypt_for, algorithm=algorithm, segment_size=segment_size,
                        sign_with=sign_with, num_threads=num_threads)
    report = _core.migrate(os.fspath(filename), os.fspath(output), _keys.legacy(legacy_keys), trusted,
                           encrypt_all=encrypt_all, **opts)
    return {
        "version": report["version"],
        "algorithm": report["algorithm"],
        "tensors": report["tensors"],
        "plain_tensors": report["plain_tensors"],
        "signature_verified": report["signature_verified"],
        "policy_dropped": report["has_policy"],
    }


def public_key(jwk) -> dict:
    """The public JWK of an X25519, Ed25519 or P-256 private JWK."""
    return _json.loads(_core.public_key(jwk if isinstance(jwk, str) else _json.dumps(jwk)))


__all__ = [
    "safe_open", "serialize", "serialize_file", "deserialize", "TensorSpec", "PySafeSlice",
    "SafetensorError", "KeyNotFoundError", "LegacyFormatError", "IntegrityError", "SignatureError", "PolicyDeniedError", "InternalError",
    "EncryptionRequiredError", "UnsupportedError", "InvalidKeyError", "InvalidArgumentError", "SafetensorOSError",
    "KeyConfigError", "generate_key", "public_key", "inspect", "rewrap", "rekey", "migrate", "register_key_provider", "__version__",
    "patch", "unpatch", "_safe_open_handle",
]
