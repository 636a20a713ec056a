"""Where keys come from: the call, then the environment, then the config file.

Keys are JWKs (RFC 7517). A file names the recipients that can open it; only
keys that the loader supplies are ever tried, so a file can never choose its
own key. Trusted signers are configured the same way and only by the loader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

KEYS_ENV = "CRYPTOTENSORS_KEYS"
TRUSTED_ENV = "CRYPTOTENSORS_TRUSTED_SIGNERS"
CONFIG_ENV = "CRYPTOTENSORS_CONFIG_DIR"
KEYS_FILE = "keys.jwks"


def _config_dir() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cryptotensors"


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


def _from_env(name: str) -> list:
    """Reads JWKS JSON text, or the path of a JWKS file, from an environment variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return []
    if raw[0] in "[{":
        return _as_list(raw)
    with open(raw, encoding="utf-8") as f:
        return _as_list(f.read())


def keyring_json(keys: Any = None) -> Optional[str]:
    """The key ring of one load, as JSON text for the core: call, env, config file."""
    ring = _as_list(keys) + _from_env(KEYS_ENV)
    config = _config_dir() / KEYS_FILE
    if config.is_file():
        ring += _as_list(config.read_text(encoding="utf-8"))
    return json.dumps(ring) if ring else None


def trusted_json(trusted_signers: Any = None) -> Optional[str]:
    """Trusted signer public keys of one load: the call, then the environment."""
    ring = _as_list(trusted_signers) + _from_env(TRUSTED_ENV)
    return json.dumps(ring) if ring else None


def threads(num_threads: Optional[int]) -> int:
    """Decryption threads: the keyword, else CRYPTOTENSORS_NUM_THREADS, else all cores (0)."""
    if num_threads is None:
        num_threads = int(os.environ.get("CRYPTOTENSORS_NUM_THREADS", "0") or 0)
    if num_threads < 0:
        raise ValueError("num_threads must be >= 0")
    return int(num_threads)
