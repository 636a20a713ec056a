#!/usr/bin/env bash
# Fuzz smoke run: builds the cargo-fuzz targets in fuzz/ on stable Rust
# (RUSTC_BOOTSTRAP=1 unlocks the nightly-only flags cargo-fuzz passes) and
# runs each one for FUZZ_SECONDS seconds, starting from the committed seeds
# in fuzz/seeds/<target> plus whatever fuzz/corpus/<target> already holds.
# Fails if any target crashes (panic, failed assertion, timeout, OOM).
#
#   FUZZ_SECONDS=20           seconds per target
#   FUZZ_TARGETS="header ..." targets to run (default: all six)
#   FUZZ_SANITIZER=none       cargo-fuzz sanitizer (none|address|...)
#
# Crash inputs land in fuzz/artifacts/<target>/; replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-"header envelope slice decrypt roundtrip legacy"}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

echo "== building fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build -s "$sanitizer"

failed=()
summary=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in $targets; do
  echo "== fuzz $t for ${seconds}s"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/seeds/$t"
  rc=0
  cargo fuzz run -s "$sanitizer" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log"
    echo "-- $t failure:"
    grep -E -A2 'panicked at|ERROR: libFuzzer|SUMMARY:' "$log" | grep -v '^ *at ' | head -n 12 || true
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc) after ${execs:-?} executions")
  else
    tail -n 3 "$log"
    summary+=("$t: ok, ${execs:-?} executions")
  fi
done

echo "== fuzz summary"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
