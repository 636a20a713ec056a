#!/usr/bin/env bash
# Prints the path of a cached "overlay" virtual environment with vLLM, for
# tests/test_vllm.py (CRYPTOTENSORS_VLLM_PYTHON=<that path>/bin/python).
#
# Usage: .ci/vllm-overlay.sh BASE_VENV   (default: $VIRTUAL_ENV)
#
# The overlay adds, with --no-deps, vllm and the few small modules that
# importing vLLM's model loader needs, on top of BASE_VENV: a start-up file in
# its site-packages adds BASE_VENV's site-packages (torch, transformers,
# safetensors and the cryptotensors under test), so pip never replaces those.
# vllm 0.33 declares torch==2.14 and transformers<5.21; the loader code that
# the tests drive runs with the base venv's versions. It is rebuilt when the
# pins below or BASE_VENV change.
set -euo pipefail
base=${1:-${VIRTUAL_ENV:?usage: .ci/vllm-overlay.sh BASE_VENV}}
base=$(cd "$base" && pwd)
pins="vllm==0.33.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
apache-tvm-ffi==0.1.11
attrs==26.1.0
cachetools==8.0.2
cbor2==6.3.0
certifi==2026.10.19.post1
cloudpickle==3.1.3
einops==0.8.2
fastapi==0.136.3
frozenlist==1.8.0
llguidance==1.7.6
msgspec==0.23.0
multidict==7.2.1
openai==3.57.0
openai-harmony==0.0.8
partial-json-parser==0.2.1.1.post7
pillow==13.0.0
prometheus_client==0.26.0
propcache==0.5.4
py-cpuinfo==9.0.0
pybase64==1.5.1
pyzmq==27.3.0
requests==2.34.2
sniffio==1.3.1
starlette==1.10.0
urllib3==2.8.0
uvloop==0.23.0
xgrammar==0.2.8
yarl==1.25.1"
base_site=$("$base/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
digest=$(printf '%s\n%s\n' "$pins" "$base_site" | sha256sum | cut -c1-12)
cache=${CRYPTOTENSORS_CI_CACHE:-$HOME/.cache/cryptotensors-ci}
overlay="$cache/vllm-overlay"
if [ "$(cat "$overlay/.complete" 2>/dev/null || true)" != "$digest" ]; then
  rm -rf "$overlay"
  mkdir -p "$cache"
  "$base/bin/python" -m venv "$overlay" >&2
  site=$("$overlay/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # sorts after the overlay's own .pth files; addsitedir also runs the base's .pth files
  echo "import site; site.addsitedir('$base_site')" >"$site/zz_cryptotensors_base.pth"
  printf '%s\n' "$pins" >"$overlay/pins.txt"
  "$overlay/bin/pip" install -q --disable-pip-version-check --no-deps -r "$overlay/pins.txt" >&2
  "$overlay/bin/python" -c "import vllm.model_executor.model_loader.weight_utils, vllm.plugins" >/dev/null 2>&1 \
    || { "$overlay/bin/python" -c "import vllm.model_executor.model_loader.weight_utils" >&2; exit 1; }
  echo "$digest" >"$overlay/.complete"
fi
echo "$overlay"
