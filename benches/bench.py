"""Side-by-side save/load benchmark: safetensors vs cryptotensors (ours, plain
and encrypted) vs the reference cryptotensors 0.2.3 (encrypted).

Every measurement runs in a fresh process (benches/_worker.py), so each peak
RSS belongs to one measurement; the median of --runs runs is reported. Loads
run with a warm page cache (the file is read once before them). The data is a
deterministic Llama-shaped checkpoint from llama_layout.py.

Run with the test venv's python (it has safetensors 0.8 and, once built, our
cryptotensors); the reference runs under its own venv, made by
benches/setup_reference_venv.sh:

    bash benches/setup_reference_venv.sh
    "$(bash .ci/venv.sh)/bin/python" benches/bench.py --size-gib 1 --dtype bf16

Variants: safetensors, ours, ours-pread (ours plain with backend="pread":
loads into fresh memory instead of torch's zero-copy views of the file map;
load ops only), ours-enc, ref-enc (and ref, the reference without encryption,
only when named in --only). Decryption/encryption threads of ours follow
CRYPTOTENSORS_NUM_THREADS, which the workers inherit (unset: all cores). Ops: save, load_file,
safe_open (open + get_tensor loop), slice (first 1/8 of the rows of the
largest tensor vs all of it, each through a fresh handle).

GB/s is payload bytes (1e9) per second. Load times include touching one byte
per 4 KiB page of every returned tensor (--touch full reads every byte), so a
lazily mmapped result and a decrypted copy are both materialised. "cpu s" is
the user + system CPU time of the operation over all threads (less sensitive
than wall time to other load on the machine). "peak" is the process's VmHWM
during the operation alone; "+MiB" is peak minus the RSS just before it (for
save: memory used beyond the tensors being saved).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_layout

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_worker.py")
REF_VENV = os.environ.get(
    "CRYPTOTENSORS_REF_VENV",
    os.path.expanduser("~/.cache/cryptotensors-bench/ref-venv"),
)

# name -> (implementation, encrypted)
VARIANTS = {
    "safetensors": ("safetensors", False),
    "ours": ("ours", False),
    "ours-enc": ("ours", True),
    "ours-pread": ("ours", False),
    "ref": ("ref", False),
    "ref-enc": ("ref", True),
}
# Extra request fields per variant. ours-pread: plain loads with
# backend="pread", i.e. our plain load materialised into fresh memory (torch's
# default "mmap" backend returns views of the file map; numpy's copies either
# way). It is the baseline of the encrypted-load goal; load ops only.
VARIANT_OPTS = {"ours-pread": {"backend": "pread"}}
LOAD_ONLY = {"ours-pread"}
DEFAULT_VARIANTS = ["safetensors", "ours", "ours-pread", "ours-enc", "ref-enc"]
FRAMEWORKS = ["numpy", "torch"]
OPS = ["save", "load_file", "safe_open", "slice"]
ALIASES = {"load": ["load_file", "safe_open"], "reference": ["ref-enc"]}
MIB = 1 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class WorkerError(Exception):
    pass


def call_worker(python: str, isolated: bool, req: dict, timeout: float) -> dict:
    cmd = [python, *(["-I"] if isolated else []), WORKER]
    try:
        proc = subprocess.run(
            cmd,
            input=json.dumps(req),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=os.path.dirname(req["path"]),
        )
    except subprocess.TimeoutExpired as e:
        raise WorkerError(f"timed out after {timeout:.0f}s") from e
    except OSError as e:
        raise WorkerError(f"cannot run {python}: {e}") from e
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
    raise WorkerError(f"exit code {proc.returncode}:\n{tail}")


def parse_only(spec: str | None, skip_reference: bool):
    variants, fws, ops = [], [], []
    if spec:
        for tok in (t.strip() for t in spec.split(",") if t.strip()):
            for t in ALIASES.get(tok, [tok]):
                if t in VARIANTS:
                    variants.append(t)
                elif t in FRAMEWORKS:
                    fws.append(t)
                elif t in OPS:
                    ops.append(t)
                else:
                    valid = [*VARIANTS, *FRAMEWORKS, *OPS, *ALIASES]
                    raise SystemExit(f"--only: unknown {t!r}; valid: {', '.join(valid)}")
    variants = variants or list(DEFAULT_VARIANTS)
    if skip_reference:
        variants = [v for v in variants if VARIANTS[v][0] != "ref"]
    return variants, fws or list(FRAMEWORKS), ops or list(OPS)


def warm(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(16 * MIB):
            pass


class Bench:
    def __init__(self, args, workdir: str):
        self.args = args
        self.workdir = workdir
        ref_py = args.ref_python or os.path.join(REF_VENV, "bin", "python")
        self.python = {
            "safetensors": (args.ours_python or sys.executable, False),
            "ours": (args.ours_python or sys.executable, False),
            "ref": (ref_py, True),  # -I: never pick up ours through PYTHONPATH
        }
        self.keys: dict = {}
        self.versions: dict = {}
        self.results: list[dict] = []
        self.loadavg: list[float] = []

    def run(self, impl: str, req: dict) -> dict:
        python, isolated = self.python[impl]
        req = {"impl": impl, "keys": self.keys.get(impl), **req}
        return call_worker(python, isolated, req, self.args.timeout)

    def probe(self, impl: str, fws: list[str]) -> dict:
        python, _ = self.python[impl]
        if not os.path.exists(python):
            hint = " (run benches/setup_reference_venv.sh)" if impl == "ref" else ""
            return {"unavailable": f"no python at {python}{hint}"}
        path = os.path.join(self.workdir, f"probe-{impl}.safetensors")
        try:
            res = self.run(impl, {"op": "probe", "path": path, "frameworks": fws})
        except WorkerError as e:
            return {"unavailable": f"probe crashed: {e}"}
        self.keys[impl] = res.get("keys")
        self.versions[impl] = res.get("version")
        return res

    def measure(self, variant: str, fw: str, op: str, path: str, **extra) -> dict:
        impl, enc = VARIANTS[variant]
        req = {
            "op": op,
            "framework": fw,
            "enc": enc,
            "path": path,
            "size_gib": self.args.size_gib,
            "dtype": self.args.dtype,
            "touch": self.args.touch,
            **VARIANT_OPTS.get(variant, {}),
            **extra,
        }
        os.sync()  # flush earlier writes so writeback doesn't land in this run
        self.loadavg.append(os.getloadavg()[0])
        return self.run(impl, req)

    def group(self, variant: str, fw: str, ops: list[str]) -> None:
        path = os.path.join(self.workdir, f"{variant}-{fw}.safetensors")
        runs = self.args.runs
        plan = [(op, runs if op != "slice" else 1) for op in OPS if op in ops]
        if variant in LOAD_ONLY:
            plan = [(op, n) for op, n in plan if op in ("load_file", "safe_open")]
        if not any(op == "save" for op, _ in plan):
            plan.insert(0, ("save", 0))  # untimed save to have a file to load
        for op, n in plan:
            samples = []
            for i in range(max(n, 1)):
                if op != "save" and not samples:
                    warm(path)
                extra = {"reps": self.args.slice_reps} if op == "slice" else {}
                label = f"{variant:<12} {fw:<6} {op:<10} run {i + 1}/{max(n, 1)}"
                try:
                    res = self.measure(variant, fw, op, path, **extra)
                except WorkerError as e:
                    log(f"{label}: FAILED {e}")
                    self.results.append({"variant": variant, "fw": fw, "op": op, "error": str(e)})
                    if op == "save" and not os.path.exists(path):
                        log(f"{variant} {fw}: no file to load, skipping its loads")
                        return
                    break
                if "unavailable" in res:
                    log(f"{label}: unavailable: {res['unavailable']}")
                    return
                if n:
                    samples.append(res)
                    log(f"{label}: {_brief(res)}")
            if samples:
                self.results.append({"variant": variant, "fw": fw, "op": op, "samples": samples})
        if not self.args.keep_files and os.path.exists(path):
            os.unlink(path)


def _brief(res: dict) -> str:
    if "slice_seconds" in res:
        return f"slice {res['slice_seconds'] * 1e3:.1f} ms, full {res['full_seconds'] * 1e3:.1f} ms"
    return f"{res['seconds']:.3f} s, peak {res['rss_peak'] / MIB:.0f} MiB"


def summarize(results: list[dict], payload: int) -> dict:
    """(variant, fw, op) -> medians."""
    out = {}
    for r in results:
        if "samples" not in r:
            continue
        s = r["samples"]
        key = (r["variant"], r["fw"], r["op"])
        if r["op"] == "slice":
            out[key] = {k: v for k, v in s[0].items()}
            out[key]["ratio"] = s[0]["slice_seconds"] / s[0]["full_seconds"]
            continue
        sec = statistics.median(x["seconds"] for x in s)
        peak = max(x["rss_peak"] for x in s)
        extra = max(x["rss_peak"] - x["rss_base"] for x in s)
        best = min(x["seconds"] for x in s)
        row = {
            "seconds": sec,
            "best": best,
            "cpu": statistics.median(x.get("cpu_seconds", float("nan")) for x in s),
            "gbps": payload / 1e9 / sec,
            "peak": peak,
            "extra": extra,
        }
        if "call_seconds" in s[0]:
            row["call_seconds"] = statistics.median(x["call_seconds"] for x in s)
        if "file_bytes" in s[0]:
            row["file_bytes"] = s[0]["file_bytes"]
        out[key] = row
    return out


def print_report(summary, payload, args, versions, loadavg) -> None:
    print()
    print(
        f"== {payload / (1 << 30):.3f} GiB {args.dtype} payload, median of {args.runs} runs, {os.cpu_count()} cpus =="
    )
    if loadavg:
        busy = " (machine was busy: expect noise)" if max(loadavg) > 0.75 * (os.cpu_count() or 1) else ""
        print(f"1-min load average before measurements: {min(loadavg):.2f}..{max(loadavg):.2f}{busy}")
    rows = [k for k in summary if k[2] != "slice"]
    if rows:
        hdr = (
            f"{'variant':<12} {'fw':<6} {'op':<10} {'median s':>9} {'best s':>7} "
            f"{'cpu s':>6} {'GB/s':>7} "
            f"{'call s':>7} {'peak MiB':>9} {'+MiB':>7} {'+/payload':>9}"
        )
        print(hdr)
        print("-" * len(hdr))
        for key in rows:
            r = summary[key]
            call = f"{r['call_seconds']:.3f}" if "call_seconds" in r else ""
            print(
                f"{key[0]:<12} {key[1]:<6} {key[2]:<10} {r['seconds']:>9.3f} "
                f"{r['best']:>7.3f} {r['cpu']:>6.2f} "
                f"{r['gbps']:>7.2f} {call:>7} {r['peak'] / MIB:>9.0f} "
                f"{r['extra'] / MIB:>7.0f} {r['extra'] / payload:>9.2f}"
            )
        sizes = {k[0]: summary[k]["file_bytes"] - payload for k in rows if "file_bytes" in summary[k]}
        if sizes:
            print("file bytes beyond payload: " + ", ".join(f"{v} {b}" for v, b in sizes.items()))
    slices = [k for k in summary if k[2] == "slice"]
    if slices:
        print()
        hdr = f"{'variant':<12} {'fw':<6} {'open ms':>8} {'1/8 rows ms':>12} {'full ms':>8} {'slice/full':>10}  tensor"
        print(hdr)
        print("-" * len(hdr))
        for key in slices:
            r = summary[key]
            print(
                f"{key[0]:<12} {key[1]:<6} {r['open_seconds'] * 1e3:>8.2f} "
                f"{r['slice_seconds'] * 1e3:>12.2f} {r['full_seconds'] * 1e3:>8.2f} "
                f"{r['ratio']:>10.2f}  {r['tensor']} ({r['full_bytes'] / MIB:.0f} MiB)"
            )
    pairs = [
        ("ours", "safetensors"),
        ("ours-enc", "ours"),
        ("ours-enc", "ours-pread"),
        ("ours-pread", "ours"),
        ("ours-enc", "ref-enc"),
        ("ref-enc", "safetensors"),
        ("ours-enc", "safetensors"),
    ]
    lines = []
    for a, b in pairs:
        for fw in FRAMEWORKS:
            for op in ("save", "load_file", "safe_open"):
                ra, rb = summary.get((a, fw, op)), summary.get((b, fw, op))
                if ra and rb:
                    mem = f"{ra['extra'] / payload:.2f} vs {rb['extra'] / payload:.2f}"
                    lines.append(f"{a + ' / ' + b:<26} {fw:<6} {op:<10} {ra['gbps'] / rb['gbps']:>8.2f} {mem:>14}")
    print()
    if lines:
        hdr = f"{'ratio':<26} {'fw':<6} {'op':<10} {'speed':>8} {'+/payload':>14}"
        print(hdr)
        print("-" * len(hdr))
        print("speed: GB/s of the first / GB/s of the second (>1: first is faster);")
        print("+/payload: extra peak memory / payload, first vs second")
        print("\n".join(lines))
    else:
        print("ratios: need at least two variants measured on the same ops")
    goals = goal_lines(summary, payload)
    if goals:
        print()
        hdr = f"{'goal':<40} {'fw':<6} {'op':<10} {'wall':>7} {'cpu':>7}  {'target':<8} status (wall median)"
        print(hdr)
        print("-" * len(hdr))
        print("\n".join(goals))
    if versions:
        print()
        print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))


def goal_lines(summary, payload) -> list[str]:
    """The issues' goals, judged on wall-time medians (cpu-time ratios shown
    alongside; for the speed goals both are "how many times faster")."""
    out = []

    def row(goal, fw, op, wall, cpu, target, ok):
        c = f"{cpu:.2f}" if cpu == cpu else "-"
        out.append(f"{goal:<40} {fw:<6} {op:<10} {wall:>7.2f} {c:>7}  {target:<8} {'met' if ok else 'MISSED'}")

    def get(v, fw, op):
        return summary.get((v, fw, op))

    def div(x, y):
        return x / y if y else float("nan")

    for fw in FRAMEWORKS:
        for op in ("save", "load_file", "safe_open"):
            a, b = get("ours", fw, op), get("safetensors", fw, op)
            if a and b:  # time ratio: ours / safetensors
                r = a["seconds"] / b["seconds"]
                row("ours plain time / safetensors", fw, op, r, div(a["cpu"], b["cpu"]), "<= 1.05", r <= 1.05)
    for fw in FRAMEWORKS:
        for op in ("load_file", "safe_open"):
            e = get("ours-enc", fw, op)
            if not e:
                continue
            bases = ["ours-pread"] + (["ours"] if fw == "numpy" else [])
            for base in bases:  # speed ratio: base time / enc time
                b = get(base, fw, op)
                if b:
                    r = b["seconds"] / e["seconds"]
                    row(
                        f"enc load speed / {base} (fresh memory)",
                        fw,
                        op,
                        r,
                        div(b["cpu"], e["cpu"]),
                        ">= 0.9",
                        r >= 0.9,
                    )
            ref = get("ref-enc", fw, op)
            if ref:
                r = ref["seconds"] / e["seconds"]
                row("enc load speed / ref-enc", fw, op, r, div(ref["cpu"], e["cpu"]), ">= 2", r >= 2)
    for fw in FRAMEWORKS:
        e, b = get("ours-enc", fw, "save"), get("safetensors", fw, "save")
        if e and b:
            r = e["seconds"] / b["seconds"]
            row("enc save time / safetensors plain save", fw, "save", r, div(e["cpu"], b["cpu"]), "<= 1.3", r <= 1.3)
        if e:
            m = e["extra"] / payload
            row("enc save extra peak / payload", fw, "save", m, float("nan"), "<= 0.10", m <= 0.10)
    for fw in FRAMEWORKS:
        sl = get("ours-enc", fw, "slice")
        if sl:
            row(
                "enc 1/8-row slice time / full tensor",
                fw,
                "slice",
                sl["ratio"],
                float("nan"),
                "<= 0.2",
                sl["ratio"] <= 0.2,
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    ap.add_argument("--size-gib", type=float, default=1.0, help="payload target")
    ap.add_argument("--dtype", choices=sorted(llama_layout.DTYPES), default="bf16")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement")
    ap.add_argument(
        "--only",
        help="comma-separated subset of variants, frameworks and/or ops "
        f"(variants: {', '.join(VARIANTS)}; frameworks: {', '.join(FRAMEWORKS)};"
        f" ops: {', '.join(OPS)}; aliases: load, reference)",
    )
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--touch", choices=["page", "full"], default="page")
    ap.add_argument("--slice-reps", type=int, default=5)
    ap.add_argument("--workdir", help="where files go (default: a new temp dir)")
    ap.add_argument("--keep-files", action="store_true")
    ap.add_argument("--ref-python", help=f"default: {REF_VENV}/bin/python")
    ap.add_argument("--ours-python", help="default: this python")
    ap.add_argument("--timeout", type=float, default=900, help="per worker, s")
    ap.add_argument("--json", help="also write raw results here")
    args = ap.parse_args()

    variants, fws, ops = parse_only(args.only, args.skip_reference)
    cfg = llama_layout.choose_config(args.size_gib, args.dtype)
    payload = llama_layout.payload_bytes(cfg, args.dtype)
    log(llama_layout.describe(cfg, args.dtype))
    log(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus")

    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="cryptotensors-bench-", dir=args.workdir)
    free = shutil.disk_usage(workdir).free
    if free < 2.5 * payload:
        raise SystemExit(f"{workdir}: {free / MIB:.0f} MiB free, need ~{2.5 * payload / MIB:.0f}")
    bench = Bench(args, workdir)
    try:
        keep = []
        for impl in dict.fromkeys(VARIANTS[v][0] for v in variants):
            res = bench.probe(impl, fws)
            for v in (v for v in variants if VARIANTS[v][0] == impl):
                enc = VARIANTS[v][1]
                why = res.get("unavailable") or res.get("enc_error" if enc else "plain_error")
                if why:
                    log(f"skipping {v}: {why}")
                else:
                    keep.append(v)
        t0 = time.perf_counter()
        for v in keep:
            for fw in fws:
                bench.group(v, fw, ops)
        log(f"measured in {time.perf_counter() - t0:.0f} s")
    finally:
        if not args.keep_files:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "config": llama_layout.describe(cfg, args.dtype),
                    "payload_bytes": payload,
                    "versions": bench.versions,
                    "results": bench.results,
                },
                f,
                indent=1,
            )
    summary = summarize(bench.results, payload)
    print_report(summary, payload, args, bench.versions, bench.loadavg)


if __name__ == "__main__":
    main()
