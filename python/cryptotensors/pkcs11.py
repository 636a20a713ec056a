"""A key provider for PKCS#11 tokens (HSMs, smart cards, SoftHSM).

The key-encryption key lives on the token as a sensitive, non-extractable AES
key; the provider hands the token a recipient stanza's wrapped data key and
gets the 32-byte data key back (CKM_AES_GCM decrypt on the token). The
key-encryption key itself never leaves the token. See README "PKCS#11 (HSM)".

Configuration, read from the environment so that spawned worker processes
get it through the entry point ``cryptotensors.key_providers`` / ``pkcs11``:

* ``CRYPTOTENSORS_PKCS11_MODULE``: path of the PKCS#11 module (``.so``); the
  provider is off when it is unset;
* ``CRYPTOTENSORS_PKCS11_TOKEN``: token label (default: the only token);
* ``CRYPTOTENSORS_PKCS11_SLOT``: slot id, instead of the token label;
* ``CRYPTOTENSORS_PKCS11_PIN`` or ``CRYPTOTENSORS_PKCS11_PIN_FILE``: user PIN
  (no PIN: a session without login, for tokens whose keys are public);
* ``CRYPTOTENSORS_PKCS11_KEY_LABEL``: use this one key for every ``A256GCMKW``
  stanza instead of looking keys up by the stanza's ``kid``.

Without a key label, a stanza ``{"kid": kid, "alg": "A256GCMKW", ...}`` is
opened with the AES secret keys whose CKA_LABEL is ``kid`` or whose CKA_ID is
``kid`` (UTF-8). Whatever the token returns is checked by the core against the
file's key commitment and MAC, as for every provider.

Requires the ``python-pkcs11`` package (``pip install cryptotensors[pkcs11]``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
from typing import Iterator, List, Optional

from ._core import SafetensorError

ALG = "A256GCMKW"

_ENV_MODULE = "CRYPTOTENSORS_PKCS11_MODULE"
_ENV_TOKEN = "CRYPTOTENSORS_PKCS11_TOKEN"
_ENV_SLOT = "CRYPTOTENSORS_PKCS11_SLOT"
_ENV_PIN = "CRYPTOTENSORS_PKCS11_PIN"
_ENV_PIN_FILE = "CRYPTOTENSORS_PKCS11_PIN_FILE"
_ENV_KEY_LABEL = "CRYPTOTENSORS_PKCS11_KEY_LABEL"

# One PKCS#11 module is initialized once per process (python-pkcs11 caches the
# library object); after a fork the child has to initialize it again.
_lib_lock = threading.Lock()
_lib_pid = {}


def _import_pkcs11():
    try:
        import pkcs11
    except ImportError as e:
        raise ImportError(
            "the PKCS#11 key provider needs the python-pkcs11 package: pip install 'cryptotensors[pkcs11]'"
        ) from e
    return pkcs11


def _load_module(path: str):
    pkcs11 = _import_pkcs11()
    with _lib_lock:
        try:
            lib = pkcs11.lib(path)
        except pkcs11.PKCS11Error as e:
            raise SafetensorError(f"cannot load the PKCS#11 module {path!r}: {type(e).__name__}: {e}") from None
        pid = os.getpid()
        if _lib_pid.setdefault(path, pid) != pid:
            # A forked child inherits an initialized module it may not use.
            lib.reinitialize()
            _lib_pid[path] = pid
        return lib


class _LoginRefused(SafetensorError):
    pass


def _find_token(lib, token_label: Optional[str], slot: Optional[int]):
    pkcs11 = _import_pkcs11()
    try:
        if slot is not None:
            for s in lib.get_slots(token_present=True):
                if s.slot_id == slot:
                    token = s.get_token()
                    if token_label is not None and token.label != token_label:
                        raise SafetensorError(f"the token in PKCS#11 slot {slot} is not labelled {token_label!r}")
                    return token
            raise SafetensorError(f"no token in PKCS#11 slot {slot}")
        return lib.get_token(token_label=token_label) if token_label is not None else lib.get_token()
    except pkcs11.NoSuchToken:
        raise SafetensorError(f"no PKCS#11 token labelled {token_label!r}") from None
    except pkcs11.MultipleTokensReturned:
        raise SafetensorError("several PKCS#11 tokens are present; name one (token label or slot)") from None
    except pkcs11.PKCS11Error as e:
        raise SafetensorError(f"PKCS#11 token lookup failed: {type(e).__name__}") from None


def _open(token, pin: Optional[str], rw: bool):
    """Opens a session, logged in with ``pin`` when given. Returns
    ``(session, logged_in_here)``. PKCS#11 login state belongs to the whole
    process: when another session already logged in, this one joins it
    without a login of its own (and so does not log the others out on close)."""
    pkcs11 = _import_pkcs11()
    try:
        if pin is None:
            return token.open(rw=rw), False
        try:
            return token.open(rw=rw, user_pin=pin), True
        except pkcs11.UserAlreadyLoggedIn:
            return token.open(rw=rw), False
    except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange, pkcs11.PinExpired, pkcs11.PinLocked) as e:
        # Never the PIN itself in a message.
        raise _LoginRefused(f"PKCS#11 login to token {token.label!r} failed: {type(e).__name__}") from None
    except pkcs11.PKCS11Error as e:
        raise SafetensorError(f"cannot open a session on PKCS#11 token {token.label!r}: {type(e).__name__}") from None


@contextlib.contextmanager
def open_session(
    module: str, token_label: Optional[str] = None, pin: Optional[str] = None, slot: Optional[int] = None, rw=False
) -> Iterator[object]:
    """A python-pkcs11 session on a token, for provisioning and inspection;
    closed (and logged out, if it logged in) on exit."""
    token = _find_token(_load_module(module), token_label, slot)
    session, _ = _open(token, pin, rw)
    try:
        yield session
    finally:
        with contextlib.suppress(Exception):
            session.close()


def _b64d(s) -> bytes:
    if not isinstance(s, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _kid(jwk: dict) -> str:
    """The JWK's kid, or else its RFC 7638 thumbprint (FORMAT.md §6)."""
    if jwk.get("kid"):
        return jwk["kid"]
    canonical = json.dumps({"k": jwk["k"], "kty": "oct"}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _refuse_taken(session, label: str) -> None:
    """Labels are kids: two keys under one label would make files ambiguous."""
    from pkcs11 import Attribute, ObjectClass

    if list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})):
        raise SafetensorError(f"the token already holds a secret key labelled {label!r}")


