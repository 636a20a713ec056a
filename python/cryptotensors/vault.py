"""HashiCorp Vault / OpenBao Transit: a recipient and a key provider whose
key-encryption key never leaves the server. See README "Vault / OpenBao".

A save hands the file's fresh data key to Transit ``encrypt`` and writes a
``vault-transit`` stanza (FORMAT.md §6.4): the key's name as ``kid`` and
Transit's ciphertext, nothing else. A load hands the ciphertext to Transit
``decrypt``. The stanza never says which server, mount, namespace or
credentials to use: all of that comes from the loader's environment, and a
file's ``kid`` only selects a key name on that server (optionally limited by
``CRYPTOTENSORS_VAULT_KEYS``). Whatever the server returns is checked by
the core against the file's key commitment and header MAC, as for every
provider.

Configuration (read by ``from_env``, the ``cryptotensors.key_providers``
entry point ``vault``, so every process gets it with no code change):

* ``VAULT_ADDR`` (or ``BAO_ADDR``): the server; the provider is off when unset;
* ``VAULT_TOKEN`` (or ``BAO_TOKEN``): a token; else AppRole with
  ``VAULT_ROLE_ID`` and ``VAULT_SECRET_ID`` (or ``VAULT_SECRET_ID_FILE``) at
  ``CRYPTOTENSORS_VAULT_APPROLE_MOUNT`` (default ``approle``); else Kubernetes
  service-account auth with ``CRYPTOTENSORS_VAULT_K8S_ROLE``, the token file
  ``CRYPTOTENSORS_VAULT_K8S_TOKEN_PATH`` (default the pod's) at
  ``CRYPTOTENSORS_VAULT_K8S_MOUNT`` (default ``kubernetes``);
* ``VAULT_CACERT`` (or ``BAO_CACERT``): the CA file for https (default: the
  system's); ``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY``: mutual TLS;
  ``VAULT_SKIP_VERIFY`` is NOT honoured;
* ``VAULT_NAMESPACE`` (or ``BAO_NAMESPACE``);
* ``CRYPTOTENSORS_VAULT_MOUNT``: the Transit mount (default ``transit``);
* ``CRYPTOTENSORS_VAULT_KEYS``: comma-separated key names a file may name
  (default: any the token may use);
* ``CRYPTOTENSORS_VAULT_TIMEOUT`` (seconds per request, default 10) and
  ``CRYPTOTENSORS_VAULT_RETRIES`` (default 2; connection failures and
  502/503/504 only): a request takes at most about (retries + 1) x timeout;
* ``CRYPTOTENSORS_VAULT_CACHE_TTL``: seconds an unwrapped data key is kept
  in this process (default 300; 0: ask the server at every open).

Requires ``hvac`` (``pip install 'cryptotensors[vault]'``).
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ._core import SafetensorError
from ._keys import KeyConfigError
from ._keyservice import (
    KeyServiceAuthError,
    KeyServiceDeniedError,
    KeyServiceError,
    KeyServiceMissingKeyError,
    KeyServiceTLSError,
    KeyServiceUnavailableError,
)

ALG = "vault-transit"
DEFAULT_MOUNT = "transit"
DEFAULT_K8S_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"

# Transit key names: what the server accepts in a path segment, nothing
# that could reach another endpoint ("/", "?", "#", "%", "..").
_KEY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,7}")
# Transit's ciphertext of a 32-byte key: "vault:v<version>:" and base64 of
# nonce, ciphertext and tag (or longer for RSA-wrapped and convergent keys).
_CIPHERTEXT = re.compile(r"vault:v[1-9][0-9]{0,9}:[A-Za-z0-9+/]{20,1400}={0,2}")
_CACHE_MAX = 1024
_ANSWER_MAX = 200


def _import_hvac():
    try:
        import hvac
        import hvac.exceptions  # noqa: F401
        import requests  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "VAULT_ADDR is set but the Vault key provider needs the hvac package: pip install 'cryptotensors[vault]'"
        ) from e
    return hvac


def _env(*names: str) -> Optional[str]:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _env_number(name: str, default: float, kind=float):
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise KeyConfigError(f"{name} must be a number") from None
    if value < 0:
        raise KeyConfigError(f"{name} must not be negative")
    return value


def _read_secret_file(name: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise KeyConfigError(f"cannot read {name} {path!r}: {e.strerror}") from None


def _answer(exc) -> str:
    """The server's own words for a failed request, short and on one line
    (hvac's message appends the URL; a batch error's text holds the whole
    response, plaintexts included, so only its per-item errors are kept)."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, (list, tuple)) and errors:
        text = "; ".join(str(e) for e in errors)
    else:
        body = getattr(exc, "json", None)
        items = (body or {}).get("data", {}).get("batch_results") if isinstance(body, dict) else None
        if isinstance(items, list):
            text = "; ".join(sorted({str(i.get("error")) for i in items if isinstance(i, dict) and i.get("error")}))
        else:
            text = type(exc).__name__
    text = " ".join(text.split())
    return text[:_ANSWER_MAX] + ("..." if len(text) > _ANSWER_MAX else "")


