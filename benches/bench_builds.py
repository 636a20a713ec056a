"""A/B of two builds of cryptotensors: the same saves and loads, run by an
old build and a new one, interleaved run by run (old, new, old, new...) in
fresh processes (benches/_worker.py), with the ratio new/old printed for
each. It answers "is this change slower?" in one run on one machine, where
comparing against figures measured on another day would compare the days.

Each build runs under its own interpreter: a venv where that build's wheel is
installed (over the test venv's torch and numpy). Install both from wheels:
an editable install (`maturin develop`) under PYTHONDONTWRITEBYTECODE
compiles the package's sources at every import, which lands in the first
timed call (about 1.5 ms here) and reads as a slower load. For example, the commit
before the boundary redesign against this checkout:

    git worktree add --detach /tmp/old b705e9f
    (cd /tmp/old && maturin build --release -o /tmp/old/wheel)
    python -m venv --system-site-packages /tmp/old-venv   # from the test venv
    /tmp/old-venv/bin/pip install --no-deps /tmp/old/wheel/*.whl
    python benches/bench_builds.py --old-python /tmp/old-venv/bin/python

Workloads (each build writes and reads its own files): save, load_file and
safe_open (open + get_tensor of every tensor), plain and encrypted, for numpy
and torch, on the Llama-shaped checkpoint of llama_layout.py; and many small
tensors through one safe_open (the per-call cost of the boundary). Loads run
on a warm page cache. Reported: the median and the minimum of --runs runs of
each build, and new/old of both (below 1: the new build is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_layout  # noqa: E402
from bench import WorkerError, call_worker, warm  # noqa: E402

OPS = ("save", "load_file", "safe_open")

# Many small tensors through one handle: what a call through the binding costs.
_SMALL = r"""
import json, sys, time
import numpy as np
import cryptotensors, cryptotensors.numpy
path, n, key = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
kw = {"keys": key} if key else {}
if sys.argv[4] == "save":
    t = {f"t{i:05d}": np.full((16,), i, np.float32) for i in range(n)}
    cryptotensors.numpy.save_file(t, path, **({"encrypt_for": [key]} if key else {}))
    sys.exit(0)
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    with cryptotensors.safe_open(path, "np", **kw) as f:
        for name in f.keys():
            f.get_tensor(name)
    best = min(best, time.perf_counter() - t0)
print("RESULT", json.dumps({"wall": best}))
"""


def _small(python: str, path: str, n: int, key, what: str) -> float:
    import json

    cmd = [python, "-c", _SMALL, path, str(n), json.dumps(key), what]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise WorkerError(f"exit code {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])["wall"]
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-python", required=True, help="interpreter with the old build")
    ap.add_argument("--new-python", default=sys.executable, help="interpreter with the new build (default: this one)")
    ap.add_argument("--size-gib", type=float, default=0.5)
    ap.add_argument("--dtype", choices=sorted(llama_layout.DTYPES), default="bf16")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--frameworks", default="numpy,torch")
    ap.add_argument("--small", type=int, default=2000, help="tensors in the small-tensor workload (0: skip)")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    builds = {"old": args.old_python, "new": args.new_python}
    fws = [f for f in args.frameworks.split(",") if f]

    with tempfile.TemporaryDirectory(prefix="bench-builds-") as work:
        keys, versions = {}, {}
        for b, py in builds.items():
            res = call_worker(py, False, {"impl": "ours", "op": "probe", "path": os.path.join(work, f"probe-{b}"),
                                          "frameworks": fws}, args.timeout)
            if "unavailable" in res:
                raise SystemExit(f"{b} ({py}): {res['unavailable']}")
            keys[b], versions[b] = res.get("keys"), res.get("version")
            where = subprocess.run([py, "-c", "import cryptotensors; print(cryptotensors.__file__)"],
                                   capture_output=True, text=True).stdout.strip()
            print(f"# {b}: {py} -> {where} ({versions[b]})", flush=True)

        rows = []
        for fw in fws:
            for enc in (False, True):
                samples = {(b, op): [] for b in builds for op in OPS}
                for i in range(args.runs):
                    for b, py in builds.items():
                        path = os.path.join(work, f"{b}-{fw}-{int(enc)}.safetensors")
                        for op in OPS:
                            if op != "save":
                                warm(path)
                            os.sync()
                            req = {"impl": "ours", "keys": keys[b], "op": op, "framework": fw, "enc": enc,
                                   "path": path, "size_gib": args.size_gib, "dtype": args.dtype, "touch": "page"}
                            res = call_worker(py, False, req, args.timeout)
                            samples[(b, op)].append(res["seconds"])
                    print(f"# {fw} enc={enc} run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
                for op in OPS:
                    rows.append((f"{fw} {'encrypted' if enc else 'plain'} {op}", samples[("old", op)],
                                 samples[("new", op)]))
                for b in builds:
                    os.unlink(os.path.join(work, f"{b}-{fw}-{int(enc)}.safetensors"))

        if args.small:
            for enc in (False, True):
                s = {b: [] for b in builds}
                for b, py in builds.items():
                    _small(py, os.path.join(work, f"small-{b}.safetensors"), args.small, keys[b] if enc else None,
                           "save")
                for _ in range(args.runs):
                    for b, py in builds.items():
                        s[b].append(_small(py, os.path.join(work, f"small-{b}.safetensors"), args.small,
                                           keys[b] if enc else None, "load"))
                rows.append((f"{args.small} small tensors, {'encrypted' if enc else 'plain'}, open+get_tensor",
                             s["old"], s["new"]))

    print(f"\n{args.size_gib} GiB {args.dtype}, {args.runs} runs each, interleaved; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'workload':<52} {'old med':>9} {'new med':>9} {'new/old':>8} {'old min':>9} {'new min':>9} {'new/old':>8}")
    for name, old, new in rows:
        om, nm, oi, ni = statistics.median(old), statistics.median(new), min(old), min(new)
        print(f"{name:<52} {om:>9.4f} {nm:>9.4f} {nm / om:>8.3f} {oi:>9.4f} {ni:>9.4f} {ni / oi:>8.3f}")


if __name__ == "__main__":
    main()
