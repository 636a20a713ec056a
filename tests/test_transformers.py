"""Transparent mode (cryptotensors.patch, CRYPTOTENSORS_PATCH=1): unchanged
code that loads through the real `safetensors` package reads cryptotensors
files, and plain files exactly as before.

The end-to-end tests drive real transformers, offline: a tiny sharded Llama is
saved, encrypted with the command line, and loaded by
`AutoModelForCausalLM.from_pretrained` in fresh interpreters whose only
cryptotensors settings are CRYPTOTENSORS_KEYS and CRYPTOTENSORS_PATCH.

Nothing here binds safetensors' functions at module level: patch() rebinds
every module attribute that is one of them, this module's included.
"""

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("transformers")

import safetensors  # noqa: E402
import safetensors.numpy  # noqa: E402
import safetensors.torch  # noqa: E402
from _env import bare_env  # noqa: E402

import cryptotensors  # noqa: E402
import cryptotensors.numpy  # noqa: E402
import cryptotensors.torch  # noqa: E402
from cryptotensors import _patch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "cryptotensors"
TIMEOUT = 600


def _originals():
    """safetensors' own loaders (call while unpatched)."""
    assert not _patch.is_patched()
    return {
        "safe_open": safetensors.safe_open,
        "torch.load_file": safetensors.torch.load_file,
        "torch.load": safetensors.torch.load,
        "numpy.load_file": safetensors.numpy.load_file,
        "numpy.load": safetensors.numpy.load,
    }


@pytest.fixture
def patched():
    """patch() for one test; unpatch() after it, whatever happens."""
    if _patch.is_patched():
        pytest.skip("transparent mode is on for the whole session (CRYPTOTENSORS_PATCH)")
    originals = _originals()
    cryptotensors.patch()
    try:
        yield originals
    finally:
        cryptotensors.unpatch()
    assert _originals() == originals


# -- the mechanics, in this process ------------------------------------------------------------


def test_patch_rebinds_references_and_unpatch_restores_them():
    if _patch.is_patched():
        pytest.skip("transparent mode is on for the whole session (CRYPTOTENSORS_PATCH)")
    import transformers.modeling_utils as mu

    orig = _originals()
    consumer = types.ModuleType("_cryptotensors_test_consumer")  # as `from safetensors import ...` leaves it
    consumer.safe_open = safetensors.safe_open
    consumer.load_file = safetensors.torch.load_file
    consumer.safe_load_bytes = safetensors.torch.load
    consumer.np_load_file = safetensors.numpy.load_file
    consumer.save_file = safetensors.torch.save_file
    consumer.mine = cryptotensors.torch.load_file  # taken from cryptotensors on purpose
    sys.modules[consumer.__name__] = consumer
    try:
        assert mu.safe_open is orig["safe_open"]
        cryptotensors.patch()
        try:
            replaced = {
                "safe_open": safetensors.safe_open,
                "torch.load_file": safetensors.torch.load_file,
                "torch.load": safetensors.torch.load,
                "numpy.load_file": safetensors.numpy.load_file,
                "numpy.load": safetensors.numpy.load,
            }
            for name, rep in replaced.items():
                assert rep is not orig[name], name
                assert _patch.original(rep) is orig[name], name
            assert issubclass(safetensors.safe_open, cryptotensors.safe_open)
            assert safetensors.torch.safe_open is safetensors.safe_open
            assert safetensors.numpy.safe_open is safetensors.safe_open
            assert consumer.safe_open is safetensors.safe_open
            assert consumer.load_file is safetensors.torch.load_file
            assert consumer.safe_load_bytes is safetensors.torch.load
            assert consumer.np_load_file is safetensors.numpy.load_file
            assert consumer.save_file is safetensors.torch.save_file  # not a loader: left alone
            assert mu.safe_open is safetensors.safe_open
            assert mu._safe_load_bytes is safetensors.torch.load
            # the rest of safetensors is its own
            assert safetensors.torch.save_file.__module__ == "safetensors.torch"
            assert safetensors.SafetensorError is not cryptotensors.SafetensorError
            # the replacements pickle by reference (process pools send functions that way)
            for rep in replaced.values():
                assert pickle.loads(pickle.dumps(rep)) is rep
            # idempotent
            cryptotensors.patch()
            assert safetensors.safe_open is replaced["safe_open"]
            assert safetensors.torch.load_file is replaced["torch.load_file"]
            # a reference taken while patched is given back too
            consumer.late = safetensors.safe_open
        finally:
            cryptotensors.unpatch()
        assert _originals() == orig
        assert consumer.safe_open is orig["safe_open"]
        assert consumer.late is orig["safe_open"]
        assert consumer.load_file is orig["torch.load_file"]
        assert consumer.safe_load_bytes is orig["torch.load"]
        assert consumer.np_load_file is orig["numpy.load_file"]
        assert consumer.mine is cryptotensors.torch.load_file
        assert mu.safe_open is orig["safe_open"]
        assert mu._safe_load_bytes is orig["torch.load"]
        cryptotensors.unpatch()  # idempotent
        assert _originals() == orig
        assert _patch._finder is None and not any(getattr(f, "_then", None) is _patch._after_import for f in sys.meta_path)
    finally:
        del sys.modules[consumer.__name__]