class _Transport(Exception):
    """A failure before the server answered: (class, message)."""


class VaultRecipient:
    """A recipient for ``encrypt_for=``: Transit ``encrypt`` of the file's
    data key under key ``key`` at mount ``mount``; the stanza records only
    the key name and the ciphertext. Made by ``VaultProvider.recipient``."""

    def __init__(self, provider: VaultProvider, key: str, mount: Optional[str] = None):
        self._provider = provider
        self.kid = _check_key_name(key)
        self.mount = _check_mount(mount) if mount is not None else provider.mount

    def __repr__(self) -> str:
        return f"VaultRecipient(key={self.kid!r}, mount={self.mount!r}, addr={self._provider.addr!r})"

    def __getstate__(self):
        raise TypeError("a VaultRecipient holds a Vault client; make one per process")

    def wrap(self, data_key: bytes) -> dict:
        return self._provider._encrypt(self.mount, self.kid, bytes(data_key))


def _check_key_name(key) -> str:
    if not isinstance(key, str) or not _KEY_NAME.fullmatch(key):
        raise KeyConfigError(f"not a Transit key name: {key!r} (letters, digits, '_', '.', '-')")
    return key


def _check_mount(mount) -> str:
    if not isinstance(mount, str) or not _MOUNT.fullmatch(mount.strip("/")):
        raise KeyConfigError(f"not a Vault mount path: {mount!r}")
    return mount.strip("/")


def parse_stanza(stanza) -> Optional[Tuple[str, str]]:
    """``(key name, ciphertext)`` of a well-formed ``vault-transit`` stanza,
    else None (not one this provider may send to its server)."""
    if not isinstance(stanza, dict) or stanza.get("alg") != ALG or set(stanza) != {"kid", "alg", "ciphertext"}:
        return None
    kid, ct = stanza.get("kid"), stanza.get("ciphertext")
    if not isinstance(kid, str) or not _KEY_NAME.fullmatch(kid):
        return None
    if not isinstance(ct, str) or not _CIPHERTEXT.fullmatch(ct):
        return None
    return kid, ct


