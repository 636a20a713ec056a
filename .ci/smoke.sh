#!/usr/bin/env bash
# Installs a wheel into a fresh venv of the given CPython, with no Rust
# toolchain and no other environment on PATH, and runs an encrypted round
# trip and `cryptotensors demo` there.
#
# Usage: .ci/smoke.sh WHEEL_OR_SDIST PYTHON
set -euo pipefail
pkg=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
python=${2:?usage: .ci/smoke.sh WHEEL_OR_SDIST PYTHON}
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
"$python" -m venv "$fresh/venv"
"$fresh/venv/bin/pip" install -q --disable-pip-version-check "$pkg"
clean=(env -i HOME="$fresh" PATH="$fresh/venv/bin:/usr/bin:/bin" LANG=C.UTF-8)
if [[ $pkg == *.whl ]]; then
  # The installed package must not need a compiler: none is reachable here.
  ! "${clean[@]}" bash -c 'command -v cargo || command -v rustc' >/dev/null
fi
"${clean[@]}" "$fresh/venv/bin/python" - <<'PY'
import sys
import numpy as np
import cryptotensors
import cryptotensors.numpy as n
key = cryptotensors.generate_key("oct")
data = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(0, dtype=np.int8)}
blob = n.save(data, encrypt_for=key)
try:
    n.load(blob)
    raise SystemExit("an encrypted file loaded without its key")
except cryptotensors.SafetensorError:
    pass
back = n.load(blob, keys=key)
assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in data.items())
print(f"round trip ok on CPython {sys.version.split()[0]}")
PY
(cd "$fresh" && "${clean[@]}" "$fresh/venv/bin/cryptotensors" demo >"$fresh/demo.log" 2>&1) \
  || { cat "$fresh/demo.log"; exit 1; }
tail -n 1 "$fresh/demo.log"
