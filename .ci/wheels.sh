#!/usr/bin/env bash
# Builds into OUTDIR every wheel this machine can build, plus the sdist:
#   Linux x86_64 and aarch64, manylinux2014 (glibc 2.17), one abi3 wheel each
#   for CPython >= 3.9, cross-compiled with zig; and cryptotensors-*.tar.gz.
# Then checks each wheel's tag against the symbols it links (auditwheel) and
# the machine its extension is built for (ELF e_machine).
# macOS and Windows wheels are built by .github/workflows/release.yml only.
#
# Usage: .ci/wheels.sh OUTDIR
set -euo pipefail
out=${1:?usage: .ci/wheels.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The build tools live in a cached venv outside the clone, keyed on their pins.
pins="maturin==1.16.0
ziglang==0.13.0.post1
auditwheel==6.8.2
pyyaml==6.0.4"
digest=$(printf '%s\n' "$pins" | sha256sum | cut -c1-12)
cache=${CRYPTOTENSORS_CI_CACHE:-$HOME/.cache/cryptotensors-ci}
tools="$cache/wheeltools-$digest"
if [ ! -f "$tools/.complete" ]; then
  rm -rf "$tools"
  mkdir -p "$cache"
  python3 -m venv "$tools" >&2
  printf '%s\n' "$pins" >"$tools/pins.txt"
  "$tools/bin/pip" install -q --disable-pip-version-check -r "$tools/pins.txt" >&2
  touch "$tools/.complete"
fi
export PATH="$tools/bin:$PATH"

# The host's target is always there; aarch64's standard library comes from
# rustup's server. Where that cannot be reached the aarch64 wheel is skipped,
# loudly, rather than failing every other check.
targets="x86_64-unknown-linux-gnu"
installed=$(rustup target list --installed 2>/dev/null || true)
if grep -qx aarch64-unknown-linux-gnu <<<"$installed" || rustup target add aarch64-unknown-linux-gnu >&2; then
  targets="$targets aarch64-unknown-linux-gnu"
else
  echo "WARNING: SKIPPED the aarch64 wheel: rustup could not install aarch64-unknown-linux-gnu" >&2
fi

cd "$root"
rm -f "$out"/cryptotensors-*
for t in $targets; do
  echo "-- wheel $t" >&2
  # A separate target dir per triple: zig's linker flags differ from the host build's.
  CARGO_TARGET_DIR="$root/target/zig" maturin build --release --locked --zig \
    --compatibility manylinux2014 --target "$t" -o "$out" >&2
done
echo "-- sdist" >&2
maturin sdist -o "$out" >&2

echo "-- checks" >&2
for t in $targets; do
  arch=${t%%-*}
  whl=""
  for w in "$out"/cryptotensors-*-cp39-abi3-*manylinux_2_17_"$arch"*.whl; do [ -f "$w" ] && whl=$w; done
  [ -n "$whl" ] || { echo "no manylinux2014 abi3 wheel for $arch in $out" >&2; exit 1; }
  report=$(auditwheel show "$whl")
  grep -q "consistent with the following platform tag:" <<<"$report" \
    && grep -q "\"manylinux_2_17_$arch\"" <<<"$report" \
    || { printf '%s\n' "$report" >&2; echo "$whl: auditwheel does not confirm manylinux_2_17_$arch" >&2; exit 1; }
  tmp=$(mktemp -d)
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("cryptotensors/_core.abi3.so", sys.argv[2])' "$whl" "$tmp"
  needed=$(readelf -d "$tmp/cryptotensors/_core.abi3.so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  rm -rf "$tmp"
  for lib in $needed; do
    case $lib in
      libc.so.6|libpthread.so.0|libdl.so.2|libm.so.6|librt.so.1|libgcc_s.so.1|ld-linux-*.so.*) ;;
      *) echo "$whl links $lib, outside the manylinux2014 set" >&2; exit 1 ;;
    esac
  done
  python3 - "$whl" "$arch" <<'PY'
import struct, sys, zipfile
whl, arch = sys.argv[1], sys.argv[2]
want = {"x86_64": 62, "aarch64": 183}[arch]  # ELF e_machine
with zipfile.ZipFile(whl) as z:
    sos = [n for n in z.namelist() if n.endswith(".so")]
    assert sos == ["cryptotensors/_core.abi3.so"], sos
    elf = z.read(sos[0])[:20]
assert elf[:4] == b"\x7fELF" and elf[4] == 2, "not a 64-bit ELF"
machine = struct.unpack("<H", elf[18:20])[0]
assert machine == want, f"{whl}: e_machine {machine}, expected {want} ({arch})"
print(f"{whl.rsplit('/', 1)[-1]}: {arch} ELF, {len(open(whl, 'rb').read()) / 2**20:.1f} MiB")
PY
done
ls "$out"/cryptotensors-*.tar.gz >/dev/null
ls -l "$out" >&2