def _plain_tensors():
    g = torch.Generator().manual_seed(1)
    return {
        "f32": torch.randn(4, 5, generator=g),
        "bf16": torch.randn(3, 7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(8, generator=g).to(torch.float16),
        "i64": torch.arange(-5, 5),
        "u8": torch.arange(0, 250, 7, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_plain_files_load_exactly_as_before(tmp_path, patched):
    orig = patched
    tensors = _plain_tensors()
    path = str(tmp_path / "plain.safetensors")
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})  # stock writer
    data = Path(path).read_bytes()

    ref = orig["torch.load_file"](path)
    for backend in ("mmap", "pread"):
        got = safetensors.torch.load_file(path, backend=backend)
        _same(got, ref)
    # zero-copy: plain tensors are views of torch's map of the whole file, as in safetensors
    got = safetensors.torch.load_file(path)
    for k in ("f32", "bf16", "i64"):
        assert ref[k].untyped_storage().nbytes() == len(data)
        assert got[k].untyped_storage().nbytes() == len(data), k
    _same(safetensors.torch.load(data), orig["torch.load"](data))
    # the safe_open calls transformers and accelerate make
    f = safetensors.safe_open(path, framework="pt", device="cpu", backend="mmap")
    assert f.metadata() == {"format": "pt"} and f.metadata()["format"] == "pt"
    assert set(f.keys()) == set(tensors)
    slices = {k: f.get_slice(k) for k in f.keys()}
    _same({k: s[...] for k, s in slices.items()}, ref)
    assert slices["f32"].get_dtype() == "F32" and slices["f32"].get_shape() == [4, 5]
    assert torch.equal(slices["f32"][1:3, ::2], ref["f32"][1:3, ::2])
    _same(f.get_tensors(), ref)
    f.__exit__(None, None, None)  # transformers closes its handles this way
    with safetensors.safe_open(path, "pt") as g:
        assert torch.equal(g.get_tensor("bf16"), ref["bf16"])

    # numpy, on what numpy holds
    np_path = str(tmp_path / "plain_np.safetensors")
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, -2], dtype=np.int16)}
    safetensors.numpy.save_file(arrays, np_path)
    for got in (safetensors.numpy.load_file(np_path), safetensors.numpy.load(Path(np_path).read_bytes())):
        want = orig["numpy.load_file"](np_path)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])

    # safetensors.torch._TYPES is safetensors' own and agrees with ours
    assert safetensors.torch._TYPES.__class__ is dict
    for code, dtype in safetensors.torch._TYPES.items():
        if dtype is not None:
            assert cryptotensors.torch._getdtype(code) == dtype, code