class VaultProvider:
    """Unwraps ``vault-transit`` stanzas with Transit ``decrypt`` on one
    server and mount (see the module docstring). Logs in at the first
    request; one client per process, shared by all threads under a lock;
    data keys cached for ``cache_ttl`` seconds."""

    def __init__(
        self,
        addr: str,
        *,
        token: Optional[str] = None,
        role_id: Optional[str] = None,
        secret_id: Optional[str] = None,
        approle_mount: str = "approle",
        k8s_role: Optional[str] = None,
        k8s_token_path: str = DEFAULT_K8S_TOKEN_PATH,
        k8s_mount: str = "kubernetes",
        mount: str = DEFAULT_MOUNT,
        namespace: Optional[str] = None,
        cacert: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        timeout: float = 10.0,
        retries: int = 2,
        keys: Optional[Iterable[str]] = None,
        cache_ttl: float = 300.0,
    ):
        _import_hvac()  # fail now, with the install hint, not at the first load
        if not isinstance(addr, str) or not re.match(r"https?://[^/?#@\s]+/?\Z", addr):
            raise KeyConfigError(f"VAULT_ADDR must be http(s)://host[:port], got {addr!r}")
        self.addr = addr.rstrip("/")
        self.mount = _check_mount(mount)
        self.namespace = namespace
        self.cacert = os.fspath(cacert) if cacert else None
        self._cert = (os.fspath(client_cert), os.fspath(client_key)) if client_cert and client_key else None
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.keys = frozenset(_check_key_name(k) for k in keys) if keys is not None else None
        self.cache_ttl = float(cache_ttl)
        if token:
            self.auth = "token"
        elif role_id:
            self.auth = "approle"
        elif k8s_role:
            self.auth = "kubernetes"
        else:
            raise KeyConfigError(
                "VAULT_ADDR is set but no credentials are: set VAULT_TOKEN, VAULT_ROLE_ID and VAULT_SECRET_ID, "
                "or CRYPTOTENSORS_VAULT_K8S_ROLE"
            )
        self.__token = token
        self.__role_id = role_id
        self.__secret_id = secret_id
        self._approle_mount = _check_mount(approle_mount)
        self._k8s_role = k8s_role
        self._k8s_token_path = k8s_token_path
        self._k8s_mount = _check_mount(k8s_mount)
        self._lock = threading.RLock()
        self._client = None
        self._client_pid = None
        self._cache: Dict[Tuple[str, str, str], Tuple[bytes, float]] = {}
        self.requests = 0  # Transit requests sent, logins not counted (for benchmarks and tests)

    def __repr__(self) -> str:
        return (
            f"VaultProvider(addr={self.addr!r}, mount={self.mount!r}, namespace={self.namespace!r}, "
            f"auth={self.auth!r}, cacert={self.cacert!r})"
        )

    __str__ = __repr__

    def __getstate__(self):
        raise TypeError("a VaultProvider holds credentials; build one per process (from_env)")

    # -- client ---------------------------------------------------------

    def _new_client(self):
        hvac = _import_hvac()
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        session = requests.Session()
        # hvac takes verify and cert from a session it is given, not from its own arguments.
        session.verify = self.cacert or True
        session.cert = self._cert
        retry = Retry(
            total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
            status_forcelist=(502, 503, 504), allowed_methods=frozenset({"GET", "POST", "PUT"}),
            backoff_factor=0.2, raise_on_status=False, respect_retry_after_header=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return hvac.Client(
            url=self.addr, token=self.__token, verify=self.cacert or True, cert=self._cert,
            timeout=self.timeout, namespace=self.namespace, session=session,
        )

    def _login(self, client) -> None:
        if self.auth == "token":
            return
        def login():
            if self.auth == "approle":
                client.auth.approle.login(self.__role_id, self.__secret_id, mount_point=self._approle_mount)
            else:
                jwt = _read_secret_file("CRYPTOTENSORS_VAULT_K8S_TOKEN_PATH", self._k8s_token_path)
                client.auth.kubernetes.login(self._k8s_role, jwt, mount_point=self._k8s_mount)
        self._request(login, f"{self.auth} login", login=True)

    def _ensure_client(self):
        if self._client is not None and self._client_pid == os.getpid():
            return self._client
        self._client = None  # a forked child must not share the parent's connections
        client = self._new_client()
        self._login(client)
        self._client, self._client_pid = client, os.getpid()
        return client

    def close(self) -> None:
        """Drops the client and every cached data key."""
        with self._lock:
            client, self._client = self._client, None
            self._cache.clear()
            if client is not None:
                try:
                    client.adapter.close()
                except Exception:
                    pass

    def clear_cache(self) -> None:
        """Forgets the data keys unwrapped so far: the next open asks the server."""
        with self._lock:
            self._cache.clear()

    # -- requests and their failures -------------------------------------

    def _request(self, call, what: str, key: Optional[str] = None, login: bool = False, mount: Optional[str] = None):
        """Runs ``call()``; turns every failure into a KeyServiceError naming
        the server's answer, raised outside the handler so that no cause or
        context holds the request (and its token header)."""
        hvac = _import_hvac()
        import requests

        where = f"Vault {self.addr}" + (f" ({what} {mount or self.mount}/{key})" if key else f" ({what})")
        failure: Optional[KeyServiceError] = None
        forbidden = False
        try:
            return call()
        except requests.exceptions.SSLError:
            failure = KeyServiceTLSError(
                f"{where}: the server's TLS certificate does not verify"
                + (f" against VAULT_CACERT {self.cacert!r}" if self.cacert else " (set VAULT_CACERT to its CA file)")
            )
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError) as e:
            kind = "did not answer within" if isinstance(e, requests.exceptions.Timeout) else "is unreachable after"
            failure = KeyServiceUnavailableError(
                f"{where}: the server {kind} {self.timeout:g} s x {self.retries + 1} tries ({type(e).__name__})"
            )
        except hvac.exceptions.Forbidden as e:
            if login:
                failure = KeyServiceAuthError(f"{where}: login refused: {_answer(e)}")
            else:
                forbidden = True
        except hvac.exceptions.Unauthorized as e:
            failure = KeyServiceAuthError(f"{where}: credentials refused: {_answer(e)}")
        except (hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway,
                hvac.exceptions.RateLimitExceeded) as e:
            failure = KeyServiceUnavailableError(f"{where}: the server is unavailable: {_answer(e)}")
        except hvac.exceptions.VaultError as e:
            answer = _answer(e)
            low = answer.lower()
            if login:
                failure = KeyServiceAuthError(f"{where}: login refused: {answer}")
            elif "key not found" in low:
                failure = KeyServiceMissingKeyError(f"{where}: the server has no such key: {answer}")
            elif "disallowed by policy" in low or "too old" in low:
                failure = KeyServiceDeniedError(f"{where}: the key refuses this ciphertext's version: {answer}")
            elif isinstance(e, hvac.exceptions.InvalidPath):
                failure = KeyServiceError(f"{where}: no such endpoint (is a Transit engine mounted at {self.mount!r}?): {answer}")
            else:
                failure = KeyServiceError(f"{where}: the server refused: {answer}")
        if forbidden:
            failure = self._why_forbidden(where, what)
        raise failure

    def _why_forbidden(self, where: str, what: str) -> KeyServiceError:
        """A 403 is a dead token or a policy that does not grant the call:
        the token's own lookup (which the default policy grants) tells which."""
        hvac = _import_hvac()
        dead = False
        try:
            self._client.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            dead = True
        except Exception:
            pass
        if dead:
            return KeyServiceAuthError(f"{where}: permission denied: the token is invalid, expired or revoked")
        return KeyServiceDeniedError(f"{where}: permission denied: the token's policy does not grant {what} on this key")

    def _transit(self, op: str, key: str, mount: Optional[str] = None, **body):
        """One Transit call, with one fresh login when a login-based token
        has expired or was revoked."""
        transit_op = {"encrypt": "encrypt_data", "decrypt": "decrypt_data", "rewrap": "rewrap_data"}[op]
        mount = mount or self.mount
        for attempt in (0, 1):
            client = self._ensure_client()
            self.requests += 1
            try:
                return self._request(
                    lambda c=client: getattr(c.secrets.transit, transit_op)(key, mount_point=mount, **body), op, key,
                    mount=mount,
                )["data"]
            except KeyServiceAuthError:
                if self.auth == "token" or attempt:
                    raise
                self._client = None

    # -- decrypt ----------------------------------------------------------

    def _key_of(self, plaintext, key: str) -> bytes:
        try:
            dk = base64.b64decode(plaintext or "", validate=True)
        except (ValueError, TypeError):
            dk = b""
        if len(dk) != 32:
            raise KeyServiceError(f"Vault {self.addr} (decrypt {self.mount}/{key}): the server did not return a 32-byte data key")
        return dk

    def _decrypt(self, key: str, ciphertexts: List[str]) -> List[bytes]:
        if len(ciphertexts) == 1:
            return [self._key_of(self._transit("decrypt", key, ciphertext=ciphertexts[0]).get("plaintext"), key)]
        data = self._transit("decrypt", key, ciphertext="", batch_input=[{"ciphertext": c} for c in ciphertexts])
        items = data.get("batch_results") or []
        if len(items) != len(ciphertexts):
            raise KeyServiceError(f"Vault {self.addr} (decrypt {self.mount}/{key}): a batch answer of the wrong length")
        return [self._key_of(i.get("plaintext"), key) for i in items]

    def _allowed(self, kid: str) -> bool:
        return self.keys is None or kid in self.keys

    def _cached(self, ident) -> Optional[bytes]:
        hit = self._cache.get(ident)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        self._cache.pop(ident, None)
        return None

    def _remember(self, ident, dk: bytes) -> None:
        if self.cache_ttl <= 0:
            return
        if len(self._cache) >= _CACHE_MAX:
            self._cache.pop(next(iter(self._cache)))
        self._cache[ident] = (dk, time.monotonic() + self.cache_ttl)

    def unwrap(self, recipient: dict) -> Optional[bytes]:
        """The 32-byte data key of a ``vault-transit`` stanza, from the
        cache or Transit ``decrypt``; None for any other stanza, a malformed
        one, or a key name outside ``keys``. Raises a KeyServiceError for
        what the server answers instead of a key."""
        parsed = parse_stanza(recipient)
        if parsed is None or not self._allowed(parsed[0]):
            return None
        kid, ct = parsed
        ident = (self.mount, kid, ct)
        with self._lock:
            dk = self._cached(ident)
            if dk is None:
                dk = self._decrypt(kid, [ct])[0]
                self._remember(ident, dk)
            return dk

    def prefetch(self, paths) -> int:
        """Unwraps the Transit stanzas of many files (a model's shards: a
        path, a directory, or a list of them) with one batch ``decrypt`` per
        key, into the cache, so that the loads that follow ask nothing.
        Returns the number of data keys fetched."""
        from . import _core

        files: List[str] = []
        for p in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
            p = os.fspath(p)
            if os.path.isdir(p):
                files += sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".safetensors"))
            else:
                files.append(p)
        wanted: Dict[str, List[str]] = {}
        for f in files:
            try:
                stanzas = _core.inspect(f).get("recipients") or []
            except SafetensorError:
                continue
            for s in stanzas:
                parsed = parse_stanza(s)
                if parsed and self._allowed(parsed[0]) and parsed[1] not in wanted.get(parsed[0], []):
                    wanted.setdefault(parsed[0], []).append(parsed[1])
        n = 0
        with self._lock:
            for kid, cts in wanted.items():
                cts = [c for c in cts if self._cached((self.mount, kid, c)) is None]
                if cts:
                    for c, dk in zip(cts, self._decrypt(kid, cts)):
                        self._remember((self.mount, kid, c), dk)
                        n += 1
        return n

    # -- encrypt and rewrap -----------------------------------------------

    def recipient(self, key: str, mount: Optional[str] = None) -> VaultRecipient:
        """A recipient for ``encrypt_for=`` wrapping with Transit key ``key``
        (at ``mount``, default this provider's)."""
        return VaultRecipient(self, key, mount)

    def _encrypt(self, mount: str, key: str, data_key: bytes) -> dict:
        if len(data_key) != 32:
            raise SafetensorError("a data key has 32 bytes")
        plaintext = base64.b64encode(data_key).decode()
        with self._lock:
            ct = self._transit("encrypt", key, mount, plaintext=plaintext).get("ciphertext")
        if not isinstance(ct, str) or not _CIPHERTEXT.fullmatch(ct):
            raise KeyServiceError(f"Vault {self.addr} (encrypt {mount}/{key}): the server's ciphertext is not Transit's")
        return {"kid": key, "alg": ALG, "ciphertext": ct}

    def _rewrap(self, key: str, ciphertexts: List[str]) -> List[str]:
        data = self._transit("rewrap", key, ciphertext="", batch_input=[{"ciphertext": c} for c in ciphertexts])
        items = data.get("batch_results") or []
        out = [i.get("ciphertext") for i in items]
        if len(out) != len(ciphertexts) or not all(isinstance(c, str) and _CIPHERTEXT.fullmatch(c) for c in out):
            raise KeyServiceError(f"Vault {self.addr} (rewrap {self.mount}/{key}): a malformed batch answer")
        return out

    def rewrapped(self, stanzas: List[dict]) -> List[Tuple[dict, dict]]:
        """``(old, new)`` for each distinct Transit stanza not at its key's
        latest version: Transit ``rewrap`` (one batch per key), each new
        ciphertext then checked to decrypt to the same data key as the old
        one. The key-encryption key never leaves the server."""
        by_key: Dict[str, List[str]] = {}
        for s in stanzas:
            parsed = parse_stanza(s)
            if parsed and self._allowed(parsed[0]) and parsed[1] not in by_key.get(parsed[0], []):
                by_key.setdefault(parsed[0], []).append(parsed[1])
        pairs = []
        with self._lock:
            for kid, olds in by_key.items():
                news = self._rewrap(kid, olds)
                # Transit re-encrypts even at the latest version (a fresh
                # nonce): only a stanza whose key version goes up is moved.
                moved = [(o, n) for o, n in zip(olds, news) if _version(n) > _version(o)]
                if not moved:
                    continue
                before = self._decrypt(kid, [o for o, _ in moved])
                after = self._decrypt(kid, [n for _, n in moved])
                for (o, n), a, b in zip(moved, before, after):
                    if not hmac.compare_digest(a, b):
                        raise KeyServiceError(f"Vault {self.addr} (rewrap {self.mount}/{kid}): the new ciphertext opens to another key")
                    self._remember((self.mount, kid, o), a)
                    pairs.append(({"kid": kid, "alg": ALG, "ciphertext": o}, {"kid": kid, "alg": ALG, "ciphertext": n}))
        return pairs


