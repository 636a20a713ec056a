"""Two builds of the extension, side by side in one run: encrypted save and
encrypted load_file of the same data through each wheel, runs interleaved
(ABAB...) in fresh processes, medians and the ratio B/A printed. For
checking that the zig-built manylinux2014 wheel is as fast as the host-built
one (issue: wheels for every platform).

    python benches/bench_wheels.py A.whl B.whl [--size-mib 512] [--runs 5]

Each wheel is unpacked into a temporary directory that goes first on the
child's sys.path, so the two never share an installed copy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile

CHILD = r"""
import json, os, sys, time
import numpy as np
import cryptotensors, cryptotensors.numpy as n
assert cryptotensors.__file__.startswith(sys.argv[1]), cryptotensors.__file__
size, path = int(sys.argv[2]), sys.argv[3]
key = cryptotensors.generate_key("oct")
rng = np.random.default_rng(0)
data = {f"layer{i}.weight": rng.standard_normal(size // 16 // 4, dtype=np.float32) for i in range(16)}
t = time.perf_counter(); n.save_file(data, path, encrypt_for=key); save = time.perf_counter() - t
t = time.perf_counter(); back = n.load_file(path, keys=key); load = time.perf_counter() - t
assert all(np.array_equal(back[k], v) for k, v in data.items())
os.unlink(path)
print(json.dumps({"save": save, "load": load}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheels", nargs=2)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for i, whl in enumerate(args.wheels):
            d = os.path.join(tmp, f"w{i}")
            zipfile.ZipFile(whl).extractall(d)
            dirs.append(d)
        times = {d: {"save": [], "load": []} for d in dirs}
        for _ in range(args.runs):
            for d in dirs:
                env = dict(os.environ, PYTHONPATH=d, CRYPTOTENSORS_PATCH="")
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, d, str(args.size_mib << 20), os.path.join(tmp, "f.safetensors")],
                    env=env, check=True, capture_output=True, text=True,
                ).stdout
                for k, v in json.loads(out).items():
                    times[d][k].append(v)
        gib = args.size_mib / 1024
        print(f"{args.size_mib} MiB float32, encrypted (AES-256-GCM), median of {args.runs} interleaved runs")
        for op in ("save", "load"):
            a, b = (statistics.median(times[d][op]) for d in dirs)
            print(f"  {op:5s} A {gib / a:5.2f} GiB/s   B {gib / b:5.2f} GiB/s   B/A throughput {a / b:.2f}")
        for i, whl in enumerate(args.wheels):
            print(f"  {'AB'[i]} = {os.path.basename(whl)} ({os.path.getsize(whl) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
