#!/usr/bin/env bash
# Prints the path of the cached test virtual environment, creating it first if
# needed. It lives outside the clone and is keyed on tests/requirements.txt, so
# the multi-GB torch install happens once per requirements change, not per run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
digest=$(sha256sum "$root/tests/requirements.txt" | cut -c1-12)
cache=${CRYPTOTENSORS_CI_CACHE:-$HOME/.cache/cryptotensors-ci}
venv="$cache/venv-$digest"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$root/tests/requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv"
