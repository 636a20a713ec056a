"""Where keys come from: the call, then the environment, then the config file.

Keys are JWKs (RFC 7517). A file names the recipients that can open it; only
keys that the loader supplies are ever tried, so a file can never choose its
own key. Trusted signers are configured the same way and only by the loader.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

from ._core import KeyRing, LegacyKeyRing, SafetensorError

KEYS_ENV = "CRYPTOTENSORS_KEYS"
TRUSTED_ENV = "CRYPTOTENSORS_TRUSTED_SIGNERS"
CONFIG_ENV = "CRYPTOTENSORS_CONFIG_DIR"
KEYS_FILE = "keys.jwks"


class KeyConfigError(SafetensorError):
    """A key source (a `keys=`/`trusted_signers=` argument given as text,
    CRYPTOTENSORS_KEYS, CRYPTOTENSORS_TRUSTED_SIGNERS, a key file they or the
    config directory name) is not a JWK or a JWK set. It names the source, never its text:
    no attribute, argument, cause or context holds the key material."""


def _jwks_or_none(text: Any) -> Optional[list]:
    """The JWKs in key text, or None when it is not a JWK or a JWK set. The
    caller raises KeyConfigError outside any handler, after dropping the
    text: the parser's exception holds it (JSONDecodeError.doc,
    UnicodeDecodeError.object) and would become the error's __context__,
    and a local holding it would stay in the error's traceback frames."""
    try:
        return _as_list(text)
    except (ValueError, TypeError):
        return None


def _unusable(source: str) -> KeyConfigError:
    return KeyConfigError(f"{source}: not a JWK or a JWK set (JSON)")


def _config_dir() -> str:
    # os.path rather than pathlib: this runs at every open.
    configured = os.environ.get(CONFIG_ENV)
    if configured:
        return configured
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "cryptotensors")


def _as_list(value: Any) -> list:
    """Normalizes a JWK, a list of JWKs, a JWKS dict or JSON text to a list of JWK dicts."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    if isinstance(value, dict):
        if "keys" in value and isinstance(value["keys"], list):
            return list(value["keys"])
        return [value]
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out.extend(_as_list(v))
        return out
    raise TypeError("keys must be a JWK dict, a list of JWKs, a JWKS dict or JSON text")


# Parsed key files, keyed by path and (mtime, size): loaders that open a
# file once per tensor would otherwise re-read and re-parse them every time.
_FILES: dict = {}


def _read_jwks_file(path) -> list:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    stamp = (str(path), st.st_mtime_ns, st.st_size)
    cached = _FILES.get(stamp[0])
    if cached is not None and cached[0] == stamp:
        return cached[1]
    with open(path, "rb") as f:
        keys = _jwks_or_none(f.read())
    if keys is None:
        raise _unusable(str(path))
    if len(_FILES) > 64:
        _FILES.clear()
    _FILES[stamp[0]] = (stamp, keys)
    return keys


def _from_env(name: str) -> list:
    """Reads JWKS JSON text, or the path of a JWKS file, from an environment variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return []
    if raw[0] in "[{":
        keys, raw = _jwks_or_none(raw), None
        if keys is None:
            raise _unusable(name)
        return keys
    if not os.path.exists(raw):
        raise FileNotFoundError(f"{name} names a key file that does not exist: {raw}")
    return _read_jwks_file(raw)


def _from_call(value: Any, what: str) -> list:
    """Keys passed by the caller. Text that is not JSON, at the top or inside
    a list, raises KeyConfigError, not the parser's exception, which holds
    the text (JSONDecodeError.doc); a value of a wrong type, TypeError."""
    if isinstance(value, (str, bytes)):
        keys, value = _jwks_or_none(value), None
    else:
        try:
            keys = _as_list(value)
        except ValueError:
            keys = None  # raised below, outside the handler: no __context__
        value = None
    if keys is None:
        raise _unusable(f"the {what} argument")
    return keys


# Key rings (the core's parsed JWKs), so that an open passes parsed keys, not
# JSON text to parse again. Keyed by a digest of the JWKs' JSON (never the
# text: no second copy of secrets as dict keys), by path and (mtime, size)
# for key files, and by the rings joined for one load.
_RINGS: dict = {}
_JOINED: dict = {}


def _cached(key, make) -> Optional[KeyRing]:
    """`make()` (a ring, or None for no keys), made once per key."""
    found = _RINGS.get(key)
    if found is None:
        if len(_RINGS) >= 32:
            _RINGS.clear()
        found = _RINGS[key] = (make(),)
    return found[0]


def _digest(text) -> bytes:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).digest()


def _ring_of(jwks: list) -> Optional[KeyRing]:
    """The ring of a list of JWK dicts, parsed once per distinct list."""
    if not jwks:
        return None
    text = json.dumps(jwks)
    return _cached(("jwks", _digest(text)), lambda: KeyRing(text))


def _ring_of_call(value: Any, what: str) -> Optional[KeyRing]:
    if isinstance(value, KeyRing):
        return value if len(value) else None
    return _ring_of(_from_call(value, what))


def _ring_of_file(path) -> Optional[KeyRing]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _cached(("file", str(path), st.st_mtime_ns, st.st_size), lambda: _ring_of(_read_jwks_file(path)))