def import_oct_key(
    jwk: dict,
    module: str,
    token_label: Optional[str] = None,
    pin: Optional[str] = None,
    slot: Optional[int] = None,
    label: Optional[str] = None,
) -> str:
    """Stores an ``oct`` JWK on a token as a sensitive, non-extractable AES-256
    key (CKA_LABEL and CKA_ID = its kid, or ``label``) that may only decrypt.
    Returns the label.

    This is for provisioning a key that exists outside the token (the
    publisher's key, handed to the customer once): after the import the token
    never releases it, but copies of the JWK elsewhere still have to be
    destroyed or locked away. The token marks such a key
    CKA_ALWAYS_SENSITIVE/CKA_NEVER_EXTRACTABLE false, as it was once outside.
    """
    pkcs11 = _import_pkcs11()
    from pkcs11 import Attribute, KeyType, ObjectClass

    if jwk.get("kty") != "oct" or jwk.get("alg", ALG) != ALG:
        raise SafetensorError("import_oct_key takes an oct JWK (alg A256GCMKW)")
    try:
        value = _b64d(jwk["k"])
    except (KeyError, ValueError):
        raise SafetensorError("the JWK's k is not base64url") from None
    if len(value) != 32:
        raise SafetensorError("an A256GCMKW key has 32 bytes")
    label = label or _kid(jwk)
    with open_session(module, token_label, pin, slot, rw=True) as session:
        try:
            _refuse_taken(session, label)
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.MODIFIABLE: False,
                    Attribute.DECRYPT: True,
                    Attribute.ENCRYPT: False,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.SIGN: False,
                    Attribute.VERIFY: False,
                    Attribute.DERIVE: False,
                    Attribute.LABEL: label,
                    Attribute.ID: label.encode(),
                    Attribute.VALUE: value,
                }
            )
        except pkcs11.PKCS11Error as e:
            raise SafetensorError(f"the token refused the key: {type(e).__name__}") from None
    return label


