"""Errors of remote key services (HashiCorp Vault / OpenBao Transit today;
a cloud KMS would raise the same classes): one class per answer a loader
must tell apart. Messages name the service, the key and the service's
answer, never a token, a secret id or a data key; no attribute, cause or
context holds the client's request (whose headers carry the token)."""

from __future__ import annotations

from ._core import SafetensorError


class KeyServiceError(SafetensorError):
    """A key service did not unwrap (or wrap) a data key."""


class KeyServiceUnavailableError(KeyServiceError):
    """The service is down, sealed, unreachable, or did not answer within
    the configured time (after the configured retries)."""


class KeyServiceTLSError(KeyServiceError):
    """The service's TLS certificate does not verify against the CA the
    loader is configured with (VAULT_CACERT, else the system's)."""


class KeyServiceAuthError(KeyServiceError):
    """The service refused the loader's credentials: the token is invalid,
    expired or revoked, or an AppRole / Kubernetes login was refused."""


class KeyServiceDeniedError(KeyServiceError):
    """The credentials are valid but the service's policy does not grant the
    operation on the key (e.g. Transit decrypt), or refuses this ciphertext
    (a key version below min_decryption_version)."""


class KeyServiceMissingKeyError(KeyServiceError):
    """The key the file names does not exist on the service (deleted, or
    never created on this server and mount)."""


__all__ = [
    "KeyServiceError",
    "KeyServiceUnavailableError",
    "KeyServiceTLSError",
    "KeyServiceAuthError",
    "KeyServiceDeniedError",
    "KeyServiceMissingKeyError",
]
