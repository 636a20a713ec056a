"""A/B of plain save and load, ours vs safetensors 0.8, interleaved in one
process (goal: ours within 1.05x of safetensors). bench.py runs every
measurement in a fresh process, which is cleaner for peak memory but, on a
shared machine, lets load from other processes land on one variant's runs;
here the two alternate run by run (ABAB...), so the ratio of medians is less
sensitive to it. Saves write to the same directory; os.sync() between runs.

    "$(bash .ci/venv.sh)/bin/python" benches/bench_plain_ab.py [--size-gib 1] [--dtype bf16] [--runs 9]
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
import safetensors.numpy
import safetensors.torch

import cryptotensors.numpy
import cryptotensors.torch


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _touch(tensors: dict) -> None:
    import torch

    for t in tensors.values():
        b = t.reshape(-1).view(np.uint8) if isinstance(t, np.ndarray) else t.reshape(-1).view(torch.uint8).numpy()
        int(b[::4096].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--dtype", choices=sorted(llama_layout.DTYPES), default="bf16")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    cfg = llama_layout.choose_config(args.size_gib, args.dtype)
    payload = llama_layout.payload_bytes(cfg, args.dtype)
    print(llama_layout.describe(cfg, args.dtype), flush=True)
    impls = {
        "safetensors": {"numpy": safetensors.numpy, "torch": safetensors.torch},
        "ours": {"numpy": cryptotensors.numpy, "torch": cryptotensors.torch},
    }
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-ab-", dir=args.workdir) as tmp:
        for fw in ("numpy", "torch"):
            make = llama_layout.make_torch if fw == "torch" else llama_layout.make_numpy
            tensors = make(cfg, args.dtype)
            paths = {impl: os.path.join(tmp, f"{impl}-{fw}") for impl in impls}
            for op in ("save", "load_file"):
                for run in range(args.runs):
                    order = list(impls) if run % 2 == 0 else list(impls)[::-1]
                    for impl in order:
                        mod, path = impls[impl][fw], paths[impl]
                        if op == "save" and os.path.exists(path):
                            os.unlink(path)
                        os.sync()
                        gc.collect()
                        c0, t0 = _cpu(), time.perf_counter()
                        if op == "save":
                            mod.save_file(tensors, path)
                        else:
                            out = mod.load_file(path)
                            _touch(out)
                        t1, c1 = time.perf_counter(), _cpu()
                        if op != "save":
                            del out
                        res.setdefault((fw, op, impl), []).append((t1 - t0, c1 - c0))
            del tensors
    print(
        f"{os.cpu_count()} cpus, load average now {tuple(round(x, 2) for x in os.getloadavg())}, median of {args.runs} alternating runs"
    )
    hdr = f"{'fw':<6} {'op':<10} {'impl':<12} {'wall s':>7} {'best s':>7} {'cpu s':>6} {'GB/s':>6}  {'ours/st wall (median, best)':<28} {'cpu':>5}"
    print(hdr)
    print("-" * len(hdr))
    for (fw, op, impl), v in res.items():
        w, b, c = statistics.median(x[0] for x in v), min(x[0] for x in v), statistics.median(x[1] for x in v)
        extra = ""
        if impl == "ours":
            st = res[(fw, op, "safetensors")]
            sw, sb, sc = statistics.median(x[0] for x in st), min(x[0] for x in st), statistics.median(x[1] for x in st)
            extra = f"{w / sw:>6.2f}, {b / sb:>5.2f}{'':<15} {c / sc:>5.2f}"
        print(f"{fw:<6} {op:<10} {impl:<12} {w:>7.3f} {b:>7.3f} {c:>6.2f} {payload / 1e9 / w:>6.2f}  {extra}")


if __name__ == "__main__":
    main()
