"""One-shot GPU benchmark: encrypted loads straight to a CUDA device, against
stock safetensors' plain loads and against the ceiling, a plain pinned
host-to-device copy, all measured in one run.

Needs only torch with CUDA and the cryptotensors wheel (stock safetensors is
used when it is installed; without it the plain baseline is our own plain
load, and the script says so). Runs in well under 5 minutes on one GPU:

    python benches/gpu.py                      # 1 GiB of bf16, 3 runs
    python benches/gpu.py --size-mib 4096 --runs 5

What it measures, per thread count (1 and all cores; each thread count runs
in a child process, since the decryption pool is sized per process):

* ceiling: the same bytes from pinned host memory to the device, one
  `copy_(non_blocking=True)` per tensor, then a synchronize;
* load_file: `load_file(path, device="cuda:0")`, plain (stock) and encrypted;
* safe_open loop: `safe_open(path, "pt", device="cuda:0")` and one
  `get_tensor` per name, as vLLM and transformers iterate, plain and
  encrypted.

Each time ends with `torch.cuda.synchronize()`, so queued copies are counted.
The file is read once before timing (warm page cache), as a serving host that
loads a model it just downloaded. Ratios are throughput ratios (higher is
better): encrypted/plain and encrypted/ceiling. Medians of --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tensors(size_mib: int):
    """Llama-shaped bf16 tensors of about size_mib MiB in all (deterministic)."""
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = 2048
    out, total, i = {}, 0, 0
    while total < size_mib << 20:
        for name, shape in ((f"l{i}.q", (hidden, hidden)), (f"l{i}.mlp", (4 * hidden, hidden)), (f"l{i}.norm", (hidden,))):
            t = torch.randn(shape, generator=g, dtype=torch.float32).to(torch.bfloat16)
            out[name] = t
            total += t.numel() * 2
        i += 1
    return out, total


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        _sync()
        t0 = time.perf_counter()
        result = fn()
        _sync()
        times.append(time.perf_counter() - t0)
        del result
    return statistics.median(times)


def child(args) -> None:
    """Runs every measurement in this process and prints one JSON line."""
    import torch

    import cryptotensors
    import cryptotensors.torch as ctt

    try:
        import safetensors.torch as stt
        from safetensors import safe_open as st_open

        baseline = f"safetensors {__import__('safetensors').__version__}"
    except ImportError:
        stt, st_open, baseline = ctt, cryptotensors.safe_open, "cryptotensors plain (safetensors not installed)"

    plain, enc, key = Path(args.plain), Path(args.enc), json.loads(Path(args.key).read_text())
    dev = args.device
    for p in (plain, enc):
        p.read_bytes()  # warm page cache

    host = {k: v.pin_memory() if dev != "cpu" else v.clone() for k, v in stt.load_file(str(plain)).items()}

    def ceiling():
        out = {k: torch.empty_like(v, device=dev) for k, v in host.items()}
        for k, v in host.items():
            out[k].copy_(v, non_blocking=True)
        return out

    def loop(opener, path, **kw):
        def run():
            with opener(str(path), framework="pt", device=dev, **kw) as f:
                return {k: f.get_tensor(k) for k in f.keys()}

        return run

    # Correctness before speed: the encrypted load gives the plain tensors.
    got = ctt.load_file(enc, device=dev, keys=key)
    for k, v in host.items():
        assert torch.equal(got[k].cpu(), v.cpu()), k
    del got

    times = {
        "ceiling": _timed(ceiling, args.runs),
        "load_file plain": _timed(lambda: stt.load_file(str(plain), device=dev), args.runs),
        "load_file enc": _timed(lambda: ctt.load_file(enc, device=dev, keys=key), args.runs),
        "safe_open loop plain": _timed(loop(st_open, plain), args.runs),
        "safe_open loop enc": _timed(loop(cryptotensors.safe_open, enc, keys=key), args.runs),
    }
    print(json.dumps({"baseline": baseline, "times": times, "gpu": torch.cuda.get_device_name(0) if dev != "cpu" else "cpu (dry run)"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cuda:0", help='"cpu" only checks that the script runs (no GPU figures)')
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    ap.add_argument("--enc", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    import cryptotensors
    import cryptotensors.torch as ctt

    if args.device != "cpu" and not torch.cuda.is_available():
        sys.exit("benches/gpu.py needs a CUDA device (or --device cpu for a dry run)")
    with tempfile.TemporaryDirectory() as tmp:
        tensors, total = _tensors(args.size_mib)
        key = cryptotensors.generate_key("oct")
        plain, enc, keyfile = Path(tmp, "plain.safetensors"), Path(tmp, "enc.safetensors"), Path(tmp, "key.json")
        ctt.save_file(tensors, plain)
        ctt.save_file(tensors, enc, encrypt_for=key)
        keyfile.write_text(json.dumps(key))
        count = len(tensors)
        del tensors
        gib = total / (1 << 30)
        print(f"{count} tensors, {gib:.2f} GiB bf16, medians of {args.runs} runs, {os.cpu_count()} CPUs")
        for threads in (1, os.cpu_count() or 1):
            env = dict(os.environ, CRYPTOTENSORS_NUM_THREADS=str(threads))
            cmd = [sys.executable, __file__, "--child", "--runs", str(args.runs), "--device", args.device,
                   "--plain", str(plain), "--enc", str(enc), "--key", str(keyfile)]
            res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            t = res["times"]
            print(f"\n{threads} decryption thread(s) on {res['gpu']}; plain baseline: {res['baseline']}")
            for name, secs in t.items():
                print(f"  {name:<22} {secs * 1e3:8.1f} ms  {gib / secs:6.2f} GiB/s")
            for op in ("load_file", "safe_open loop"):
                e, p = t[f"{op} enc"], t[f"{op} plain"]
                print(f"  {op:<16} encrypted/plain {p / e:5.2f}   encrypted/ceiling {t['ceiling'] / e:5.2f}   plain/ceiling {t['ceiling'] / p:5.2f}")


if __name__ == "__main__":
    main()
