"""Thread scaling of ours' encryption and decryption: 1 vs 2 (vs N) threads,
set with num_threads= (what CRYPTOTENSORS_NUM_THREADS sets by default).

One process; the thread counts are interleaved run by run so that load from
other processes spreads over all of them. Encrypted save and encrypted
load_file (every tensor decrypted into fresh memory, one byte per 4 KiB page
touched), numpy and torch, on the Llama-shaped set of llama_layout.py. The
plain load with backend="pread" (plain bytes read into fresh memory) is shown
alongside as the baseline of the encrypted-load goal. Medians of wall, user
and system CPU seconds (all threads); system time is mostly page faults of
the fresh output memory (and, for saves, the page cache).

    "$(bash .ci/venv.sh)/bin/python" benches/bench_threads.py [--size-gib 1] [--dtype f32] [--runs 5] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_layout

import cryptotensors
import cryptotensors.numpy
import cryptotensors.torch


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _touch(tensors: dict) -> None:
    for t in tensors.values():
        b = t if isinstance(t, np.ndarray) else t.reshape(-1).view(dtype=__import__("torch").uint8).numpy()
        int(b.reshape(-1).view(np.uint8)[::4096].sum())


def _timed(fn) -> tuple[float, float, float]:
    """(wall, user, system) seconds."""
    gc.collect()
    c0, t0 = _cpu(), time.perf_counter()
    out = fn()
    t1, c1 = time.perf_counter(), _cpu()
    del out
    return t1 - t0, c1[0] - c0[0], c1[1] - c0[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--dtype", choices=sorted(llama_layout.DTYPES), default="f32")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}", help="comma-separated thread counts")
    ap.add_argument("--frameworks", default="numpy,torch")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    threads = [int(x) for x in args.threads.split(",")]
    cfg = llama_layout.choose_config(args.size_gib, args.dtype)
    payload = llama_layout.payload_bytes(cfg, args.dtype)
    print(llama_layout.describe(cfg, args.dtype), flush=True)
    key = cryptotensors.generate_key("oct")
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-", dir=args.workdir) as tmp:
        for fw in args.frameworks.split(","):
            mod = cryptotensors.torch if fw == "torch" else cryptotensors.numpy
            make = llama_layout.make_torch if fw == "torch" else llama_layout.make_numpy
            tensors = make(cfg, args.dtype)
            enc, plain = os.path.join(tmp, f"enc-{fw}"), os.path.join(tmp, f"plain-{fw}")
            mod.save_file(tensors, plain)
            mod.save_file(tensors, enc, encrypt_for=[key])
            for p in (enc, plain):
                with open(p, "rb") as fh:
                    while fh.read(1 << 24):
                        pass

            def load(path, mod=mod, **kw):
                out = mod.load_file(path, **kw)
                _touch(out)
                return out

            # Loads first, then saves (each group interleaved by thread count):
            # a save just before a load leaves the page cache and free memory
            # in a different state than a load before a load.
            loads = {(fw, "enc load_file", n): (lambda n=n, p=enc: load(p, keys=key, num_threads=n)) for n in threads}
            loads[(fw, "plain load_file pread", 0)] = lambda p=plain: load(p, backend="pread")
            out = os.path.join(tmp, "s")
            saves = {
                (fw, "enc save", n): (
                    lambda n=n, m=mod, t=tensors, o=out: m.save_file(t, o, encrypt_for=[key], num_threads=n)
                )
                for n in threads
            }
            for cases in (loads, saves):
                for run in range(args.runs):
                    order = list(cases.items())
                    for k, fn in order if run % 2 == 0 else order[::-1]:  # ABC CBA ...
                        os.sync()
                        res.setdefault(k, []).append(_timed(fn))
            del tensors, loads, saves, cases
            print(f"{fw}: done", file=sys.stderr, flush=True)
    print(
        f"{os.cpu_count()} cpus, load average {os.getloadavg()}, median of {args.runs} interleaved runs (order reversed every other run)"
    )
    hdr = f"{'fw':<6} {'op':<22} {'threads':>7} {'wall s':>7} {'best s':>7} {'user s':>6} {'sys s':>6} {'GB/s':>6} {'speedup vs 1':>13}"
    print(hdr)
    print("-" * len(hdr))
    for (fw, op, n), v in res.items():
        w = statistics.median(x[0] for x in v)
        best = min(x[0] for x in v)
        u = statistics.median(x[1] for x in v)
        sy = statistics.median(x[2] for x in v)
        one = res.get((fw, op, 1))
        sp = f"{statistics.median(x[0] for x in one) / w:.2f}" if one and n else ""
        print(
            f"{fw:<6} {op:<22} {n or '':>7} {w:>7.3f} {best:>7.3f} {u:>6.2f} {sy:>6.2f} {payload / 1e9 / w:>6.2f} {sp:>13}"
        )


if __name__ == "__main__":
    main()
