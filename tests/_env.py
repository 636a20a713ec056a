"""The environment of a child process that must see nothing of this one's:
no ambient keys, no configuration file, no network, one thread."""

import os
from pathlib import Path


def bare_env(home, **extra):
    """A bare environment: no ambient keys, no configuration file, offline."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CRYPTOTENSORS_CONFIG_DIR": str(Path(home) / "no-config"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env
