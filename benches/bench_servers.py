"""Encrypted against plain loads inside the servers, by their own figures.

* vLLM (`vllm.LLM` in the vLLM venv, .ci/vllm-venv.sh), as deployed: engine
  core and CPU worker in their own processes, the worker pinned where vLLM
  binds it. The figure is the worker's own log line "Loading weights took"
  (10 ms resolution), per load strategy (lazy, eager, prefetch) and with
  `enable_multithread_load`. Plain runs use stock safetensors (VLLM_PLUGINS=
  none: cryptotensors is never imported), encrypted ones the plugin.
* transformers: the wall time of `LlamaForCausalLM.from_pretrained` on the
  CPU, plain with stock safetensors against encrypted through
  `cryptotensors.patch()`; and the same followed by one read of every weight
  (stock safetensors maps the file and defers reading it to first use).

Each figure is the median of --rounds runs, plain and encrypted interleaved
(the order alternates every round), after one untimed warm-up of each, with
the files in the page cache. The ratio is plain time / encrypted time
(encrypted throughput relative to plain: 1.0 is parity).

    python benches/bench_servers.py [--size-mib 420] [--shards 5] [--rounds 5]
        [--vllm-python PATH] [--strategies lazy eager ...] [--bind 0-1]
        [--skip-vllm] [--skip-transformers] [--workdir DIR]

It also prints the CPUs vLLM's worker threads may run on (read from /proc
after its first load). A benchmark, never a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

STRATEGIES = ["lazy", "eager", "prefetch", "multithread"]


def build_model(workdir: Path, size_mib: int, shards: int) -> dict:
    """A float32 Llama of about size_mib in `shards` shards, plain and
    encrypted (with the command line), reused when already there."""
    plain, enc = workdir / "plain", workdir / "enc"
    key = workdir / "key.jwk"
    if (enc / "config.json").exists() and (workdir / "size").read_text() == f"{size_mib} {shards}":
        return {"plain": plain, "enc": enc, "key": key.read_text()}
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import cryptotensors

    for d in (plain, enc):
        shutil.rmtree(d, ignore_errors=True)
    hidden, inter, vocab = 1024, 2816, 16000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((size_mib * 2**20 / 4 - 2 * vocab * hidden) / per_layer))
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, vocab_size=vocab,
        num_attention_heads=16, num_key_value_heads=16, head_dim=64, max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() * 4 for p in model.parameters())
    model.save_pretrained(plain, max_shard_size=f"{total // shards // 2**20 + 1}MB")
    del model
    key.write_text(json.dumps(cryptotensors.generate_key("oct")))
    cli = Path(sys.executable).parent / "cryptotensors"
    subprocess.run([str(cli), "encrypt", str(plain), "-o", str(enc), "-r", str(key), "-q"], check=True)
    (workdir / "size").write_text(f"{size_mib} {shards}")
    return {"plain": plain, "enc": enc, "key": key.read_text()}


# In the vLLM venv, as deployed: each vllm.LLM starts its engine core and its CPU
# worker in their own processes (the worker pins itself to the cores vLLM binds it to),
# and the worker logs "Loading weights took". Those processes find the plugin
# themselves; VLLM_PLUGINS=none (set before each start, inherited) keeps cryptotensors
# out of the stock runs. argv[1]: JSON {"runs": [[label, model, strategy, env], ...]}.
# Before each start it prints "RUN label"; the worker's log line that follows is the
# figure of that run (each start blocks until the weights are loaded).
_VLLM = r"""
import gc, json, os, sys, glob

def worker_affinity():
    seen = {}
    for status in glob.glob("/proc/[0-9]*/task/*/status"):
        try:
            text = open(status).read()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        pid = status.split("/")[2]
        comm = open(f"/proc/{pid}/comm").read().strip() if os.path.exists(f"/proc/{pid}/comm") else "?"
        if comm.startswith("VLLM::Worker"):
            seen.setdefault(fields.get("Cpus_allowed_list", "?").strip(), 0)
            seen[fields.get("Cpus_allowed_list", "?").strip()] += 1
    return seen

def main():
    cfg = json.loads(sys.argv[1])
    from vllm import LLM
    probe = None
    for label, model, strategy, env in cfg["runs"]:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        kw = {}
        if strategy == "multithread":
            kw["model_loader_extra_config"] = {"enable_multithread_load": True}
        else:
            kw["safetensors_load_strategy"] = strategy
        print("RUN " + label, flush=True)
        llm = LLM(model=model, dtype="float32", max_model_len=64, enforce_eager=True, skip_tokenizer_init=True, **kw)
        if probe is None:
            probe = worker_affinity()
            print("PROBE " + json.dumps({"worker threads by allowed CPUs": probe}), flush=True)
        del llm
        gc.collect()

if __name__ == "__main__":
    main()
