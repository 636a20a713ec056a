"""Key providers: code that unwraps a file's data key without handing out its
own secret (an HSM, a KMS, a key service). See README "Key providers".

A provider is an object with ``unwrap(recipient) -> bytes | None``. It gets a
recipient stanza of the file (a dict: ``kid``, ``alg``, ``encrypted_key`` and,
by algorithm, ``iv``/``tag`` or ``enc``; FORMAT.md §6) and returns the 32-byte
data key, or None when the stanza is not its to open. Whatever it returns is
checked by the core against the file's key commitment and header MAC before
any tensor is decrypted, so a provider cannot make a file decrypt to other
weights.

Providers come from ``register_key_provider`` (this process only) and from
the entry-point group ``cryptotensors.key_providers``: each entry point names
a zero-argument callable that returns a provider, or None when it has nothing
to offer in this environment. Entry points load in every process, so vLLM's
spawned workers find them too. Providers are consulted after the JWKs of the
call, of ``CRYPTOTENSORS_KEYS`` and of the configuration file, and only when
none of those opens the file.
"""

from __future__ import annotations

import copy
import json
import struct
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


def distinct(recipients: List[dict]) -> List[dict]:
    """The stanzas in file order, each identical one once (FORMAT.md §6.3:
    a forged file may repeat a stanza to make every provider work for each
    copy; a provider is an HSM or a network call)."""
    seen, out = set(), []
    for stanza in recipients:
        try:
            ident = json.dumps(stanza, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):
            continue
        if ident not in seen:
            seen.add(ident)
            out.append(stanza)
    return out


def data_keys(recipients: List[dict]) -> List[bytes]:
    """Asks every provider about every distinct stanza, once; returns the
    distinct keys they unwrapped, for the core to check."""
    out: List[bytes] = []
    stanzas = distinct(recipients)
    for provider in providers():
        for stanza in stanzas:
            key = provider.unwrap(copy.deepcopy(stanza))
            if key is not None and bytes(key) not in out:
                out.append(bytes(key))
    return out


def recipients_of_bytes(data: bytes) -> List[dict]:
    """The recipient stanzas named in a serialized file's header."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        envelope = json.loads(header["__metadata__"]["__cryptotensors__"])
        return list(envelope["encryption"]["recipients"])
    except Exception:
        return []


def recipients_of_file(filename: str) -> List[dict]:
    from . import _core

    return list(_core.inspect(filename).get("recipients", []))