def generate_key(
    label: str,
    module: str,
    token_label: Optional[str] = None,
    pin: Optional[str] = None,
    slot: Optional[int] = None,
) -> str:
    """Generates an AES-256 key-encryption key on the token itself (CKM_AES_KEY_GEN),
    sensitive and non-extractable from birth, labelled ``label`` (its kid in
    files; CKA_ID too). It may encrypt (wrap a file's data key, see
    ``Pkcs11Provider.recipient``) and decrypt (unwrap it); no copy of it ever
    exists outside the token. Returns the label."""
    pkcs11 = _import_pkcs11()
    from pkcs11 import Attribute, KeyType, MechanismFlag

    if not isinstance(label, str) or not label:
        raise SafetensorError("a token key needs a non-empty label (its kid)")
    with open_session(module, token_label, pin, slot, rw=True) as session:
        try:
            _refuse_taken(session, label)
            session.generate_key(
                KeyType.AES,
                256,
                id=label.encode(),
                label=label,
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.MODIFIABLE: False,
                },
            )
        except pkcs11.PKCS11Error as e:
            raise SafetensorError(f"the token could not generate the key: {type(e).__name__}") from None
    return label


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Pkcs11Recipient:
    """A recipient for ``encrypt_for=`` whose key stays on a token: the save
    hands it the file's fresh data key and it returns an ``A256GCMKW`` stanza
    made by the token (CKM_AES_GCM encrypt, random 96-bit IV, no AAD; FORMAT.md
    §6). Made by ``Pkcs11Provider.recipient``."""

    def __init__(self, provider: Pkcs11Provider, kid: str):
        self._provider = provider
        self.kid = kid

    def __repr__(self) -> str:
        return f"Pkcs11Recipient(kid={self.kid!r}, token_label={self._provider.token_label!r})"

    def __getstate__(self):
        raise TypeError("a Pkcs11Recipient holds a token session; make one per process")

    def wrap(self, data_key: bytes) -> dict:
        return self._provider._wrap(self.kid, bytes(data_key))


class Pkcs11Provider:
    """Unwraps ``A256GCMKW`` recipient stanzas with AES keys held on a PKCS#11
    token (see the module docstring). One session, opened at the first
    unwrap and shared by all threads under a lock."""

    def __init__(
        self,
        module: str,
        token_label: Optional[str] = None,
        pin: Optional[str] = None,
        key_label: Optional[str] = None,
        slot: Optional[int] = None,
    ):
        _import_pkcs11()  # fail now, with the install hint, not at the first load
        self.module = os.fspath(module)
        self.token_label = token_label
        self.key_label = key_label
        self.slot = slot
        self.__pin = pin
        self._lock = threading.Lock()
        self._session = None
        self._session_pid = None
        self._logged_in_here = False
        self._fatal: Optional[str] = None

    def __repr__(self) -> str:
        return (
            f"Pkcs11Provider(module={self.module!r}, token_label={self.token_label!r}, "
            f"key_label={self.key_label!r}, slot={self.slot!r}, pin={'<set>' if self.__pin is not None else None})"
        )

    __str__ = __repr__

    def __getstate__(self):
        raise TypeError("a Pkcs11Provider holds a PIN and a session; build one per process (from_env)")

    # -- session ------------------------------------------------------------

    def _ensure_session(self):
        if self._fatal is not None:
            # A refused PIN is not tried again: tokens lock after a few tries.
            raise SafetensorError(self._fatal)
        if self._session is not None and self._session_pid == os.getpid():
            return self._session
        self._session = None  # a forked child's copy is not usable
        token = _find_token(_load_module(self.module), self.token_label, self.slot)
        try:
            self._session, self._logged_in_here = _open(token, self.__pin, rw=False)
        except _LoginRefused as e:
            self._fatal = str(e)
            raise
        self._session_pid = os.getpid()
        return self._session

    def _drop_session(self):
        session, self._session = self._session, None
        if session is not None and self._session_pid == os.getpid():
            with contextlib.suppress(Exception):
                session.close()

    def close(self) -> None:
        """Closes the session (a later unwrap opens a new one)."""
        with self._lock:
            self._drop_session()

    # -- unwrapping ---------------------------------------------------------

    def _keys(self, session, kid: str) -> List[object]:
        from pkcs11 import Attribute, KeyType, ObjectClass

        base = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}
        if self.key_label is not None:
            queries = [{**base, Attribute.LABEL: self.key_label}]
        else:
            queries = [{**base, Attribute.LABEL: kid}, {**base, Attribute.ID: kid.encode()}]
        found, seen = [], set()
        for q in queries:
            for key in session.get_objects(q):
                if key.handle not in seen:
                    seen.add(key.handle)
                    found.append(key)
        return found

    def _try(self, kid: str, iv: bytes, sealed: bytes) -> Optional[bytes]:
        import pkcs11
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        # How tokens report a GCM tag mismatch: SoftHSM says CKR_GENERAL_ERROR,
        # others CKR_ENCRYPTED_DATA_INVALID and the like. Any of them: not ours.
        does_not_open = (
            pkcs11.GeneralError,
            pkcs11.EncryptedDataInvalid,
            pkcs11.EncryptedDataLenRange,
            pkcs11.DataInvalid,
            pkcs11.DataLenRange,
            pkcs11.FunctionFailed,
            pkcs11.MechanismParamInvalid,
            pkcs11.KeyTypeInconsistent,
        )
        session = self._ensure_session()
        keys = self._keys(session, kid)
        for key in keys:
            try:
                plain = key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, None, 128))
            except does_not_open:
                continue
            if len(plain) == 32:
                return bytes(plain)
        if not keys and not self._logged_in_here and self.__pin is not None:
            # This session rode on another session's login; if that one has
            # logged out since, private keys are invisible. Ask for a fresh one.
            raise _Stale()
        return None

    def unwrap(self, recipient: dict) -> Optional[bytes]:
        """The 32-byte data key of an ``A256GCMKW`` stanza whose key is on the
        token, or None (another algorithm, no such key, or it does not open)."""
        if not isinstance(recipient, dict) or recipient.get("alg") != ALG:
            return None
        kid = recipient.get("kid")
        if not isinstance(kid, str):
            return None
        try:
            iv = _b64d(recipient.get("iv"))
            sealed = _b64d(recipient.get("encrypted_key")) + _b64d(recipient.get("tag"))
        except ValueError:
            return None
        if len(iv) != 12 or len(sealed) != 32 + 16:
            return None
        import pkcs11

        with self._lock:
            for attempt in (0, 1):
                try:
                    return self._try(kid, iv, sealed)
                except _Stale:
                    self._drop_session()
                    if attempt:
                        return None
                except pkcs11.PKCS11Error as e:
                    # A closed session, a logged-out user, a re-inserted card:
                    # once with a fresh session, then say so.
                    self._drop_session()
                    if attempt:
                        raise SafetensorError(
                            f"PKCS#11 token {self.token_label!r}: unwrapping for kid {kid!r} failed: {type(e).__name__}"
                        ) from None
        return None


    # -- wrapping (saving for a key on the token) ---------------------------

    def recipient(self, kid: Optional[str] = None) -> Pkcs11Recipient:
        """A recipient for ``encrypt_for=`` that wraps with the token key
        labelled ``kid`` (default: this provider's key label)."""
        kid = kid or self.key_label
        if not kid:
            raise SafetensorError("recipient() needs the kid (label) of a key on the token")
        return Pkcs11Recipient(self, kid)

    def _wrap(self, kid: str, data_key: bytes) -> dict:
        import pkcs11
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        if len(data_key) != 32:
            raise SafetensorError("a data key has 32 bytes")
        iv = os.urandom(12)
        with self._lock:
            session = self._ensure_session()
            keys = self._keys(session, kid)
            if len(keys) != 1:
                raise SafetensorError(
                    f"PKCS#11 token {self.token_label!r}: {len(keys)} AES keys answer to kid {kid!r}, need exactly one"
                )
            # python-pkcs11 gives a key an encrypt method only when its
            # CKA_ENCRYPT is set; import_oct_key's keys may only decrypt.
            encrypt = getattr(keys[0], "encrypt", None)
            try:
                if encrypt is None:
                    raise _NoEncrypt()
                sealed = bytes(encrypt(data_key, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, None, 128)))
            except (pkcs11.PKCS11Error, _NoEncrypt) as e:
                raise SafetensorError(
                    f"PKCS#11 token {self.token_label!r}: wrapping for kid {kid!r} failed: {type(e).__name__} "
                    "(a key imported with import_oct_key may only decrypt; generate_key makes one that wraps)"
                ) from None
            # The stanza must open before it goes into a file.
            if len(sealed) != 48 or self._try(kid, iv, sealed) != data_key:
                raise SafetensorError(f"PKCS#11 token {self.token_label!r}: the wrapped key for {kid!r} does not open")
        return {"kid": kid, "alg": ALG, "iv": _b64e(iv), "tag": _b64e(sealed[32:]), "encrypted_key": _b64e(sealed[:32])}