"""

FIGURE = re.compile(r"Loading weights took ([0-9.]+) seconds")


def _interleaved(a: str, b: str, rounds: int) -> list:
    """Warm-up of each, then `rounds` pairs in alternating order; the warm-ups are labelled `warmup`."""
    runs = [("warmup", a), ("warmup", b)]
    for r in range(rounds):
        runs += [("run", a), ("run", b)] if r % 2 == 0 else [("run", b), ("run", a)]
    return runs


def bench_vllm(python: str, paths: dict, rounds: int, home: Path, strategies: list, bind: Optional[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTOTENSORS_", "VIRTUAL_ENV", "VLLM_"))}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1",
               CRYPTOTENSORS_CONFIG_DIR=str(home / "no-config"), CRYPTOTENSORS_KEYS=paths["key"],
               TOKENIZERS_PARALLELISM="false")
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    kinds = {"plain": (str(paths["plain"]), {"VLLM_PLUGINS": "none"}), "enc": (str(paths["enc"]), {"VLLM_PLUGINS": None})}
    runs = []
    for strategy in strategies:
        for when, kind in _interleaved("plain", "enc", rounds):
            model, extra = kinds[kind]
            runs.append([f"{strategy}/{kind}/{when}", model, strategy, extra])
    r = subprocess.run([python, "-c", _VLLM, json.dumps({"runs": runs})], env=env, capture_output=True, text=True,
                       timeout=3600)
    figures: dict = {}
    label, probe = None, None
    for line in (r.stdout + "\n").splitlines():
        if line.startswith("RUN "):
            label = line[4:]
        elif line.startswith("PROBE "):
            probe = json.loads(line[6:])
        elif label and FIGURE.search(line):
            strategy, kind, when = label.split("/")
            if when == "run":
                figures.setdefault(strategy, {}).setdefault(kind, []).append(float(FIGURE.search(line).group(1)))
            label = None
    if r.returncode != 0 or any(len(f.get(k, [])) != rounds for f in figures.values() for k in kinds) \
            or len(figures) != len(strategies):
        sys.exit(f"vLLM run failed:\n{r.stdout[-3000:]}\n{r.stderr[-4000:]}")
    return {"figures": figures, "probe": probe}


_TRANSFORMERS = r'''
import gc, json, sys, time
cfg = json.loads(sys.argv[1])
import torch
from transformers import LlamaForCausalLM
import cryptotensors
out = {}
for label, kind in cfg["runs"]:
    if kind == "enc":
        cryptotensors.patch()
    t = time.perf_counter()
    m = LlamaForCausalLM.from_pretrained(cfg[kind], dtype=torch.float32, device_map="cpu")
    dt = time.perf_counter() - t
    # every weight read once (a lazily mapped plain file reads its pages here)
    with torch.no_grad():
        for p in m.parameters():
            p.sum()
    touched = time.perf_counter() - t
    cryptotensors.unpatch()
    del m
    gc.collect()
    out.setdefault(label + "-" + kind, []).append(dt)
    out.setdefault(label + "-" + kind + "-touched", []).append(touched)
print("RESULT " + json.dumps(out))
'''


def bench_transformers(paths: dict, rounds: int, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOTENSORS_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CRYPTOTENSORS_KEYS=paths["key"],
               CRYPTOTENSORS_CONFIG_DIR=str(home / "no-config"))
    cfg = {"runs": _interleaved("plain", "enc", rounds), "plain": str(paths["plain"]), "enc": str(paths["enc"])}
    r = subprocess.run([sys.executable, "-c", _TRANSFORMERS, json.dumps(cfg)], env=env, capture_output=True,
                       text=True, timeout=1800)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        sys.exit(f"transformers run failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    got = json.loads(lines[-1][len("RESULT "):])
    return {k: got["run-" + k] for k in ("plain", "enc", "plain-touched", "enc-touched")}


def _row(name: str, plain: list, enc: list) -> str:
    p, e = statistics.median(plain), statistics.median(enc)
    return f"| {name} | {p:.3f} s | {e:.3f} s | {p / e:.2f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=420)
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--vllm-python", default=os.environ.get("CRYPTOTENSORS_VLLM_PYTHON"))
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    ap.add_argument("--bind", help="VLLM_CPU_OMP_THREADS_BIND for the worker (default: vLLM's auto)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-servers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = build_model(workdir, args.size_mib, args.shards)
    size = sum(p.stat().st_size for p in paths["plain"].glob("*.safetensors")) / 2**20
    print(f"model: float32 Llama, {size:.0f} MiB in {len(list(paths['plain'].glob('*.safetensors')))} shards; "
          f"{args.rounds} interleaved rounds, medians; ratio = plain time / encrypted time")
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    if not args.skip_vllm:
        if not args.vllm_python:
            sys.exit("--vllm-python (or CRYPTOTENSORS_VLLM_PYTHON) names the vLLM venv's python")
        got = bench_vllm(args.vllm_python, paths, args.rounds, workdir, args.strategies, args.bind)
        bind = args.bind or "auto"
        print(f"\nvLLM 'Loading weights took' (float32, CPU worker, VLLM_CPU_OMP_THREADS_BIND={bind})\n")
        print("| strategy | plain (stock safetensors) | encrypted | ratio |")
        print("|---|---|---|---|")
        for strategy, f in got["figures"].items():
            print(_row(strategy, f["plain"], f["enc"]))
        print("\nvLLM's worker, after its load:", json.dumps(got["probe"]))
        print("raw:", json.dumps(got["figures"]))
    if not args.skip_transformers:
        got = bench_transformers(paths, args.rounds, workdir)
        print("\ntransformers from_pretrained (float32, CPU)\n")
        print("| load | plain (stock safetensors) | encrypted | ratio |")
        print("|---|---|---|---|")
        print(_row("from_pretrained", got["plain"], got["enc"]))
        print(_row("from_pretrained, then every weight read once", got["plain-touched"], got["enc-touched"]))
        print("raw:", json.dumps(got))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
