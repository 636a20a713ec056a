"""Re-open cost in transparent mode: accelerate's offloaded-weights loader
opens the file once per tensor (`with safe_open(...) as f: f.get_tensor(name)`),
so the cost of an open is paid once per tensor, not once per file.

Compares, on the same tensors:

    safetensors       safetensors 0.8 on the plain file
    ours              cryptotensors on the plain file, through the patched safetensors.safe_open
    ours-enc          an encrypted file (X25519 recipient), keys from CRYPTOTENSORS_KEYS (a path)
    ours-enc-signed   the same, signed (Ed25519), CRYPTOTENSORS_TRUSTED_SIGNERS set (a path)

and reports, per variant: the first open in the process (an encrypted file
unwraps its key and verifies the header MAC and the signature), later opens
(open + close, nothing read), and the time per tensor of accelerate's pattern
(open + get_tensor + close, data touched; decrypting an encrypted tensor is
part of it). Variants are interleaved run by run, so load from other processes
spreads over all of them; the minimum and the median over runs are shown and
the ratios use the minimum. The goal for later opens of an encrypted file is
at most 2x a plain one.

    "$(bash .ci/venv.sh)/bin/python" benches/bench_reopen.py [--tensors 64] [--kib 256] [--opens 200] [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import safetensors
import safetensors.torch
import torch

import cryptotensors
import cryptotensors.torch
from cryptotensors import _patch

VARIANTS = ["safetensors", "ours", "ours-enc", "ours-enc-signed"]
ENV = ("CRYPTOTENSORS_KEYS", "CRYPTOTENSORS_TRUSTED_SIGNERS")


def _tensors(n: int, kib: int) -> dict:
    g = torch.Generator().manual_seed(0)
    rows = max(1, kib * 1024 // (2 * 256))
    return {f"model.layers.{i // 8}.w{i % 8}.weight": torch.randn(rows, 256, generator=g).to(torch.bfloat16) for i in range(n)}


def _open_close(cls, path: str, opens: int) -> float:
    """Mean ns of one open + close (nothing read)."""
    t0 = time.perf_counter_ns()
    for _ in range(opens):
        f = cls(path, framework="pt", device="cpu")
        f.__exit__(None, None, None)
    return (time.perf_counter_ns() - t0) / opens


def _per_tensor(cls, path: str, names) -> float:
    """Mean ns per tensor of accelerate's OffloadedWeightsLoader pattern: one
    `with safe_open(...) as f: f.get_tensor(name)` per tensor, data touched."""
    t0 = time.perf_counter_ns()
    for n in names:
        with cls(path, framework="pt", device="cpu") as f:
            t = f.get_tensor(n)
        t.view(-1)[::2048].sum()  # touch the data (a lazy view of a plain file too)
    return (time.perf_counter_ns() - t0) / len(names)


def _accelerate_check(path: str, tensors) -> None:
    """accelerate's own loader, patched, reads the same values (not timed)."""
    try:
        from accelerate.utils.offload import OffloadedWeightsLoader
    except ImportError:
        return
    loader = OffloadedWeightsLoader(index={n: {"safetensors_file": path, "weight_name": n} for n in tensors})
    for n, t in tensors.items():
        assert torch.equal(loader[n], t), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, default=64, help="tensors in the file (default 64)")
    ap.add_argument("--kib", type=int, default=256, help="KiB per tensor (default 256)")
    ap.add_argument("--opens", type=int, default=200, help="opens per run for the re-open timing (default 200)")
    ap.add_argument("--runs", type=int, default=15, help="runs (default 15)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    if _patch.is_patched():
        sys.exit("run without CRYPTOTENSORS_PATCH: the benchmark patches and unpatches itself")
    for name in ENV:
        os.environ.pop(name, None)
    tensors = _tensors(args.tensors, args.kib)
    names = list(tensors)
    classes = {"stock": safetensors.safe_open}  # in a dict: patch() rebinds module-level names
    first, reopen, per_tensor = {}, {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-reopen-") as tmp:
        customer = cryptotensors.generate_key("X25519")
        publisher = cryptotensors.generate_key("Ed25519")
        keys, signers = os.path.join(tmp, "keys.jwks"), os.path.join(tmp, "signers.jwks")
        with open(keys, "w") as fh:
            json.dump({"keys": [customer]}, fh)
        with open(signers, "w") as fh:
            json.dump({"keys": [cryptotensors.public_key(publisher)]}, fh)
        plain, enc, signed = (os.path.join(tmp, f"{n}.safetensors") for n in ("plain", "enc", "signed"))
        safetensors.torch.save_file(tensors, plain, metadata={"format": "pt"})
        recipient = [cryptotensors.public_key(customer)]
        cryptotensors.torch.save_file(tensors, enc, metadata={"format": "pt"}, encrypt_for=recipient)
        cryptotensors.torch.save_file(tensors, signed, metadata={"format": "pt"}, encrypt_for=recipient, sign_with=publisher)
        for p in (plain, enc, signed):  # warm page cache
            with open(p, "rb") as fh:
                while fh.read(1 << 24):
                    pass

        cryptotensors.patch()
        classes["patched"] = safetensors.safe_open
        setups = {  # variant -> (class, file, environment)
            "safetensors": (classes["stock"], plain, {}),
            "ours": (classes["patched"], plain, {}),
            "ours-enc": (classes["patched"], enc, {"CRYPTOTENSORS_KEYS": keys}),
            "ours-enc-signed": (classes["patched"], signed, {"CRYPTOTENSORS_KEYS": keys, "CRYPTOTENSORS_TRUSTED_SIGNERS": signers}),
        }
        try:
            for run in range(args.runs + 1):
                for v, (cls, path, env) in setups.items():
                    for name in ENV:
                        os.environ.pop(name, None)
                    os.environ.update(env)
                    if run == 0:
                        first[v] = _open_close(cls, path, 1)
                        if v != "safetensors":
                            _accelerate_check(path, tensors)
                        continue
                    reopen[v].append(_open_close(cls, path, args.opens))
                    per_tensor[v].append(_per_tensor(cls, path, names))
        finally:
            cryptotensors.unpatch()
            for name in ENV:
                os.environ.pop(name, None)

    results = {
        v: {
            "first_open_us": first[v] / 1e3,
            "reopen_us_min": min(reopen[v]) / 1e3, "reopen_us_median": statistics.median(reopen[v]) / 1e3,
            "per_tensor_us_min": min(per_tensor[v]) / 1e3, "per_tensor_us_median": statistics.median(per_tensor[v]) / 1e3,
        }
        for v in VARIANTS
    }
    ratios = {
        f"{v}/{base}": {
            "reopen": results[v]["reopen_us_min"] / results[base]["reopen_us_min"],
            "per_tensor": results[v]["per_tensor_us_min"] / results[base]["per_tensor_us_min"],
        }
        for v in ("ours-enc", "ours-enc-signed")
        for base in ("safetensors", "ours")
    }
    info = {
        "tensors": args.tensors, "kib_per_tensor": args.kib, "opens": args.opens, "runs": args.runs,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "machine": platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "safetensors": safetensors.__version__,
        "open_cache": os.environ.get("CRYPTOTENSORS_OPEN_CACHE", "1"),
    }
    if args.json:
        print(json.dumps({"info": info, "results": results, "ratios": ratios}, indent=1))
        return
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"{'variant':<17}{'first open':>11}{'later opens (min / median)':>30}{'per tensor (min / median)':>29}   [µs]")
    for v in VARIANTS:
        r = results[v]
        print(
            f"{v:<17}{r['first_open_us']:>11.1f}{r['reopen_us_min']:>19.1f} / {r['reopen_us_median']:<8.1f}"
            f"{r['per_tensor_us_min']:>18.1f} / {r['per_tensor_us_median']:<8.1f}"
        )
    print()
    print(f"{'ratio (minimum)':<28}{'later opens':>12}{'per tensor':>12}")
    for k, r in ratios.items():
        flag = "" if r["reopen"] <= 2 else "   (later opens > 2x)"
        print(f"{k:<28}{r['reopen']:>11.2f}x{r['per_tensor']:>11.2f}x{flag}")


if __name__ == "__main__":
    main()