def _version(ciphertext: str) -> int:
    """The key version of a Transit ciphertext ("vault:v3:..." -> 3)."""
    return int(ciphertext.split(":", 2)[1][1:])


def from_env() -> Optional[VaultProvider]:
    """The provider the environment configures, or None when neither
    ``VAULT_ADDR`` nor ``BAO_ADDR`` is set (entry point of
    ``cryptotensors.key_providers``)."""
    addr = _env("VAULT_ADDR", "BAO_ADDR")
    if not addr:
        return None
    secret_id = _env("VAULT_SECRET_ID")
    if secret_id is None and _env("VAULT_SECRET_ID_FILE"):
        secret_id = _read_secret_file("VAULT_SECRET_ID_FILE", _env("VAULT_SECRET_ID_FILE"))
    keys = _env("CRYPTOTENSORS_VAULT_KEYS")
    return VaultProvider(
        addr,
        token=_env("VAULT_TOKEN", "BAO_TOKEN"),
        role_id=_env("VAULT_ROLE_ID"),
        secret_id=secret_id,
        approle_mount=_env("CRYPTOTENSORS_VAULT_APPROLE_MOUNT") or "approle",
        k8s_role=_env("CRYPTOTENSORS_VAULT_K8S_ROLE"),
        k8s_token_path=_env("CRYPTOTENSORS_VAULT_K8S_TOKEN_PATH") or DEFAULT_K8S_TOKEN_PATH,
        k8s_mount=_env("CRYPTOTENSORS_VAULT_K8S_MOUNT") or "kubernetes",
        mount=_env("CRYPTOTENSORS_VAULT_MOUNT") or DEFAULT_MOUNT,
        namespace=_env("VAULT_NAMESPACE", "BAO_NAMESPACE"),
        cacert=_env("VAULT_CACERT", "BAO_CACERT"),
        client_cert=_env("VAULT_CLIENT_CERT", "BAO_CLIENT_CERT"),
        client_key=_env("VAULT_CLIENT_KEY", "BAO_CLIENT_KEY"),
        timeout=_env_number("CRYPTOTENSORS_VAULT_TIMEOUT", 10.0),
        retries=_env_number("CRYPTOTENSORS_VAULT_RETRIES", 2, int),
        keys=[k.strip() for k in keys.split(",") if k.strip()] if keys else None,
        cache_ttl=_env_number("CRYPTOTENSORS_VAULT_CACHE_TTL", 300.0),
    )


