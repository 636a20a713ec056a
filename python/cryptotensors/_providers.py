"""Key providers: code that unwraps a file's data key without handing out its
own secret (an HSM, a KMS, a key service). See README "Key providers".

A provider is an object with ``unwrap(recipient) -> bytes | None``. It gets a
recipient stanza of the file (a dict: ``kid``, ``alg``, ``encrypted_key`` and,
by algorithm, ``iv``/``tag`` or ``enc``; FORMAT.md §6) and returns the 32-byte
data key, or None when the stanza is not its to open; an exception it raises
ends the open and reaches the caller. Whatever it returns is checked by the
core against the file's key commitment and header MAC before any tensor is
decrypted, so a provider cannot make a file decrypt to other weights; a value
that is not 32 bytes is an ``InvalidKeyError``.

The core asks the providers itself, inside the one open of a file (no header
is parsed here): it calls ``providers()`` only when the key ring opens
nothing, then asks each provider once per distinct stanza, in order, until a
key passes the checks.

Providers come from ``register_key_provider`` (this process only) and from
the entry-point group ``cryptotensors.key_providers``: each entry point names
a zero-argument callable that returns a provider, or None when it has nothing
to offer in this environment. Entry points load in every process, so vLLM's
spawned workers find them too. Providers are consulted after the JWKs of the
call, of ``CRYPTOTENSORS_KEYS`` and of the configuration file, and only when
none of those opens the file.
"""

from __future__ import annotations

import threading
from typing import Callable, List, Optional

from ._core import SafetensorError

GROUP = "cryptotensors.key_providers"

_lock = threading.Lock()
_registered: List[object] = []
_discovered: Optional[List[object]] = None


def register_key_provider(provider) -> None:
    """Adds a provider for this process (see the module docstring)."""
    if not callable(getattr(provider, "unwrap", None)):
        raise TypeError("a key provider needs an unwrap(recipient) method")
    with _lock:
        _registered.append(provider)


def _discover() -> List[object]:
    from importlib.metadata import entry_points

    found = []
    try:
        eps = entry_points(group=GROUP)
    except TypeError:  # Python 3.9
        eps = entry_points().get(GROUP, [])
    for ep in eps:
        try:
            factory: Callable = ep.load()
            provider = factory()
        except Exception as e:  # a broken plugin must say so, not hide
            raise SafetensorError(f"key provider entry point {ep.name!r} failed to load: {type(e).__name__}: {e}") from e
        if provider is not None:
            found.append(provider)
    return found


def providers() -> List[object]:
    """Registered providers, then those of the entry-point group (loaded once)."""
    global _discovered
    with _lock:
        if _discovered is None:
            _discovered = _discover()
        return list(_registered) + list(_discovered)
