"""The `cryptotensors` command, driven as a user would: one subprocess per
command, checking outputs, files left on disk and exit codes."""

import json
import os
import pty
import re
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cryptotensors
from cryptotensors import cli
from cryptotensors.numpy import load_file, save_file

BIN = Path(sys.executable).parent / "cryptotensors"


def _env(config_dir, **extra):
    """The user's environment without ambient keys, signers or progress settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTOTENSORS_", "HF_HUB_DISABLE"))}
    env["CRYPTOTENSORS_CONFIG_DIR"] = str(config_dir)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-home")


@pytest.fixture(scope="module")
def run(home):
    def run(*args, cwd=None, input=None, env=None, **kwargs):
        return subprocess.run(
            [str(BIN), *map(str, args)], cwd=cwd, input=input, capture_output=True, text=True,
            env=env or _env(home / "no-config"), timeout=300, **kwargs,
        )

    return run


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def fails(result, code, *fragments):
    """The command failed with `code`, one line on stderr naming each fragment, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("usage:") and line.startswith(cli.PROG)]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _bf16_spec(values):
    """A bfloat16 TensorSpec (a dtype numpy lacks) and the buffer that owns its bytes."""
    bits = (np.asarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    spec = cryptotensors.TensorSpec(dtype="bfloat16", shape=bits.shape, data_ptr=bits.ctypes.data, data_len=bits.nbytes)
    return spec, bits


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A sharded model directory as save_pretrained writes it, plus other files."""
    d = tmp_path_factory.mktemp("model") / "tiny-llama"
    d.mkdir()
    rng = np.random.default_rng(0)
    shard1 = {
        "model.embed_tokens.weight": rng.standard_normal((64, 32), dtype=np.float32),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((48, 32)).astype(np.float16),
        "model.position_ids": np.arange(16, dtype=np.int64),
    }
    save_file(shard1, d / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    norm, norm_buf = _bf16_spec(rng.standard_normal(32))
    head = rng.standard_normal((64, 32), dtype=np.float32)
    shard2 = {
        "model.norm.weight": norm,
        "lm_head.weight": cryptotensors.TensorSpec(dtype="float32", shape=head.shape, data_ptr=head.ctypes.data, data_len=head.nbytes),
    }
    cryptotensors.serialize_file(shard2, d / "model-00002-of-00002.safetensors", {"format": "pt"})
    del norm_buf
    weight_map = {**dict.fromkeys(shard1, "model-00001-of-00002.safetensors"), **dict.fromkeys(shard2, "model-00002-of-00002.safetensors")}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text('{"model_type": "llama"}')
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    (d / "extra").mkdir()
    (d / "extra" / "notes.txt").write_text("kept as is\n")
    return d


@pytest.fixture(scope="module")
def keys(run, tmp_path_factory):
    """Key files made with keygen: a customer's X25519 pair, a publisher's Ed25519 pair, and strangers'."""
    d = tmp_path_factory.mktemp("keys")
    for name, kind in (("customer", "x25519"), ("publisher", "ed25519"), ("other", "x25519"), ("other-signer", "ed25519")):
        ok(run("keygen", "--type", kind, "-o", d / f"{name}.jwk", "-q"))
        ok(run("keygen", "-y", d / f"{name}.jwk", "-o", d / f"{name}.pub.jwk"))
    return d


@pytest.fixture(scope="module")
def encrypted(run, model, keys, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "tiny-llama-encrypted"
    result = ok(run("encrypt", model, "-o", out, "-r", keys / "customer.pub.jwk", "--sign-key", keys / "publisher.jwk"))
    assert "encrypted 2 files" in result.stdout
    return out


DENY = 'package cryptotensors\nimport rego.v1\ndefault allow := false\nreason := "denied by test"\n'
TEE = """package cryptotensors
import rego.v1
default allow := false
allow if {
	input.claims.tee.type in {"sev-snp", "tdx"}
	input.claims.tee.verified == true
}
reason := "a verified TEE attestation is required" if not allow
"""


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Policy and claims files: a policy that denies every load, one that wants TEE claims, bad Rego, claims."""
    d = tmp_path_factory.mktemp("policies")
    (d / "deny.rego").write_text(DENY)
    (d / "tee.rego").write_text(TEE)
    (d / "bad.rego").write_text("package cryptotensors\nallow := \n")
    (d / "tee-claims.json").write_text(json.dumps({"tee": {"type": "tdx", "verified": True}}))
    (d / "list.json").write_text("[1]")
    return d


def _kid(path):
    return json.loads(path.read_text())["kid"]


def _data(path):
    """A file's bytes after its header: tensor data and trailer."""
    data = path.read_bytes()
    return data[8 + struct.unpack("<Q", data[:8])[0]:]


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _shards(root):
    return sorted(root.glob("*.safetensors"))


def _left_over(parent):
    """Temporary or partial outputs left in a directory."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))]


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def _tensor_offset(path, name):
    """The file offset of a tensor's first byte."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return 8 + n + json.loads(data[8:8 + n])[name]["data_offsets"][0]


# ---------------------------------------------------------------- the command itself


def test_console_script_help_and_exit_codes(run):
    assert BIN.exists(), "the cryptotensors console script is not installed"
    out = ok(run("--help")).stdout
    for code, meaning in cli.EXIT_CODES.items():
        assert f"{code}  {meaning}" in out
        assert f"{code}  {meaning}" in cli.__doc__
    assert len(set(cli.EXIT_CODES)) == len(cli.EXIT_CODES) == 11
    for command in ("demo", "keygen", "encrypt", "decrypt", "inspect", "verify", "rewrap", "rekey"):
        assert command in out
    module = subprocess.run([sys.executable, "-m", "cryptotensors", "--version"], capture_output=True, text=True)
    assert module.returncode == 0 and cryptotensors.__version__ in module.stdout


# ---------------------------------------------------------------- keygen


def test_keygen_secret_files_are_0600_and_not_clobbered(run, tmp_path):
    key = tmp_path / "k.jwk"
    result = ok(run("keygen", "--type", "x25519", "-o", key))
    assert "Public key:" in result.stderr and '"d"' not in result.stderr
    assert (key.stat().st_mode & 0o777) == 0o600
    private = json.loads(key.read_text())
    assert private["crv"] == "X25519" and "d" in private

    fails(run("keygen", "--type", "oct", "-o", key), cli.EXIT_USAGE, "exists", "--force")
    assert json.loads(key.read_text()) == private
    ok(run("keygen", "--type", "oct", "-o", key, "--force"))
    assert json.loads(key.read_text())["kty"] == "oct" and (key.stat().st_mode & 0o777) == 0o600
    assert _left_over(tmp_path) == []


def test_keygen_public(run, tmp_path):
    key = tmp_path / "signer.jwk"
    ok(run("keygen", "--type", "ed25519", "-o", key, "-q"))
    private = json.loads(key.read_text())
    from_file = json.loads(ok(run("keygen", "-y", key)).stdout)
    from_stdin = json.loads(ok(run("keygen", "--public", input=key.read_text())).stdout)
    assert from_file == from_stdin == cryptotensors.public_key(private)
    assert "d" not in from_file and from_file["kid"] == private["kid"]
    pub = tmp_path / "signer.pub.jwk"
    ok(run("keygen", "-y", key, "-o", pub))
    assert json.loads(pub.read_text()) == from_file

    printed = json.loads(ok(run("keygen", "--type", "ed25519")).stdout)  # no -o: to stdout
    assert printed["crv"] == "Ed25519" and "d" in printed

    oct_key = tmp_path / "oct.jwk"
    ok(run("keygen", "--type", "oct", "-o", oct_key))
    fails(run("keygen", "-y", oct_key), cli.EXIT_KEY, "oct.jwk", "no public part")


# ---------------------------------------------------------------- encrypt, decrypt


def test_sharded_directory_round_trip(run, model, encrypted, keys, tmp_path):
    assert _files(encrypted) == _files(model)
    for name in ("model.safetensors.index.json", "config.json", "tokenizer.json", "extra/notes.txt"):
        assert (encrypted / name).read_bytes() == (model / name).read_bytes(), name
    for shard in _shards(encrypted):
        header = cryptotensors.inspect(shard)
        assert all(t["encrypted"] for t in header["tensors"])
        assert header["metadata"] == {"format": "pt"}
        assert header["signer"] == json.loads((keys / "publisher.jwk").read_text())["kid"]
    assert _left_over(encrypted.parent) == []

    plain = tmp_path / "plain"
    result = ok(run("decrypt", encrypted, "-o", plain, "-k", keys / "customer.jwk"))
    assert "decrypted 2 files" in result.stdout
    assert _files(plain) == _files(model)
    for name in _files(model):  # safetensors files too: byte-identical to the originals
        assert (plain / name).read_bytes() == (model / name).read_bytes(), name


def test_decrypt_uses_the_environment_keys(run, home, encrypted, model, keys, tmp_path):
    env = _env(home / "no-config", CRYPTOTENSORS_KEYS=str(keys / "customer.jwk"))
    ok(run("decrypt", encrypted / "model-00001-of-00002.safetensors", "-o", tmp_path / "one.safetensors", env=env))
    expected = load_file(model / "model-00001-of-00002.safetensors")
    got = load_file(tmp_path / "one.safetensors")
    assert expected.keys() == got.keys() and all(np.array_equal(expected[k], got[k]) for k in expected)


def test_encrypt_single_file(run, model, keys, tmp_path):
    src = model / "model-00001-of-00002.safetensors"
    ok(run("encrypt", src, "-o", tmp_path / "enc.safetensors", "-r", keys / "customer.pub.jwk", "-r", keys / "other.pub.jwk"))
    header = cryptotensors.inspect(tmp_path / "enc.safetensors")
    assert len(header["recipients"]) == 2 and header["signer"] is None
    for key in ("customer.jwk", "other.jwk"):
        tensors = load_file(tmp_path / "enc.safetensors", keys=json.loads((keys / key).read_text()))
        assert np.array_equal(tensors["model.embed_tokens.weight"], load_file(src)["model.embed_tokens.weight"])
    (tmp_path / "into").mkdir()  # an existing directory: the file goes inside it, under its name
    ok(run("encrypt", src, "-o", tmp_path / "into", "-r", keys / "customer.pub.jwk"))
    assert _files(tmp_path / "into") == [src.name]


def test_encrypt_in_place_selected_tensors(run, model, keys, tmp_path):
    work = tmp_path / "model"
    shutil.copytree(model, work)
    result = ok(run(
        "encrypt", work, "--in-place", "-r", keys / "customer.pub.jwk", "--tensors", r"embed|up_proj",
        "--algorithm", "ChaCha20-Poly1305", "--segment-size", "4K",
    ))
    assert "model-00002-of-00002.safetensors: no tensor matches --tensors" in result.stderr
    assert _files(work) == _files(model) and _left_over(work) == []
    for name in ("config.json", "model.safetensors.index.json", "model-00002-of-00002.safetensors"):
        assert (work / name).read_bytes() == (model / name).read_bytes(), name
    header = json.loads(ok(run("inspect", work / "model-00001-of-00002.safetensors", "--json")).stdout)
    assert {t["name"]: t["encrypted"] for t in header["tensors"]} == {
        "model.embed_tokens.weight": True, "model.layers.0.mlp.up_proj.weight": True, "model.position_ids": False,
    }
    assert header["algorithm"] == "ChaCha20-Poly1305" and header["segment_size"] == 4096

    ok(run("decrypt", work, "--in-place", "-k", keys / "customer.jwk"))
    for name in _files(model):
        assert (work / name).read_bytes() == (model / name).read_bytes(), name


def test_dtypes_without_numpy_equivalents(run, keys, tmp_path):
    packed = np.arange(6, dtype=np.uint8)  # float4_e2m1fn_x2: 2 x 3 bytes, 2 x 6 values in the header
    scales = np.arange(4, dtype=np.uint8)
    specs = {
        "fp4": cryptotensors.TensorSpec(dtype="float4_e2m1fn_x2", shape=[2, 3], data_ptr=packed.ctypes.data, data_len=6),
        "scales": cryptotensors.TensorSpec(dtype="float8_e8m0fnu", shape=[4], data_ptr=scales.ctypes.data, data_len=4),
    }
    src = tmp_path / "fp4.safetensors"
    cryptotensors.serialize_file(specs, src)
    ok(run("encrypt", src, "-o", tmp_path / "enc.safetensors", "-r", keys / "customer.pub.jwk"))
    header = cryptotensors.inspect(tmp_path / "enc.safetensors")
    assert {t["name"]: (t["dtype"], t["shape"], t["encrypted"]) for t in header["tensors"]} == {
        "fp4": ("F4", [2, 6], True), "scales": ("F8_E8M0", [4], True),
    }
    ok(run("decrypt", tmp_path / "enc.safetensors", "-o", tmp_path / "dec.safetensors", "-k", keys / "customer.jwk"))
    assert (tmp_path / "dec.safetensors").read_bytes() == src.read_bytes()

    # F6 (no numpy or TensorSpec name) and F4 with an odd last dimension
    # were refused before the core wrote files itself: now they round-trip.
    f6 = tmp_path / "f6.safetensors"
    data = np.arange(1, 13, dtype=np.uint8)
    cryptotensors._core.serialize([("x", "F6_E2M3", [4], data[:3]), ("y", "F6_E3M2", [2, 4], data[3:9]),
                                   ("z", "F4", [2, 3], data[9:])], {"format": "pt"}, str(f6))
    ok(run("encrypt", f6, "-o", tmp_path / "f6-enc.safetensors", "-r", keys / "customer.pub.jwk"))
    header = cryptotensors.inspect(tmp_path / "f6-enc.safetensors")
    assert {t["name"]: (t["dtype"], t["shape"], t["encrypted"]) for t in header["tensors"]} == {
        "x": ("F6_E2M3", [4], True), "y": ("F6_E3M2", [2, 4], True), "z": ("F4", [2, 3], True),
    }
    ok(run("decrypt", tmp_path / "f6-enc.safetensors", "-o", tmp_path / "f6-dec.safetensors", "-k", keys / "customer.jwk"))
    assert (tmp_path / "f6-dec.safetensors").read_bytes() == f6.read_bytes()


_PEAK_CHILD = """
import sys
from cryptotensors import cli

def peak_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size
before = peak_kib()
code = cli.main(sys.argv[1:])
print(code, (peak_kib() - before) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's VmHWM reset")
def test_encrypt_and_decrypt_stream_a_file_bigger_than_their_memory(keys, tmp_path):
    """Encrypt and decrypt once read every tensor of a file into memory, then
    wrote it: a 192 MiB tensor made them grow by 192 MiB or more. The core
    now streams it, segment by segment."""
    src, enc, dec = tmp_path / "big.safetensors", tmp_path / "enc.safetensors", tmp_path / "dec.safetensors"
    big = np.random.default_rng(0).integers(0, 255, 192 << 20, dtype=np.uint8)
    save_file({"big": big, "small": np.arange(10, dtype=np.float32)}, src, metadata={"format": "pt"})
    del big

    def peak(*args):
        out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, *map(str, args), "-q"],
                             check=True, capture_output=True, text=True).stdout.split()
        assert out[0] == "0", out
        return int(out[1])

    grew = peak("encrypt", src, "-o", enc, "-r", keys / "customer.pub.jwk", "--segment-size", "64K")
    assert grew < 64, f"encrypt grew by {grew} MiB for a 192 MiB tensor"
    grew = peak("decrypt", enc, "-o", dec, "-k", keys / "customer.jwk")
    assert grew < 64, f"decrypt grew by {grew} MiB for a 192 MiB tensor"
    assert dec.read_bytes() == src.read_bytes()


def test_decrypted_outputs_are_private(run, encrypted, keys, tmp_path):
    ok(run("decrypt", encrypted, "-o", tmp_path / "plain", "-k", keys / "customer.jwk"))
    assert (tmp_path / "plain").stat().st_mode & 0o077 == 0
    for shard in _shards(tmp_path / "plain"):
        assert shard.stat().st_mode & 0o777 == 0o600


def test_force_replaces_an_existing_output_directory(run, model, keys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    fails(run("encrypt", model, "-o", out, "-r", keys / "customer.pub.jwk"), cli.EXIT_USAGE, "not empty", "--force")
    assert _files(out) == ["stale.txt"]
    ok(run("encrypt", model, "-o", out, "-r", keys / "customer.pub.jwk", "--force"))
    assert _files(out) == _files(model) and _left_over(tmp_path) == []


# ---------------------------------------------------------------- inspect


def test_inspect_text(run, encrypted, model, keys):
    out = ok(run("inspect", encrypted)).stdout
    customer = json.loads((keys / "customer.jwk").read_text())["kid"]
    publisher = json.loads((keys / "publisher.jwk").read_text())["kid"]
    assert re.search(r"model\.embed_tokens\.weight\s+F32\s+\[64, 32\]\s+yes", out)
    assert re.search(r"model\.norm\.weight\s+BF16\s+\[32\]\s+yes", out)
    assert re.search(r"model\.layers\.0\.mlp\.up_proj\.weight\s+F16\s+\[48, 32\]\s+yes", out)
    assert re.search(r"algorithm\s+AES-256-GCM", out)
    assert re.search(r"segment size\s+1 MiB \(1048576 bytes\)", out)
    assert f"{customer} (HPKE-Base-X25519-SHA256-ChaCha20Poly1305)" in out
    assert re.search(rf"signer\s+{re.escape(publisher)} \(not verified", out)
    assert "format=pt" in out
    assert re.findall(r"^  tensors\s+(\d+), (\d+) encrypted$", out, re.M) == [("3", "3"), ("2", "2")]

    plain = ok(run("inspect", model / "model-00001-of-00002.safetensors")).stdout
    assert re.search(r"model\.position_ids\s+I64\s+\[16\]\s+no", plain)
    assert re.search(r"algorithm\s+none \(not encrypted\)", plain)
    assert re.search(r"signer\s+none \(not signed\)", plain)


def test_inspect_json(run, encrypted, keys):
    doc = json.loads(ok(run("inspect", encrypted, "--json")).stdout)
    assert sorted(doc["files"]) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    one = doc["files"]["model-00002-of-00002.safetensors"]
    assert one == cryptotensors.inspect(encrypted / "model-00002-of-00002.safetensors")
    assert {t["name"]: (t["dtype"], t["shape"], t["encrypted"]) for t in one["tensors"]} == {
        "lm_head.weight": ("F32", [64, 32], True), "model.norm.weight": ("BF16", [32], True),
    }
    assert [(r["kid"], r["alg"]) for r in one["recipients"]] == [
        (json.loads((keys / "customer.jwk").read_text())["kid"], "HPKE-Base-X25519-SHA256-ChaCha20Poly1305")
    ]
    assert one["policy"] is None
    single = json.loads(ok(run("inspect", encrypted / "model-00002-of-00002.safetensors", "--json")).stdout)
    assert single == one


# ---------------------------------------------------------------- verify


def test_verify_good(run, encrypted, keys):
    out = ok(run("verify", encrypted, "--trusted-signer", keys / "publisher.pub.jwk", "-k", keys / "customer.jwk")).stdout
    assert out.count(": OK, signature valid, by trusted signer") == 2
    assert "every segment authenticated" in out

    no_key = ok(run("verify", encrypted, "--trusted-signer", keys / "publisher.pub.jwk")).stdout
    assert "encrypted tensors not checked (no key" in no_key and "trusted signer" in no_key
    assert ok(run("verify", encrypted, "-q")).stdout == ""


@pytest.fixture()
def tampered(encrypted, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(encrypted, copy)
    return copy


def test_verify_names_the_first_bad_tensor(run, tampered, keys):
    shard = tampered / "model-00001-of-00002.safetensors"
    _flip(shard, _tensor_offset(shard, "model.layers.0.mlp.up_proj.weight") + 7)
    line = fails(run("verify", tampered, "-k", keys / "customer.jwk"), cli.EXIT_INTEGRITY)
    assert "model-00001-of-00002.safetensors: tensor 'model.layers.0.mlp.up_proj.weight'" in line


def test_verify_tampered_header_or_trailer(run, tampered, keys):
    shard = tampered / "model-00002-of-00002.safetensors"
    _flip(shard, shard.stat().st_size - 3)  # an AEAD tag in the trailer
    fails(run("verify", tampered, "--trusted-signer", keys / "publisher.pub.jwk"), cli.EXIT_INTEGRITY, shard.name)


def test_verify_tampered_signature_and_untrusted_signer(run, tampered, encrypted, keys):
    fails(run("verify", encrypted, "--trusted-signer", keys / "other-signer.pub.jwk"), cli.EXIT_SIGNATURE, "not in trusted_signers")
    shard = tampered / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    start = data.index(b'"__cryptotensors_signature__":"') + len('"__cryptotensors_signature__":"')
    end = data.index(b'"', start)
    _flip(shard, end - 4)
    fails(run("verify", tampered, "-k", keys / "customer.jwk"), cli.EXIT_SIGNATURE, shard.name, "Signature invalid")


# ---------------------------------------------------------------- rewrap, access policies


def test_rewrap_directory_replaces_a_recipient(run, model, encrypted, keys, tmp_path):
    out = tmp_path / "rotated"
    result = ok(run("rewrap", encrypted, "-o", out, "-k", keys / "customer.jwk", "--add-recipient", keys / "other.pub.jwk",
                    "--remove-recipient", _kid(keys / "customer.jwk"), "--sign-key", keys / "publisher.jwk"))
    assert "rewrapped 2 files" in result.stdout
    assert _files(out) == _files(encrypted) and _left_over(tmp_path) == []
    for name in _files(encrypted):
        if not name.endswith(".safetensors"):
            assert (out / name).read_bytes() == (encrypted / name).read_bytes(), name
    for shard in _shards(out):
        assert _data(shard) == _data(encrypted / shard.name), "tensor bytes are copied, not re-encrypted"
        header = cryptotensors.inspect(shard)
        assert [r["kid"] for r in header["recipients"]] == [_kid(keys / "other.jwk")]
        assert header["signer"] == _kid(keys / "publisher.jwk")

    fails(run("verify", out, "-k", keys / "customer.jwk"), cli.EXIT_KEY, _kid(keys / "other.jwk"))
    fails(run("decrypt", out, "-o", tmp_path / "plain", "-k", keys / "customer.jwk"), cli.EXIT_KEY)
    verified = ok(run("verify", out, "-k", keys / "other.jwk", "--trusted-signer", keys / "publisher.pub.jwk")).stdout
    assert verified.count(": OK, signature valid, by trusted signer") == 2
    ok(run("decrypt", out, "-o", tmp_path / "plain", "-k", keys / "other.jwk"))
    for name in _files(model):
        assert (tmp_path / "plain" / name).read_bytes() == (model / name).read_bytes(), name


def test_rewrap_in_place_re_signs_or_drops_the_signature(run, encrypted, keys, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(encrypted, work)
    ok(run("rewrap", work, "-k", keys / "customer.jwk", "--sign-key", keys / "other-signer.jwk", "-q"))
    assert _files(work) == _files(encrypted) and _left_over(work) == []
    fails(run("verify", work, "--trusted-signer", keys / "publisher.pub.jwk"), cli.EXIT_SIGNATURE)
    ok(run("verify", work, "--trusted-signer", keys / "other-signer.pub.jwk", "-k", keys / "customer.jwk"))

    ok(run("rewrap", work, "-k", keys / "customer.jwk", "--drop-signature"))
    assert all(cryptotensors.inspect(shard)["signer"] is None for shard in _shards(work))
    fails(run("verify", work, "--trusted-signer", keys / "other-signer.pub.jwk"), cli.EXIT_SIGNATURE)
    assert "not signed" in ok(run("verify", work, "-k", keys / "customer.jwk")).stdout
    for shard in _shards(work):
        assert _data(shard) == _data(encrypted / shard.name)


def test_rewrap_sets_and_removes_a_policy(run, encrypted, keys, policies, tmp_path):
    shard = tmp_path / "m.safetensors"
    shutil.copy(encrypted / "model-00002-of-00002.safetensors", shard)
    key = ["-k", keys / "customer.jwk"]
    ok(run("rewrap", shard, *key, "--policy", policies / "deny.rego", "--sign-key", keys / "publisher.jwk"))
    assert cryptotensors.inspect(shard)["policy"] == DENY
    fails(run("verify", shard, *key), cli.EXIT_POLICY, "denied by test")
    # A trusted signature authenticates the policy before any key is looked
    # for; without one, it runs only once a key has passed the MAC.
    trusted = ["--trusted-signer", keys / "publisher.pub.jwk"]
    fails(run("verify", shard, *trusted), cli.EXIT_POLICY, "denied by test")
    assert "access policy not checked" in ok(run("verify", shard)).stdout
    fails(run("decrypt", shard, "-o", tmp_path / "plain.safetensors", *key), cli.EXIT_POLICY, "denied by test")
    assert not (tmp_path / "plain.safetensors").exists()

    # A rewrap is verified as a load is: the policy that denies loads denies it too.
    before = shard.read_bytes()
    fails(run("rewrap", shard, *key, "--remove-policy", "--sign-key", keys / "publisher.jwk"), cli.EXIT_POLICY, "denied by test")
    assert shard.read_bytes() == before

    shutil.copy(encrypted / "model-00002-of-00002.safetensors", shard)
    ok(run("rewrap", shard, *key, "--policy", policies / "tee.rego", "--sign-key", keys / "publisher.jwk"))
    fails(run("rewrap", shard, *key, "--remove-policy", "--sign-key", keys / "publisher.jwk"), cli.EXIT_POLICY, "TEE")
    ok(run("rewrap", shard, *key, "--remove-policy", "--sign-key", keys / "publisher.jwk", "--claims", policies / "tee-claims.json"))
    assert cryptotensors.inspect(shard)["policy"] is None
    ok(run("verify", shard, *key, "--trusted-signer", keys / "publisher.pub.jwk"))


def test_rekey_directory_revokes_a_recipient(run, model, encrypted, keys, tmp_path):
    """rekey: a new data key for the recipients that stay, every tensor
    re-encrypted; the removed recipient's key, and the old header, open nothing."""
    both = tmp_path / "both"
    ok(run("rewrap", encrypted, "-o", both, "-k", keys / "customer.jwk", "--add-recipient", keys / "other.pub.jwk",
           "--sign-key", keys / "publisher.jwk"))
    out = tmp_path / "rekeyed"
    common = ["-k", keys / "other.jwk", "--sign-key", keys / "publisher.jwk"]
    fails(run("rekey", both, "-o", out, *common), cli.EXIT_USAGE, _kid(keys / "customer.jwk"), "-r KEY.jwk")
    fails(run("rekey", both, "-o", out, *common, "--remove-recipient", _kid(keys / "customer.jwk"), "-r", keys / "customer.pub.jwk"),
          cli.EXIT_USAGE, "not a recipient that stays")
    fails(run("rekey", both, "-o", out, "-k", keys / "other.jwk", "--remove-recipient", _kid(keys / "customer.jwk")),
          cli.EXIT_USAGE, "--drop-signature")
    assert not out.exists()
    result = ok(run("rekey", both, "-o", out, *common, "--remove-recipient", _kid(keys / "customer.jwk")))
    assert "rekeyed 2 files" in result.stdout
    assert _files(out) == _files(encrypted) and _left_over(tmp_path) == []
    for shard in _shards(out):
        old = both / shard.name
        assert _data(shard) != _data(old), "re-encrypted"
        header = cryptotensors.inspect(shard)
        assert [r["kid"] for r in header["recipients"]] == [_kid(keys / "other.jwk")]
        spliced = tmp_path / "spliced.safetensors"
        raw = old.read_bytes()
        spliced.write_bytes(raw[:8 + struct.unpack("<Q", raw[:8])[0]] + _data(shard))
        fails(run("verify", spliced, "-k", keys / "customer.jwk"), cli.EXIT_INTEGRITY)
    fails(run("verify", out, "-k", keys / "customer.jwk"), cli.EXIT_KEY)
    ok(run("decrypt", out, "-o", tmp_path / "plain", "-k", keys / "other.jwk", "--trusted-signer", keys / "publisher.pub.jwk"))
    for name in _files(model):
        assert (tmp_path / "plain" / name).read_bytes() == (model / name).read_bytes(), name

    # In place, keeping both recipients (the customer's public key is enough).
    ok(run("rekey", both, "-k", keys / "other.jwk", "-r", keys / "customer.pub.jwk", "--drop-signature", "-q"))
    assert _left_over(both) == []
    for k in ("customer", "other"):
        ok(run("verify", both, "-k", keys / f"{k}.jwk"))
    plain = run("rekey", model, "-o", tmp_path / "x")
    assert plain.returncode == cli.EXIT_USAGE and "no file in it is encrypted: nothing to rekey" in plain.stderr
    fails(run("rekey", model / "model-00001-of-00002.safetensors", "-o", tmp_path / "x.safetensors"), cli.EXIT_USAGE, "not encrypted")


def test_encrypt_with_a_policy_and_load_with_claims(run, model, keys, policies, tmp_path):
    src = model / "model-00001-of-00002.safetensors"
    enc = tmp_path / "enc.safetensors"
    ok(run("encrypt", src, "-o", enc, "-r", keys / "customer.pub.jwk", "--policy", policies / "tee.rego"))
    key = ["-k", keys / "customer.jwk"]
    fails(run("verify", enc, *key), cli.EXIT_POLICY, "a verified TEE attestation is required")
    wrong = tmp_path / "wrong-claims.json"
    wrong.write_text(json.dumps({"tee": {"type": "tdx", "verified": False}}))
    fails(run("decrypt", enc, "-o", tmp_path / "plain.safetensors", *key, "--claims", wrong), cli.EXIT_POLICY, "TEE")

    claims = ["--claims", policies / "tee-claims.json"]
    assert "access policy allows this load" in ok(run("verify", enc, *key, *claims)).stdout
    ok(run("decrypt", enc, "-o", tmp_path / "plain.safetensors", *key, *claims))
    assert (tmp_path / "plain.safetensors").read_bytes() == src.read_bytes()


def test_inspect_shows_the_policy(run, model, keys, policies, tmp_path):
    enc = tmp_path / "enc.safetensors"
    ok(run("encrypt", model / "model-00002-of-00002.safetensors", "-o", enc, "-r", keys / "customer.pub.jwk",
           "--policy", policies / "tee.rego"))
    text = ok(run("inspect", enc)).stdout
    facts, _, shown = text.partition("  policy")
    assert re.search(r"signer\s+none \(not signed\)", facts) and "Rego, checked on every load:" in shown
    assert shown.splitlines()[1:] == [("      " + line).rstrip() for line in TEE.splitlines()]
    assert json.loads(ok(run("inspect", enc, "--json")).stdout)["policy"] == TEE
    assert re.search(r"^  policy\s+none$", ok(run("inspect", model)).stdout, re.M)


# ---------------------------------------------------------------- errors


ERROR_CASES = [
    # (id, arguments, exit code, fragment of the message)
    ("missing input", ["encrypt", "{tmp}/nope", "-o", "{out}", "-r", "{keys}/customer.pub.jwk"], cli.EXIT_NOT_FOUND, "nope"),
    ("missing key file", ["encrypt", "{model}", "-o", "{out}", "-r", "{keys}/absent.jwk"], cli.EXIT_NOT_FOUND, "absent.jwk"),
    ("key file not a JWK", ["encrypt", "{model}", "-o", "{out}", "-r", "{model}/config.json"], cli.EXIT_KEY, "not a JWK"),
    ("signing key as recipient", ["encrypt", "{model}", "-o", "{out}", "-r", "{keys}/publisher.pub.jwk"], cli.EXIT_KEY, "cannot be an encryption recipient"),
    ("recipient key as signer", ["encrypt", "{model}", "-o", "{out}", "-r", "{keys}/customer.pub.jwk", "--sign-key", "{keys}/customer.jwk"], cli.EXIT_KEY, "Ed25519"),
    ("no key", ["decrypt", "{enc}", "-o", "{out}"], cli.EXIT_KEY, "needs the key of one of these kids"),
    ("wrong key", ["decrypt", "{enc}", "-o", "{out}", "-k", "{keys}/other.jwk"], cli.EXIT_KEY, "-k KEY.jwk"),
    ("untrusted signer", ["decrypt", "{enc}", "-o", "{out}", "-k", "{keys}/customer.jwk", "--trusted-signer", "{keys}/other-signer.pub.jwk"], cli.EXIT_SIGNATURE, "trusted"),
    ("output exists", ["encrypt", "{model}", "-o", "{enc}", "-r", "{keys}/customer.pub.jwk"], cli.EXIT_USAGE, "not empty"),
    ("output is the input", ["encrypt", "{model}", "-o", "{model}", "--force", "-r", "{keys}/customer.pub.jwk"], cli.EXIT_USAGE, "--in-place"),
    ("already encrypted", ["encrypt", "{enc}", "-o", "{out}", "-r", "{keys}/customer.pub.jwk"], cli.EXIT_USAGE, "already encrypted"),
    ("no tensor selected", ["encrypt", "{model}", "-o", "{out}", "-r", "{keys}/customer.pub.jwk", "--tensors", "^nothing$"], cli.EXIT_USAGE, "matches no tensor"),
    ("bad regex", ["encrypt", "{model}", "-o", "{out}", "-r", "{keys}/customer.pub.jwk", "--tensors", "("], cli.EXIT_USAGE, "regular expression"),
    ("bad segment size", ["encrypt", "{model}", "-o", "{out}", "-r", "{keys}/customer.pub.jwk", "--segment-size", "3000"], cli.EXIT_USAGE, "power of two"),
    ("output directory missing", ["decrypt", "{enc}", "-o", "{tmp}/a/b/out", "-k", "{keys}/customer.jwk"], cli.EXIT_NOT_FOUND, "No such directory"),
    ("not a safetensors file", ["inspect", "{model}/config.json"], cli.EXIT_FAILURE, "config.json"),
    ("no safetensors in directory", ["inspect", "{model}/extra"], cli.EXIT_NOT_FOUND, "no .safetensors file"),
    ("bad policy", ["encrypt", "{model}", "-o", "{out}", "-r", "{keys}/customer.pub.jwk", "--policy", "{pol}/bad.rego"], cli.EXIT_USAGE, "bad.rego:3:1: invalid policy: expecting expression"),
    ("claims not an object", ["verify", "{enc}", "--claims", "{pol}/list.json"], cli.EXIT_USAGE, "JSON object"),
    ("claims not JSON", ["decrypt", "{enc}", "-o", "{out}", "-k", "{keys}/customer.jwk", "--claims", "{pol}/deny.rego"], cli.EXIT_USAGE, "JSON object"),
    ("rewrap: nothing to change", ["rewrap", "{enc}", "-o", "{out}", "-k", "{keys}/customer.jwk"], cli.EXIT_USAGE, "nothing to change"),
    ("rewrap: signed, not re-signed", ["rewrap", "{enc}", "-o", "{out}", "-k", "{keys}/customer.jwk", "--add-recipient", "{keys}/other.pub.jwk"], cli.EXIT_USAGE, "--drop-signature"),
    ("rewrap: sign and drop", ["rewrap", "{enc}", "-o", "{out}", "--sign-key", "{keys}/publisher.jwk", "--drop-signature"], cli.EXIT_USAGE, "not allowed with"),
    ("rewrap: unknown kid", ["rewrap", "{enc}", "-o", "{out}", "-k", "{keys}/customer.jwk", "--remove-recipient", "nope", "--drop-signature"], cli.EXIT_USAGE, "no recipient has kid nope"),
    ("rewrap: already a recipient", ["rewrap", "{enc}", "-o", "{out}", "-k", "{keys}/customer.jwk", "--add-recipient", "{keys}/customer.pub.jwk", "--drop-signature"], cli.EXIT_USAGE, "already a recipient"),
    ("rewrap: signing key as recipient", ["rewrap", "{enc}", "-o", "{out}", "--add-recipient", "{keys}/publisher.pub.jwk", "--drop-signature"], cli.EXIT_KEY, "cannot be an encryption recipient"),
    ("rewrap: no key", ["rewrap", "{enc}", "-o", "{out}", "--add-recipient", "{keys}/other.pub.jwk", "--drop-signature"], cli.EXIT_KEY, "needs the key of one of these kids"),
    ("rewrap: untrusted signer", ["rewrap", "{enc}", "-o", "{out}", "-k", "{keys}/customer.jwk", "--drop-signature", "--trusted-signer", "{keys}/other-signer.pub.jwk"], cli.EXIT_SIGNATURE, "trusted"),
    ("rewrap: bad policy", ["rewrap", "{enc}", "-o", "{out}", "-k", "{keys}/customer.jwk", "--policy", "{pol}/bad.rego", "--drop-signature"], cli.EXIT_USAGE, "bad.rego:3:1"),
    ("rewrap: plain file", ["rewrap", "{model}/model-00001-of-00002.safetensors", "-o", "{out}", "--drop-signature"], cli.EXIT_USAGE, "neither encrypted nor signed"),
    ("rewrap: output is the input", ["rewrap", "{enc}", "-o", "{enc}", "-k", "{keys}/customer.jwk", "--drop-signature"], cli.EXIT_USAGE, "leave out -o"),
]


@pytest.mark.parametrize("args, code, fragment", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_paths(run, model, encrypted, keys, policies, tmp_path, args, code, fragment):
    places = {"model": model, "enc": encrypted, "keys": keys, "pol": policies, "tmp": tmp_path, "out": tmp_path / "out"}
    before = {name: (encrypted / name).read_bytes() for name in _files(encrypted)}
    fails(run(*[a.format(**places) for a in args]), code, fragment)
    assert not (tmp_path / "out").exists() and _left_over(tmp_path) == []
    assert {name: (encrypted / name).read_bytes() for name in _files(encrypted)} == before


def test_wrong_key_with_the_right_kid_and_tampered_data(run, model, tmp_path):
    key = tmp_path / "k.jwk"
    ok(run("keygen", "--type", "oct", "-o", key))
    enc = tmp_path / "enc.safetensors"
    ok(run("encrypt", model / "model-00001-of-00002.safetensors", "-o", enc, "-r", key))
    forged = json.loads(key.read_text())
    forged["k"] = cryptotensors.generate_key("oct")["k"]  # same kid, other secret
    (tmp_path / "forged.jwk").write_text(json.dumps(forged))
    fails(run("decrypt", enc, "-o", tmp_path / "out.safetensors", "-k", tmp_path / "forged.jwk"), cli.EXIT_INTEGRITY, "wrong")
    _flip(enc, _tensor_offset(enc, "model.position_ids"))
    fails(run("decrypt", enc, "-o", tmp_path / "out.safetensors", "-k", key), cli.EXIT_INTEGRITY, "'model.position_ids'")
    assert not (tmp_path / "out.safetensors").exists() and _left_over(tmp_path) == []


def _file_size_limit(nbytes):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def test_disk_full_leaves_nothing_behind(run, model, keys, tmp_path):
    out = tmp_path / "out"
    result = run("encrypt", model, "-o", out, "-r", keys / "customer.pub.jwk", preexec_fn=_file_size_limit(4096))
    fails(result, cli.EXIT_OS, "writing model-00001-of-00002.safetensors", "File too large")
    assert list(tmp_path.iterdir()) == []


def test_classify_disk_full():
    code, message = cli._classify(cryptotensors.SafetensorOSError(28, "No space left on device"))
    assert (code, message) == (cli.EXIT_OS, "disk full (No space left on device)")
    assert cli._classify(OSError(28, "No space left on device"))[0] == cli.EXIT_OS


# ---------------------------------------------------------------- progress


def _on_a_terminal(home, *args, env=None):
    """Runs the command with stderr on a pseudo-terminal; returns it and what it drew there."""
    leader, follower = pty.openpty()
    try:
        result = subprocess.run([str(BIN), *map(str, args)], stdout=subprocess.PIPE, stderr=follower, text=True,
                                env=env or _env(home / "no-config"), timeout=120)
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return result, b"".join(chunks).decode()


@pytest.mark.parametrize("flags, env_extra, drawn", [
    ([], {}, True),
    (["-q"], {}, False),
    ([], {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}, False),
], ids=["terminal", "quiet", "hf-disabled"])
def test_progress_only_on_a_terminal(run, home, model, keys, tmp_path, flags, env_extra, drawn):
    args = ["encrypt", model, "-o", tmp_path / "out", "-r", keys / "customer.pub.jwk", *flags]
    result, drawing = _on_a_terminal(home, *args, env=_env(home / "no-config", **env_extra))
    assert result.returncode == 0, drawing
    assert ("\r" in drawing and "100%" in drawing and "file 6/6" in drawing and "KiB" in drawing) == drawn, drawing
    assert ("encrypted 2 files" in result.stdout) == (flags != ["-q"])


def test_progress_bar_escapes_file_names(home, keys, tmp_path):
    """The bar names the file being worked on: a name that holds terminal
    controls is escaped there too, as on every other line."""
    src = tmp_path / "in"
    src.mkdir()
    save_file({"w": np.ones((64, 64), np.float32)}, src / "a\x1b[2Jb.safetensors")
    result, drawing = _on_a_terminal(home, "encrypt", src, "-o", tmp_path / "out", "-r", keys / "customer.pub.jwk")
    assert result.returncode == 0, drawing
    assert "file 1/1" in drawing and "16 KiB/16 KiB" in drawing, drawing
    assert "\x1b[2J" not in drawing and "a\\x1b[2J" in drawing, drawing


@pytest.mark.parametrize("command", ["encrypt", "decrypt", "rekey"])
def test_progress_moves_within_one_file(home, keys, tmp_path, command):
    """The bar moves while one file is converted, as the core reports the
    bytes written (not only when the file is done), and ends at 100% of the
    same total. tqdm redraws at most every 0.1 s; TQDM_MININTERVAL=0 makes it
    draw each report."""
    src = tmp_path / "in.safetensors"
    tensors = {f"t{i}": np.full(4 << 20, i, np.uint8) for i in range(4)}
    if command == "encrypt":
        save_file(tensors, src)
        args = ["encrypt", src, "-o", tmp_path / "out.safetensors", "-r", keys / "customer.pub.jwk"]
    else:
        customer = json.loads((keys / "customer.pub.jwk").read_text())
        save_file(tensors, src, encrypt_for=customer)
        args = [command, src, "-o", tmp_path / "out.safetensors", "-k", keys / "customer.jwk"]
    result, drawing = _on_a_terminal(home, *args, env=_env(home / "no-config", TQDM_MININTERVAL="0"))
    assert result.returncode == 0, drawing
    shown = {int(p) for p in re.findall(r"(\d+)%\|", drawing)}
    assert {25, 50, 75} <= shown and max(shown) == 100, drawing
    assert "16 MiB/16 MiB" in drawing and "file 1/1" in drawing, drawing

def test_no_progress_when_not_a_terminal(run, model, keys, tmp_path):
    assert ok(run("encrypt", model, "-o", tmp_path / "out", "-r", keys / "customer.pub.jwk")).stderr == ""


# ---------------------------------------------------------------- demo


def _check_demo(result, root=None):
    out = ok(result).stdout
    assert len(re.findall(r"^\[\d/7\] .+  \(\d+\.\d\d s\)$", out, re.M)) == 7, out
    assert "Identical: the decrypted model is the original, bit for bit." in out
    assert f"{cli.PROG} encrypt model -o model-encrypted -r keys/customer.pub.jwk --sign-key keys/publisher.jwk" in out
    assert "Next, on your own model" in out
    return out


def test_demo_without_transformers_keeps_outputs_with_dir(run, tmp_path):
    out = _check_demo(run("demo", "--no-transformers", "--dir", tmp_path / "demo"))
    assert "every byte equal = True" in out
    root = tmp_path / "demo"
    assert (root / "keys" / "customer.jwk").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (root / "model-encrypted").iterdir()) == sorted(p.name for p in (root / "model").iterdir())
    fails(run("demo", "--no-transformers", "--dir", root), cli.EXIT_USAGE, "not an empty directory")


def test_demo_with_transformers(run):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    out = _check_demo(run("demo"))
    assert "LlamaForCausalLM" in out and "max |difference| = 0.0" in out
    workdir = re.search(r"^Working in (.+)$", out, re.M).group(1)
    assert not Path(workdir).exists()