_default_lock = threading.Lock()
_default: Dict[int, Optional[VaultProvider]] = {}


def default_provider() -> Optional[VaultProvider]:
    """The environment's provider of this process: the one the entry point
    registered if it did, else ``from_env()`` (built once)."""
    from . import _providers

    for p in _providers.providers():
        if isinstance(p, VaultProvider):
            return p
    with _default_lock:
        if os.getpid() not in _default:
            _default[os.getpid()] = from_env()
        return _default[os.getpid()]


def _understood(path: str) -> Any:
    """inspect() of a file a rewrap rewrites: a damaged one fails, with the error reading it raises."""
    from . import _core

    header = _core.inspect(path)
    header.check()
    return header


def rewrap_latest(
    filename,
    *,
    provider: Optional[VaultProvider] = None,
    keys=None,
    trusted_signers=None,
    sign_with=None,
    drop_signature: bool = False,
    policy_input=None,
    output=None,
    add=None,
    remove=(),
    policy=None,
    remove_policy: bool = False,
) -> int:
    """Moves every Transit stanza of a file (or of every ``.safetensors``
    file under a directory, in place) to its key's latest version with
    Transit ``rewrap``, through the core's rewrap (verified as a load
    verifies, atomic; a signed file must be re-signed or its signature
    dropped). Other changes of ``cryptotensors.rewrap`` may go along.
    Returns the number of stanzas moved."""
    from . import _added, _changes, _core, _keys, _policy

    provider = provider or default_provider()
    if provider is None:
        raise KeyConfigError("rewrap to the latest Transit key version: set VAULT_ADDR (and VAULT_TOKEN) first")
    src = os.fspath(filename)
    if os.path.isdir(src):
        if output is not None:
            raise SafetensorError("a directory is rewrapped in place (no output=)")
        total = 0
        for root, _dirs, names in os.walk(src):
            for n in sorted(names):
                if n.endswith(".safetensors") and _understood(os.path.join(root, n)).get("recipients"):
                    total += rewrap_latest(
                        os.path.join(root, n), provider=provider, keys=keys, trusted_signers=trusted_signers,
                        sign_with=sign_with, drop_signature=drop_signature, policy_input=policy_input,
                        add=add, remove=remove, policy=policy, remove_policy=remove_policy,
                    )
        return total
    dst = os.fspath(output) if output is not None else src
    stanzas = list(_understood(src).get("recipients") or [])
    pairs = provider.rewrapped(stanzas)
    if not pairs and not (add or remove or policy is not None or remove_policy or sign_with or drop_signature):
        # Already at the latest versions: nothing to re-MAC (the file may
        # have no stanza this provider opens).
        if dst != src and not (os.path.exists(dst) and os.path.samefile(src, dst)):
            import shutil
            import tempfile

            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)), prefix=".rewrap-")
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        return 0
    # The core opens the file with the caller's keys, else with this
    # provider (a Transit decrypt, cached), to re-MAC the header.
    _core.rewrap(
        src, dst,
        keys=_keys.keyring(keys), providers=lambda: [provider],
        **_added(add),  # JWKs and key wrappers (an HSM, a Transit key), as for rewrap()
        replace=json.dumps([[o, n] for o, n in pairs]) if pairs else None,
        policy_input=_policy.input_json("rewrap", "cpu", policy_input, True),
        **_changes(remove, sign_with, drop_signature, trusted_signers, policy, remove_policy),
    )
    return len(pairs)


__all__ = [
    "ALG", "VaultProvider", "VaultRecipient", "from_env", "default_provider", "rewrap_latest", "parse_stanza",
    "KeyServiceError", "KeyServiceUnavailableError", "KeyServiceTLSError", "KeyServiceAuthError",
    "KeyServiceDeniedError", "KeyServiceMissingKeyError",
]
