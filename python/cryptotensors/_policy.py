"""The input document of access policies (README "Access policy").

    {
      "time": "2026-11-25T17:00:00Z",   # UTC, RFC 3339
      "time_ns": 1795539600000000000,
      "host": {"hostname": ..., "os": "Linux", "platform": "linux", "machine": "x86_64"},
      "framework": "pt", "device": "cuda:0",
      "loader": "safe_open" | "transformers" | "vllm" | "accelerate",
      "tensors": null | ["*"],          # null: safe_open (chosen later); ["*"]: every tensor
      "claims": {...}                   # policy_input= of the call, e.g. TEE attestation results
    }
"""

from __future__ import annotations

import json
import platform
import socket
import sys
import time
from typing import Any, Optional

_LOADERS = ("transformers", "vllm", "accelerate")


def _loader() -> str:
    """The library that called us, found on the stack (cheaply, by module name)."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        top = module.split(".", 1)[0]
        if top in _LOADERS:
            return top
        frame = frame.f_back
    return "safe_open"


_host: Optional[str] = None
_clock = (-1, "")
_EVERY = json.dumps(["*"])


def _host_json() -> str:
    """The host part of the input, as JSON: read once per process."""
    global _host
    if _host is None:
        _host = json.dumps(
            {"hostname": socket.gethostname(), "os": platform.system(), "platform": sys.platform, "machine": platform.machine()}
        )
    return _host


def _rfc3339(seconds: int) -> str:
    global _clock
    if _clock[0] != seconds:
        _clock = (seconds, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)))
    return _clock[1]


def input_json(framework: str, device: str, claims: Any = None, every_tensor: bool = False) -> str:
    """The input document (see the module docstring) as JSON text. It is built
    at every open, policy or not, so it is assembled from cached parts."""
    if claims is not None and not isinstance(claims, dict):
        raise TypeError("policy_input must be a dict of claims")
    now = time.time_ns()
    tensors = _EVERY if every_tensor else "null"
    claims_json = json.dumps(claims) if claims else "{}"
    return (
        f'{{"time":"{_rfc3339(now // 1_000_000_000)}","time_ns":{now},"host":{_host_json()},'
        f'"framework":{json.dumps(framework)},"device":{json.dumps(device)},"loader":"{_loader()}",'
        f'"tensors":{tensors},"claims":{claims_json}}}'
    )


def policy_text(policy: Optional[str]) -> Optional[str]:
    """The Rego text of a save's policy= (text, not a path)."""
    if policy is None:
        return None
    if not isinstance(policy, str):
        raise TypeError("policy must be Rego source text")
    return policy