def test_encrypted_files_through_safetensors_names(tmp_path, patched, monkeypatch):
    key = cryptotensors.generate_key("oct")
    monkeypatch.setenv("CRYPTOTENSORS_KEYS", json.dumps({"keys": [key]}))
    tensors = _plain_tensors()
    path = str(tmp_path / "enc.safetensors")
    cryptotensors.torch.save_file(tensors, path, metadata={"format": "pt"}, encrypt_for=key)
    for backend in ("mmap", "pread"):
        _same(safetensors.torch.load_file(path, backend=backend), tensors)
    _same(safetensors.torch.load(Path(path).read_bytes()), tensors)
    with safetensors.safe_open(path, framework="pt", device="cpu") as f:
        assert f.metadata()["format"] == "pt"
        _same(f.get_tensors(), tensors)
        assert torch.equal(f.get_slice("f32")[1:3], tensors["f32"][1:3])
    np_path = str(tmp_path / "enc_np.safetensors")
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4)}
    cryptotensors.numpy.save_file(arrays, np_path, encrypt_for=key)
    assert np.array_equal(safetensors.numpy.load_file(np_path)["a"], arrays["a"])
    assert np.array_equal(safetensors.numpy.load(Path(np_path).read_bytes())["a"], arrays["a"])
    # the original load_model and the other frameworks' loaders call the patched names
    model = torch.nn.Linear(5, 4)
    cryptotensors.torch.save_model(model, str(tmp_path / "m.safetensors"), encrypt_for=key)
    fresh = torch.nn.Linear(5, 4)
    safetensors.torch.load_model(fresh, str(tmp_path / "m.safetensors"))
    assert torch.equal(fresh.weight, model.weight)
    # no key: our error, never ciphertext
    monkeypatch.delenv("CRYPTOTENSORS_KEYS")
    monkeypatch.setenv("CRYPTOTENSORS_CONFIG_DIR", str(tmp_path / "no-config"))
    with pytest.raises(cryptotensors.KeyNotFoundError, match=key["kid"]):
        safetensors.torch.load_file(path)


# -- fresh interpreters ------------------------------------------------------------------------


def _installed_pth():
    """The start-up .pth file of an installed (non-editable) wheel, if any."""
    from importlib import metadata

    try:
        files = metadata.distribution("cryptotensors").files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == _patch.PTH_NAME:
            p = Path(f.locate())
            if p.is_file():
                return p
    return None


@pytest.fixture(scope="module")
def activation(tmp_path_factory):
    """Extra environment that makes a fresh interpreter process the start-up
    .pth file: none when the installed wheel ships it; else a sitecustomize
    that has site process a directory holding it (site's own .pth handling,
    at start-up, before any user code), as site-packages would."""
    source = REPO / "python" / _patch.PTH_NAME
    installed = _installed_pth()
    if source.is_file():
        assert source.read_text() == _patch.PTH_LINE, f"{source} differs from cryptotensors._patch.PTH_LINE"
        editable = Path(cryptotensors.__file__).resolve().parent.parent == (REPO / "python").resolve()
        if not editable:  # an installed wheel must ship it (pyproject [tool.maturin] include)
            assert installed is not None, f"the installed wheel lacks {_patch.PTH_NAME}"
    if installed is not None:
        assert installed.read_text() == _patch.PTH_LINE
        return {}
    root = tmp_path_factory.mktemp("pth")
    (root / "site").mkdir()
    (root / "site" / _patch.PTH_NAME).write_text(_patch.PTH_LINE)
    (root / "boot").mkdir()
    (root / "boot" / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(root / 'site')!r})\n")
    return {"PYTHONPATH": str(root / "boot")}


def _python(code, env, cwd, timeout=TIMEOUT):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout
    )


_PROBE = """
    import sys, json
    at_start = {"cryptotensors": "cryptotensors" in sys.modules, "torch": "torch" in sys.modules,
                "safetensors": "safetensors" in sys.modules}
    import safetensors
    print(json.dumps({"at_start": at_start, "patched": safetensors.safe_open.__module__ != "builtins"}))
"""


def test_env_activation_at_startup_is_lazy_and_off_by_default(tmp_path, activation):
    on = _python(_PROBE, bare_env(tmp_path, CRYPTOTENSORS_PATCH="1", **activation), tmp_path)
    assert on.returncode == 0, on.stderr
    got = json.loads(on.stdout)
    # imported at start-up by the .pth line, but neither torch nor safetensors yet: cheap
    assert got == {"at_start": {"cryptotensors": True, "torch": False, "safetensors": False}, "patched": True}
    for value in (None, "0", ""):
        extra = dict(activation)
        if value is not None:
            extra["CRYPTOTENSORS_PATCH"] = value
        off = _python(_PROBE, bare_env(tmp_path, **extra), tmp_path)
        assert off.returncode == 0, off.stderr
        got = json.loads(off.stdout)
        assert got["patched"] is False and got["at_start"]["safetensors"] is False
        if value is None:
            assert got["at_start"]["cryptotensors"] is False  # the .pth line does nothing at all
        assert off.stderr == ""


