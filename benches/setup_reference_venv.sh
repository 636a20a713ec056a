#!/usr/bin/env bash
# Creates (idempotently) the virtual environment holding the reference
# implementation, cryptotensors==0.2.3 from PyPI. Its import name is also
# `cryptotensors`, so it cannot share a venv with ours; bench.py only calls it
# through a subprocess running benches/_worker.py with this venv's python.
#
# Prints the venv path on stdout (everything else goes to stderr).
# Overrides: CRYPTOTENSORS_REF_VENV (location), REF_CRYPTOTENSORS_VERSION,
# REF_TORCH_VERSION (defaults to tests/requirements.txt's torch pin, so both
# sides run the same torch).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${CRYPTOTENSORS_REF_VENV:-$HOME/.cache/cryptotensors-bench/ref-venv}
ref_version=${REF_CRYPTOTENSORS_VERSION:-0.2.3}
torch_version=${REF_TORCH_VERSION:-$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$root/tests/requirements.txt" | head -n1)}
torch_spec=torch
[ -n "$torch_version" ] && torch_spec="torch==$torch_version"
# packaging: the reference's torch module imports it but does not declare it.
# cryptography: the worker makes the Ed25519 signing key the reference requires.
specs=("cryptotensors==$ref_version" "numpy>=2,<3" "$torch_spec" packaging cryptography)
want="${specs[*]}"

if [ -f "$venv/.complete" ] && [ "$(cat "$venv/.complete")" = "$want" ]; then
  echo "$venv"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
fi
rm -f "$venv/.complete"
"$venv/bin/pip" install -q "${specs[@]}" >&2
"$venv/bin/python" - <<'PY' >&2
import importlib.metadata as md

import cryptotensors
import cryptotensors.numpy
import cryptotensors.torch
import numpy
import torch

print("reference venv ok: cryptotensors", md.version("cryptotensors"),
      "numpy", numpy.__version__, "torch", torch.__version__)
PY
printf '%s' "$want" >"$venv/.complete"
echo "$venv"
