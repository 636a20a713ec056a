"""The command line's Vault / OpenBao Transit hooks (the cli package calls these):
``-r vault:[MOUNT/]KEY`` recipients, and ``rewrap --transit-latest``."""

from __future__ import annotations

from typing import Optional

PREFIX = "vault:"


def is_spec(source: str) -> bool:
    return source.startswith(PREFIX)


def recipient(source: str):
    """`vault:MOUNT/KEY` (or `vault:KEY`, at CRYPTOTENSORS_VAULT_MOUNT): the
    Transit key KEY on the server the environment configures (VAULT_ADDR,
    VAULT_TOKEN...), which wraps each file's data key. Raises KeyConfigError
    (or ImportError without hvac) when it cannot be used."""
    from . import vault
    from ._keys import KeyConfigError

    spec = source[len(PREFIX):].strip("/")
    mount: Optional[str]
    mount, _, key = spec.rpartition("/")
    if not key:
        raise KeyConfigError("name a Transit key, as vault:transit/KEY")
    provider = vault.default_provider()
    if provider is None:
        raise KeyConfigError("set VAULT_ADDR (or BAO_ADDR) and VAULT_TOKEN (or AppRole) first")
    return provider.recipient(key, mount or None)


def kid_of(recipient) -> Optional[str]:
    """The kid a recipient (a JWK or a key wrapper) writes its stanzas under."""
    return recipient.get("kid") if isinstance(recipient, dict) else getattr(recipient, "kid", None)


def rewrap(filename, *, transit_latest: bool = False, **changes):
    """cryptotensors.rewrap, or with ``transit_latest`` vault.rewrap_latest
    (the same changes, plus every Transit stanza to its key's latest version)."""
    from . import rewrap as plain_rewrap

    if not transit_latest:
        return plain_rewrap(filename, **changes)
    from . import vault

    vault.rewrap_latest(filename, **changes)