class _Stale(Exception):
    pass


class _NoEncrypt(Exception):
    """The token key lacks CKA_ENCRYPT."""


def _env_pin() -> Optional[str]:
    pin = os.environ.get(_ENV_PIN)
    if pin is not None:
        return pin
    path = os.environ.get(_ENV_PIN_FILE)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise SafetensorError(f"cannot read {_ENV_PIN_FILE} {path!r}: {e.strerror}") from None
    return None


def from_env() -> Optional[Pkcs11Provider]:
    """The provider the environment configures, or None when
    ``CRYPTOTENSORS_PKCS11_MODULE`` is unset (entry point of
    ``cryptotensors.key_providers``)."""
    module = os.environ.get(_ENV_MODULE)
    if not module:
        return None
    slot = os.environ.get(_ENV_SLOT)
    try:
        slot_id = int(slot, 0) if slot else None
    except ValueError:
        raise SafetensorError(f"{_ENV_SLOT} must be an integer slot id") from None
    return Pkcs11Provider(
        module,
        token_label=os.environ.get(_ENV_TOKEN) or None,
        pin=_env_pin(),
        key_label=os.environ.get(_ENV_KEY_LABEL) or None,
        slot=slot_id,
    )


__all__ = ["Pkcs11Provider", "from_env", "import_oct_key", "open_session"]