def test_import_hook_and_activation_at_import_of_cryptotensors(tmp_path):
    code = """
        import sys
        import cryptotensors  # CRYPTOTENSORS_PATCH=1: patch() at import, before safetensors is imported
        from cryptotensors import _patch
        assert _patch.is_patched() and "safetensors" not in sys.modules
        from safetensors import safe_open            # bound from the patched module
        from safetensors.torch import load_file, load
        import safetensors, safetensors.torch
        assert safe_open is safetensors.safe_open and issubclass(safe_open, cryptotensors.safe_open)
        assert safetensors.torch.safe_open is safe_open
        assert load_file is _patch.torch_load_file and load is _patch.torch_load
        # the modules show their own loaders once imported
        assert type(safetensors.__spec__.loader).__name__ != "_PatchingLoader"
        assert type(safetensors.torch.__loader__).__name__ != "_PatchingLoader"
        cryptotensors.unpatch()
        import safetensors.numpy                      # imported after unpatch: untouched
        assert safetensors.numpy.load_file.__module__ == "safetensors.numpy"
        assert safetensors.safe_open.__module__ == "builtins"
        assert safetensors.torch.load_file.__module__ == "safetensors.torch"
        assert load_file is safetensors.torch.load_file  # __main__'s names are given back too
        print("ok")
    """
    r = _python(code, bare_env(tmp_path, CRYPTOTENSORS_PATCH="1"), tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# -- transformers, end to end ------------------------------------------------------------------


def _cli(*args, env):
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "cryptotensors"]
    r = subprocess.run(cmd + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, (args, r.stderr)
    return r


def _header(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


IDS = [[1, 5, 9, 42, 7, 200, 3, 17, 64, 128]]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny sharded Llama, its reference logits, and its encrypted copy."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, vocab_size=256, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    plain = root / "plain"
    model.save_pretrained(plain, max_shard_size="100KB")
    assert (plain / "model.safetensors.index.json").is_file()
    assert len(list(plain.glob("*.safetensors"))) > 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the children (OMP_NUM_THREADS=1)
    try:
        with torch.no_grad():
            logits = model(torch.tensor(IDS)).logits
    finally:
        torch.set_num_threads(threads)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"logits": logits, "state": state}, root / "reference.pt")

    env = bare_env(root / "home")
    key, pub = root / "customer.jwk", root / "customer.pub.jwk"
    _cli("keygen", "--type", "x25519", "-o", key, env=env)
    _cli("keygen", "-y", key, "-o", pub, env=env)
    enc = root / "enc"
    _cli("encrypt", plain, "-o", enc, "-r", pub, "-q", env=env)
    assert (enc / "model.safetensors.index.json").is_file()
    shards = sorted(enc.glob("*.safetensors"))
    assert [p.name for p in shards] == sorted(p.name for p in plain.glob("*.safetensors"))
    for shard in shards:  # every tensor of every shard is encrypted
        header = _header(shard)
        assert set(json.loads(header["__metadata__"]["__cryptotensors__"])["encryption"]["tensors"]) == set(header) - {"__metadata__"}
    # a copy with one ciphertext byte flipped: decrypting it (lazily, when transformers
    # materializes the tensor) must fail, not load garbage or skip the weight
    tampered = root / "tampered"
    shutil.copytree(enc, tampered)
    shard = sorted(tampered.glob("*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") + 5] ^= 0x01
    shard.write_bytes(bytes(data))
    return types.SimpleNamespace(
        root=root, plain=plain, enc=enc, tampered=tampered, key=key, kid=json.loads(key.read_text())["kid"]
    )


