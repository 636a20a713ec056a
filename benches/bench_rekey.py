"""Rekey time against a plain save of the same tensors (goal: a rekey takes
at most 1.3x a plain save). In one process, run by run interleaved
(safetensors save, our plain save, rekey, ...), median of --runs:

- safetensors.torch.save_file of the tensors;
- cryptotensors.torch.save_file of them, plain;
- cryptotensors.torch.save_file of them, encrypted (for reference: the
  sealing half of a rekey);
- cryptotensors.rekey of an encrypted file of them, in place: every segment
  read, decrypted and verified under the old key, sealed under a new one,
  written to a temporary file renamed over the old.

The encrypted file is in the page cache, as a file just saved is; os.sync()
runs between measurements so one run's writeback does not land on the next.

    python benches/bench_rekey.py [--size-mib 512] [--tensors 8] [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

import safetensors.torch
import torch

import cryptotensors as ct
import cryptotensors.torch as ctt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--tensors", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    n = args.size_mib * (1 << 20) // 4 // args.tensors
    gen = torch.Generator().manual_seed(0)
    tensors = {f"layer.{i}.weight": torch.randn(n, generator=gen, dtype=torch.float32) for i in range(args.tensors)}
    key = ct.generate_key("oct")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-rekey-")
    os.makedirs(workdir, exist_ok=True)
    paths = {v: os.path.join(workdir, f"{v}.safetensors") for v in ("safetensors", "ours-plain", "ours-enc", "rekey")}
    ctt.save_file(tensors, paths["rekey"], encrypt_for=key)

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def run(variant: str) -> float:
        os.sync()
        c0, start = cpu(), time.perf_counter()
        if variant == "safetensors":
            safetensors.torch.save_file(tensors, paths[variant])
        elif variant == "ours-plain":
            ctt.save_file(tensors, paths[variant])
        elif variant == "ours-enc":
            ctt.save_file(tensors, paths[variant], encrypt_for=key)
        else:
            ct.rekey(paths[variant], keys=key)
        wall = time.perf_counter() - start
        cpus[variant].append(cpu() - c0)
        return wall

    times: dict = {v: [] for v in paths}
    cpus: dict = {v: [] for v in paths}
    for _ in range(args.runs):
        for v in paths:
            times[v].append(run(v))
    loaded = ctt.load_file(paths["rekey"], keys=key)
    assert all(torch.equal(loaded[k], t) for k, t in tensors.items()), "the rekeyed file reads back"
    med = {v: statistics.median(t) for v, t in times.items()}
    print(f"{args.size_mib} MiB f32 in {args.tensors} tensors, median of {args.runs}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for v, t in times.items():
        print(f"  {v:12s} median {med[v]:.3f} s  min {min(t):.3f} s  CPU {statistics.median(cpus[v]):.3f} s  "
              f"({', '.join(f'{x:.3f}' for x in t)})  {args.size_mib / 1024 / med[v]:.2f} GiB/s")
    print(f"  rekey / safetensors save: {med['rekey'] / med['safetensors']:.2f}  (goal <= 1.3)")
    print(f"  rekey / our plain save:   {med['rekey'] / med['ours-plain']:.2f}  (goal <= 1.3)")
    print(f"  the same, of the fastest runs: {min(times['rekey']) / min(times['safetensors']):.2f} / "
          f"{min(times['rekey']) / min(times['ours-plain']):.2f}")
    for p in paths.values():
        os.remove(p)
    if not args.workdir:
        os.rmdir(workdir)


if __name__ == "__main__":
    main()