def _ring_of_env(name: str) -> Optional[KeyRing]:
    """The ring of an environment variable's JWKS text, or of the file it names."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if raw[0] in "[{":
        # No local keeps the text: a failed parse's traceback shows locals.
        digest, raw = _digest(raw), None
        return _cached(("env", digest), lambda: _ring_of(_from_env(name)))
    if not os.path.exists(raw):
        _from_env(name)  # raises the missing-file error
    return _ring_of_file(raw)


def _joined(*rings: Optional[KeyRing]) -> Optional[KeyRing]:
    parts = tuple(r for r in rings if r is not None)
    if len(parts) <= 1:
        return parts[0] if parts else None
    # The tuple holds the rings themselves, so their identities stay theirs.
    joined = _JOINED.get(parts)
    if joined is None:
        if len(_JOINED) >= 32:
            _JOINED.clear()
        joined = _JOINED[parts] = KeyRing.join(list(parts))
    return joined


def keyring(keys: Any = None) -> Optional[KeyRing]:
    """The key ring of one load, parsed: the call, CRYPTOTENSORS_KEYS, then the config file."""
    return _joined(
        _ring_of_call(keys, "keys"),
        _ring_of_env(KEYS_ENV),
        _ring_of_file(os.path.join(_config_dir(), KEYS_FILE)),
    )


def trusted(trusted_signers: Any = None) -> Optional[KeyRing]:
    """Trusted signer public keys of one load, parsed: the call, then the environment."""
    return _joined(_ring_of_call(trusted_signers, "trusted_signers"), _ring_of_env(TRUSTED_ENV))


def given(value: Any, what: str) -> Optional[KeyRing]:
    """Keys a call names for a save, rewrap or rekey (its recipients, the
    recipients to add): a JWK dict, a list of JWKs, a JWKS dict, JSON text or
    a KeyRing, parsed once per distinct keys; None when there are none.
    Only the call's keys: the environment and the config file hold opening
    keys, not recipients. A list may mix rings with the other forms."""
    if isinstance(value, (list, tuple)) and any(isinstance(v, KeyRing) for v in value):
        return _joined(*(_ring_of_call(v, what) for v in value))
    return _ring_of_call(value, what)


def split(keys, what: str) -> tuple:
    """(ring, wrappers) of a call's keys: key wrappers (objects with a
    callable wrap(data_key) -> stanza and a kid, as for encrypt_for=: an
    HSM, a Vault key) apart, the other keys as a ring; each None when there
    are none. The one split of saves (encrypt_for=), rewrap(), rekey() and the CLI's plans."""
    items = [] if keys is None else keys if isinstance(keys, (list, tuple)) else [keys]
    wrappers = [k for k in items if callable(getattr(k, "wrap", None))]
    if not wrappers:  # any form of keys given takes (JSON text, a JWKS, a ring)
        return (given(keys, what) if keys else None), None
    jwks = [k for k in items if not callable(getattr(k, "wrap", None))]
    return (given(jwks, what) if jwks else None), wrappers


# An empty ring: the recipients of a save whose every recipient is a key
# wrapper, and the sign_with of a call that names no key (which the binding
# refuses rather than leave the file unsigned).
EMPTY = KeyRing.join([])


def signer(sign_with: Any) -> KeyRing:
    """`sign_with=` as a ring (a JWK dict, JSON text, a one-key list or a
    KeyRing); the binding refuses any but one private Ed25519 or P-256 key."""
    found = _ring_of_call(sign_with, "sign_with")
    return EMPTY if found is None else found


def _legacy_list(keys: Any, what: str = "legacy keys") -> list:
    """The old package's keys, in any of the forms its users keep them (a
    JWK, a list of JWKs, {"keys": [...]}, as objects or JSON text), as one
    list. Its own dialect (standard base64, "okp"): not the JWKs of _as_list."""
    if isinstance(keys, (str, bytes)):
        try:
            keys, bad = json.loads(keys), False
        except ValueError:
            # Raised outside the handler: the parser's error holds the text
            # (JSONDecodeError.doc) and would be the __context__, even `from None`.
            keys, bad = None, True
        if bad:
            raise KeyConfigError(f"{what} are not JSON")
    if isinstance(keys, dict):
        keys = keys["keys"] if "keys" in keys else [keys]
    if not isinstance(keys, (list, tuple)):
        raise KeyConfigError(f"{what}: expected a JWK, a list of JWKs or {{\"keys\": [...]}}")
    return list(keys)


def legacy(keys: Any, what: str = "legacy keys") -> LegacyKeyRing:
    """The old package's keys, parsed once per distinct keys, for migrate."""
    text = json.dumps(_legacy_list(keys, what))
    return _cached(("legacy", _digest(text)), lambda: LegacyKeyRing(text))


def threads(num_threads: Optional[int]) -> int:
    """Decryption threads: the keyword, else CRYPTOTENSORS_NUM_THREADS, else all cores (0)."""
    if num_threads is None:
        num_threads = int(os.environ.get("CRYPTOTENSORS_NUM_THREADS", "0") or 0)
    if num_threads < 0:
        raise ValueError("num_threads must be >= 0")
    return int(num_threads)