_LOAD = """
    import json, sys
    started_with = "cryptotensors" in sys.modules
    import torch
    import safetensors, transformers
    import transformers.modeling_utils as mu
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    out = {"started_with_cryptotensors": started_with,
           "patched": safetensors.safe_open.__module__ != "builtins" and mu.safe_open is safetensors.safe_open}
    ids = torch.tensor(%(ids)r)

    def run(path, **kw):
        model = AutoModelForCausalLM.from_pretrained(path, **kw).eval()
        with torch.no_grad():
            return model(ids).logits, {k: v.detach().clone() for k, v in model.state_dict().items()}

    enc, plain, tampered = sys.argv[1], sys.argv[2], sys.argv[4]
    logits, state = run(enc)
    plain_logits, plain_state = run(plain)  # plain files through the patched names
    bf16_logits, bf16_state = run(enc, dtype=torch.bfloat16)
    bf16_plain_logits, _ = run(plain, dtype=torch.bfloat16)
    shard = sorted(p for p in __import__("os").listdir(enc) if p.endswith(".safetensors"))[0]
    with safetensors.safe_open(enc + "/" + shard, framework="pt") as f:
        out["format"] = f.metadata()["format"]
        out["metadata"] = f.metadata()
    try:
        run(tampered)
        out["tampered"] = "loaded"
    except Exception as e:
        out["tampered"] = type(e).__module__ + "." + type(e).__name__
    torch.save({"logits": logits, "state": state, "plain_logits": plain_logits, "plain_state": plain_state,
                "bf16_logits": bf16_logits, "bf16_state": bf16_state, "bf16_plain_logits": bf16_plain_logits},
               sys.argv[3])
    print(json.dumps(out))
"""


def test_from_pretrained_encrypted_with_env_only(llama, activation, tmp_path):
    """A fresh interpreter whose only cryptotensors settings are the key path
    and CRYPTOTENSORS_PATCH=1 (activated at start-up by the .pth line) loads the
    encrypted model with unchanged transformers code: same weights, same logits
    bit for bit."""
    out = tmp_path / "out.pt"
    env = bare_env(tmp_path / "home", CRYPTOTENSORS_KEYS=llama.key, CRYPTOTENSORS_PATCH="1", **activation)
    code = textwrap.dedent(_LOAD) % {"ids": IDS}
    r = subprocess.run(
        [sys.executable, "-c", code, str(llama.enc), str(llama.plain), str(out), str(llama.tampered)],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info == {
        "started_with_cryptotensors": True, "patched": True, "format": "pt", "metadata": {"format": "pt"},
        "tampered": "cryptotensors.IntegrityError",
    }

    ref = torch.load(llama.root / "reference.pt")
    got = torch.load(out)
    assert got["state"].keys() == ref["state"].keys()
    for k, v in ref["state"].items():
        assert got["state"][k].dtype == v.dtype and torch.equal(got["state"][k], v), k
        assert torch.equal(got["plain_state"][k], v), k
        assert got["bf16_state"][k].dtype == torch.bfloat16 and torch.equal(got["bf16_state"][k], v.to(torch.bfloat16)), k
    assert torch.equal(got["logits"], ref["logits"])
    assert torch.equal(got["plain_logits"], ref["logits"])
    assert got["bf16_logits"].dtype == torch.bfloat16
    assert torch.equal(got["bf16_logits"], got["bf16_plain_logits"])


_NO_KEY = """
    import json, sys
    import safetensors
    from transformers import AutoModelForCausalLM
    enc, report = sys.argv[1], sys.argv[2]
    try:  # stock safetensors refuses the encrypted file loudly
        AutoModelForCausalLM.from_pretrained(enc)
        stock = None
    except Exception as e:
        stock = {"type": type(e).__module__ + "." + type(e).__name__, "is_safetensors_error":
                 isinstance(e, safetensors.SafetensorError), "message": str(e)}
    import cryptotensors
    cryptotensors.patch()  # explicit activation after transformers was imported: rebinds its references
    json.dump({"stock": stock}, open(report, "w"))
    AutoModelForCausalLM.from_pretrained(enc)  # no key anywhere: must raise KeyNotFoundError
    print("LOADED")
"""


def test_from_pretrained_without_key_fails_with_our_error(llama, tmp_path):
    report = tmp_path / "report.json"
    env = bare_env(tmp_path / "home")  # no CRYPTOTENSORS_KEYS, no configuration file
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_NO_KEY), str(llama.enc), str(report)],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert r.returncode != 0 and "LOADED" not in r.stdout, r.stdout
    assert "cryptotensors.KeyNotFoundError: No key given can decrypt this file" in r.stderr, r.stderr[-4000:]
    assert llama.kid in r.stderr.splitlines()[-1]
    stock = json.loads(report.read_text())["stock"]
    assert stock is not None and stock["is_safetensors_error"], stock
    assert "file not fully covered" in stock["message"] or "metadata" in stock["message"], stock
