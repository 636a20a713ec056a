"""Files of cryptotensors 0.2.3 (tests/vectors/legacy, written by the real
package): refused by every ordinary loader, migrated bit-identically to
what the old package loads, and refused when tampered with."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cryptotensors as ct
from cryptotensors.numpy import load, load_file

VECTORS = Path(__file__).parent / "vectors" / "legacy"
CASES = json.loads((VECTORS / "cases.json").read_text())["cases"]
KEYS = json.loads((VECTORS / "keys.json").read_text())
PUB = json.loads((VECTORS / "keys.public.json").read_text())
BIN = Path(sys.executable).parent / "cryptotensors"


@pytest.fixture(scope="module")
def recipient():
    return ct.generate_key("X25519")


def _migrate(src, dst, recipient, **kw):
    kw.setdefault("legacy_keys", KEYS)
    kw.setdefault("trusted_signers", PUB)
    return ct.migrate(src, dst, encrypt_for=ct.public_key(recipient), **kw)


def _read(path):
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path, header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(len(text).to_bytes(8, "little") + text + data)


def _edit(tmp_path, case, change=None, data_change=None):
    """A copy of a vector with its header (parsed, then re-serialized) and
    data changed."""
    header, data = _read(VECTORS / f"{case}.safetensors")
    if change:
        change(header)
    data = bytearray(data)
    if data_change:
        data_change(header, data)
    out = tmp_path / f"{case}.edited.safetensors"
    _write(out, header, bytes(data))
    return out


def _encryption(header):
    return json.loads(header["__metadata__"]["__encryption__"])


def _set_encryption(header, enc):
    header["__metadata__"]["__encryption__"] = json.dumps(enc, separators=(",", ":"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_migrated_is_bit_identical_to_the_old_load(case, tmp_path, recipient):
    out = tmp_path / "new.safetensors"
    report = _migrate(VECTORS / f"{case}.safetensors", out, recipient)
    expected = np.load(VECTORS / f"{case}.expected.npz")
    got = load_file(out, keys=recipient)
    assert sorted(got) == sorted(expected.files)
    for name in expected.files:
        assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape
        assert got[name].tobytes() == expected[name].tobytes(), name
    info = CASES[case]
    assert report["version"] == int(info["version"]) and report["algorithm"] == info["alg"]
    assert report["signature_verified"] is True
    assert sorted(report["plain_tensors"]) == sorted(set(expected.files) - set(info["encrypted"]))
    # The new file is ours: encrypted exactly where the old one was, and
    # its user metadata carried (the old format's entries dropped).
    desc = ct.inspect(out)
    assert {t["name"] for t in desc["tensors"] if t["encrypted"]} == set(info["encrypted"])
    with ct.safe_open(out, "np", keys=recipient) as f:
        assert f.metadata() == {"note": "legacy é", "format": "np"}
    with pytest.raises(ct.KeyNotFoundError):
        load_file(out)


def test_encrypt_all_encrypts_the_old_plain_tensors(tmp_path, recipient):
    out = tmp_path / "new.safetensors"
    _migrate(VECTORS / "v2_partial.safetensors", out, recipient, encrypt_all=True)
    assert all(t["encrypted"] for t in ct.inspect(out)["tensors"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_ordinary_loaders_refuse_legacy_files(case):
    path = VECTORS / f"{case}.safetensors"
    for call in (lambda: load_file(path), lambda: ct.safe_open(path, "np"), lambda: ct.safe_open(path, "np", keys=ct.generate_key())):
        with pytest.raises(ct.LegacyFormatError) as err:
            call()
        assert str(path) in str(err.value)
        assert "0.2.3" in str(err.value) and "cryptotensors migrate" in str(err.value)
    with pytest.raises(ct.LegacyFormatError):
        load(path.read_bytes())
    with pytest.raises(ct.LegacyFormatError):
        ct.deserialize(path.read_bytes())
    assert issubclass(ct.LegacyFormatError, ct.SafetensorError)


def test_torch_loader_refuses_legacy_files():
    torch_mod = pytest.importorskip("cryptotensors.torch")
    with pytest.raises(ct.LegacyFormatError):
        torch_mod.load_file(VECTORS / "v1_partial.safetensors")


def test_reserialized_header_still_verifies(tmp_path, recipient):
    """The control for the tamper tests below: rewriting the header with the
    same content keeps it valid, so each refusal is the change's doing."""
    src = _edit(tmp_path, "v2_aes256gcm")
    _migrate(src, tmp_path / "new.safetensors", recipient)


def test_header_flip_is_refused(tmp_path, recipient):
    def change(h):
        h["__metadata__"]["note"] = "legacy e"

    src = _edit(tmp_path, "v2_aes256gcm", change)
    with pytest.raises(ct.SignatureError):
        _migrate(src, tmp_path / "new.safetensors", recipient)
    assert not (tmp_path / "new.safetensors").exists()


@pytest.mark.parametrize("case", ["v1_aes128gcm", "v2_chacha20poly1305", "v2_default_chunk"])
def test_ciphertext_flip_is_refused(tmp_path, recipient, case):
    def flip(h, data):
        name = "big" if case == "v2_default_chunk" else "weight"
        start, end = h[name]["data_offsets"]
        data[end - 1] ^= 1

    src = _edit(tmp_path, case, data_change=flip)
    out = tmp_path / "new.safetensors"
    with pytest.raises(ct.IntegrityError):
        _migrate(src, out, recipient)
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("field", ["tag", "key_tag", "tags"])
def test_tag_flip_is_refused(tmp_path, recipient, field):
    case = "v2_aes256gcm" if field == "tags" else "v1_aes256gcm"

    def change(h):
        enc = _encryption(h)
        raw = bytearray(base64.b64decode(enc["weight"][field]))
        raw[-1] ^= 0x80
        enc["weight"][field] = base64.b64encode(bytes(raw)).decode()
        _set_encryption(h, enc)

    src = _edit(tmp_path, case, change)
    with pytest.raises(ct.SignatureError):
        _migrate(src, tmp_path / "a.safetensors", recipient)
    # Unsigned trust or not, the tag itself is checked.
    with pytest.raises(ct.IntegrityError):
        _migrate(src, tmp_path / "b.safetensors", recipient, trusted_signers=None, verify_signature=False)


def test_plain_tensors_were_never_authenticated(tmp_path, recipient):
    """What the old format could not protect: a flipped plain tensor goes
    through its own checks; migrate says it is unauthenticated."""
    def flip(h, data):
        start, _ = h["ids"]["data_offsets"]
        data[start] ^= 1

    src = _edit(tmp_path, "v1_partial", data_change=flip)
    report = _migrate(src, tmp_path / "new.safetensors", recipient)
    assert "ids" in report["plain_tensors"]


def test_keys_and_verifying_key_are_required(tmp_path, recipient):
    src = VECTORS / "v2_aes128gcm.safetensors"
    out = tmp_path / "new.safetensors"
    with pytest.raises(ct.SafetensorError, match="trusted_signers"):
        _migrate(src, out, recipient, trusted_signers=None)
    other = [k for k in KEYS["keys"] if k["alg"] != "aes128gcm"]
    with pytest.raises(ct.KeyNotFoundError):
        _migrate(src, out, recipient, legacy_keys=other)
    with pytest.raises(ct.KeyNotFoundError):
        _migrate(src, out, recipient, legacy_keys=[])
    # The right kid, the wrong bytes.
    wrong = [dict(k, k=base64.b64encode(os.urandom(16)).decode()) if k["alg"] == "aes128gcm" else k for k in KEYS["keys"]]
    with pytest.raises(ct.IntegrityError):
        _migrate(src, out, recipient, legacy_keys=wrong)
    stranger = [{"kty": "okp", "alg": "ed25519", "kid": PUB[0]["kid"], "x": base64.b64encode(os.urandom(32)).decode()}]
    with pytest.raises(ct.SignatureError):
        _migrate(src, out, recipient, trusted_signers=stranger)
    assert not out.exists()
    # Skipping the signature is explicit, and said.
    report = _migrate(src, out, recipient, trusted_signers=None, verify_signature=False)
    assert report["signature_verified"] is False


def test_keys_in_every_form_the_old_users_keep(tmp_path, recipient):
    src = VECTORS / "v1_chacha20poly1305.safetensors"
    master = next(k for k in KEYS["keys"] if k["alg"] == "chacha20poly1305")
    for form in (KEYS, KEYS["keys"], master, json.dumps(KEYS)):
        _migrate(src, tmp_path / "new.safetensors", recipient, legacy_keys=form)
    # Our own JWKs are not the old keys: base64url without padding is refused.
    ours = dict(master, k=base64.urlsafe_b64encode(base64.b64decode(master["k"])).decode().rstrip("="))
    if ours["k"] != master["k"]:
        with pytest.raises(ct.SafetensorError):
            _migrate(src, tmp_path / "new.safetensors", recipient, legacy_keys=[ours])


def test_unsigned_claimed_file_is_refused(tmp_path, recipient):
    src = _edit(tmp_path, "v1_aes256gcm", lambda h: h["__metadata__"].pop("__signature__"))
    with pytest.raises(ct.SignatureError):
        _migrate(src, tmp_path / "new.safetensors", recipient)


def _crypto_keys(change):
    def edit(h):
        ck = json.loads(h["__metadata__"]["__crypto_keys__"])
        change(ck)
        h["__metadata__"]["__crypto_keys__"] = json.dumps(ck)

    return edit


@pytest.mark.parametrize("change", [
    _crypto_keys(lambda ck: ck.update(version="3")),
    _crypto_keys(lambda ck: ck["enc"].update(alg="aes192gcm")),
    _crypto_keys(lambda ck: ck.update(chunk_size=0)),
    _crypto_keys(lambda ck: ck.update(extra=1)),
    _crypto_keys(lambda ck: ck["sign"].update(alg="rsa")),
])
def test_strict_crypto_keys(tmp_path, recipient, change):
    src = _edit(tmp_path, "v2_aes256gcm", change)
    with pytest.raises(ct.SafetensorError) as err:
        _migrate(src, tmp_path / "new.safetensors", recipient, trusted_signers=None, verify_signature=False)
    assert not isinstance(err.value, (ct.IntegrityError, ct.LegacyFormatError))


def _entry(change, tensor="ids"):
    def edit(h):
        enc = _encryption(h)
        change(enc[tensor])
        _set_encryption(h, enc)

    return edit


def _tags(n):
    return lambda e: e.update(tags=base64.b64encode(base64.b64decode(e["tags"])[: 16 * n]).decode())


@pytest.mark.parametrize("change", [
    _entry(_tags(1)),  # a missing tag (ids spans several chunks)
    _entry(lambda e: e.update(tags=e["tags"] + "AAAAAAAAAAAAAAAAAAAAAA==")),  # bad base64 length, extra bytes
    _entry(lambda e: e.update(base_iv=base64.b64encode(base64.b64decode(e["base_iv"])[:8] + b"\xff\xff\xff\xff").decode())),
    _entry(lambda e: e.update(iv=e["base_iv"])),  # a member of version 1
    _entry(lambda e: e.pop("tags")),
    _entry(lambda e: e.update(key_iv=base64.b64encode(b"x" * 11).decode())),
    _entry(lambda e: e.update(tags=e["tags"].rstrip("=").replace("+", "-"))),  # not standard padded base64
])
def test_strict_entries(tmp_path, recipient, change):
    src = _edit(tmp_path, "v2_aes256gcm", change)
    with pytest.raises(ct.SafetensorError) as err:
        _migrate(src, tmp_path / "new.safetensors", recipient, trusted_signers=None, verify_signature=False)
    assert "cryptotensors 0.2.3 header" in str(err.value)


def test_an_entry_for_a_missing_tensor_is_refused(tmp_path, recipient):
    def change(h):
        enc = _encryption(h)
        enc["ghost"] = enc["ids"]
        _set_encryption(h, enc)

    src = _edit(tmp_path, "v2_aes256gcm", change)
    with pytest.raises(ct.SafetensorError, match="ghost"):
        _migrate(src, tmp_path / "new.safetensors", recipient, trusted_signers=None, verify_signature=False)


def test_a_plain_file_is_not_migrated(tmp_path, recipient):
    from cryptotensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"a": np.zeros(3, np.float32)}, plain)
    with pytest.raises(ct.SafetensorError, match="not a cryptotensors 0.2.3 file"):
        _migrate(plain, tmp_path / "new.safetensors", recipient)


def _cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOTENSORS_")}
    env["CRYPTOTENSORS_CONFIG_DIR"] = str(cwd)
    return subprocess.run([str(BIN), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_migrates_a_model_directory(tmp_path, recipient):
    model = tmp_path / "model"
    model.mkdir()
    for case in ("v1_partial", "v2_aes128gcm"):
        (model / f"{case}.safetensors").write_bytes((VECTORS / f"{case}.safetensors").read_bytes())
    (model / "config.json").write_text('{"model_type": "x"}')
    (tmp_path / "legacy.json").write_text(json.dumps(KEYS))
    (tmp_path / "legacy_pub.json").write_text(json.dumps(PUB))
    (tmp_path / "r.pub.jwk").write_text(json.dumps(ct.public_key(recipient)))
    base = ["migrate", model, "--from-keys", tmp_path / "legacy.json", "-r", tmp_path / "r.pub.jwk"]

    r = _cli(*base, "-o", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2 and "--trusted-signer" in r.stderr and "--no-verify" in r.stderr
    assert not (tmp_path / "out").exists()

    r = _cli(*base, "-o", tmp_path / "out", "--trusted-signer", tmp_path / "legacy_pub.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "authenticated by nothing" in r.stderr and "ids, bias, flag" in r.stderr
    assert "covered the header only" in r.stderr
    assert (tmp_path / "out" / "config.json").read_text() == '{"model_type": "x"}'
    for case in ("v1_partial", "v2_aes128gcm"):
        got = load_file(tmp_path / "out" / f"{case}.safetensors", keys=recipient)
        expected = np.load(VECTORS / f"{case}.expected.npz")
        assert all(got[k].tobytes() == expected[k].tobytes() for k in expected.files)

    r = _cli(*base, "-o", tmp_path / "out2", "--no-verify", cwd=tmp_path)
    assert r.returncode == 0 and "NOT checked" in r.stderr

    # A tampered file in the directory: nothing is published.
    header, data = _read(model / "v2_aes128gcm.safetensors")
    data = bytearray(data)
    data[header["weight"]["data_offsets"][0]] ^= 1
    _write(model / "v2_aes128gcm.safetensors", header, bytes(data))
    r = _cli(*base, "-o", tmp_path / "out3", "--trusted-signer", tmp_path / "legacy_pub.json", cwd=tmp_path)
    assert r.returncode == 5, r.stderr
    assert not (tmp_path / "out3").exists()

    # The ordinary commands refuse a legacy file, pointing to migrate.
    r = _cli("decrypt", VECTORS / "v1_partial.safetensors", "-o", tmp_path / "d.safetensors", cwd=tmp_path)
    assert r.returncode != 0 and "migrate" in r.stderr


def test_transformers_patch_refuses_legacy_files():
    """Through safetensors' own names, as transformers and vLLM call them
    once cryptotensors.patch() has rebound them."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    import safetensors

    path = VECTORS / "v2_partial.safetensors"
    ct.patch()
    try:
        with pytest.raises(ct.LegacyFormatError):
            safetensors.safe_open(str(path), framework="pt", device="cpu")
        with pytest.raises(ct.LegacyFormatError):
            safetensors_torch.load_file(str(path))
        with pytest.raises(ct.LegacyFormatError):
            safetensors_torch.load(path.read_bytes())
    finally:
        ct.unpatch()


def test_cli_refuses_a_plain_file(tmp_path, recipient):
    from cryptotensors.numpy import save_file

    save_file({"a": np.zeros(3, np.float32)}, tmp_path / "plain.safetensors")
    (tmp_path / "legacy.json").write_text(json.dumps(KEYS))
    (tmp_path / "r.pub.jwk").write_text(json.dumps(ct.public_key(recipient)))
    r = _cli("migrate", tmp_path / "plain.safetensors", "-o", tmp_path / "out.safetensors", "--no-verify",
             "--from-keys", tmp_path / "legacy.json", "-r", tmp_path / "r.pub.jwk", cwd=tmp_path)
    assert r.returncode == 2 and "not a cryptotensors 0.2.3 file" in r.stderr
    assert not (tmp_path / "out.safetensors").exists()


# A large legacy file, written here from the format's facts (version 2,
# AES-256-GCM, 2 MiB chunks, signed with the vectors' signer), to show that
# migrate streams: the 0.2.3 package is not needed at test time.
_STREAM_CHILD = """
import json, sys
import cryptotensors as ct

def peak_kib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))

src, dst, keys, pub, recipient = sys.argv[1:6]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size
before = peak_kib()
ct.migrate(src, dst, legacy_keys=json.loads(keys), trusted_signers=json.loads(pub),
           encrypt_for=json.loads(recipient), num_threads=2)
print((peak_kib() - before) // 1024)
"""


def _legacy_v2_file(path, tensors, chunk=2 << 20):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731 (standard, padded: the old package's)
    master = next(k for k in KEYS["keys"] if k["kid"] == "master-aes256gcm")
    signer = next(k for k in KEYS["keys"] if k["kid"] == "signer-1")
    kek = AESGCM(base64.b64decode(master["k"]))
    entries, enc, data, offset = {}, {}, [], 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        key, key_iv, base_iv = os.urandom(32), os.urandom(12), os.urandom(12)
        wrapped = kek.encrypt(key_iv, key, None)
        aead, tags, out = AESGCM(key), [], []
        for i, at in enumerate(range(0, max(len(raw), 1), chunk)):
            nonce = base_iv[:8] + (int.from_bytes(base_iv[8:], "big") + i).to_bytes(4, "big")
            sealed = aead.encrypt(nonce, raw[at : at + chunk], None)
            out.append(sealed[:-16])
            tags.append(sealed[-16:])
        enc[name] = {"wrapped_key": b64(wrapped[:-16]), "key_iv": b64(key_iv), "key_tag": b64(wrapped[-16:]),
                     "base_iv": b64(base_iv), "tags": b64(b"".join(tags))}
        body = b"".join(out)
        entries[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(body)]}
        data.append(body)
        offset += len(body)
    compact = lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)  # noqa: E731
    meta = {
        "__crypto_keys__": compact({"version": "2", "chunk_size": chunk,
                                    "enc": {"kty": "oct", "alg": "aes256gcm", "kid": "master-aes256gcm"},
                                    "sign": {"kty": "okp", "alg": "ed25519", "kid": "signer-1"}}),
        "__encryption__": compact(enc),
        "__policy__": compact({"local": "package model\nallow = true", "remote": "package model\nallow = true"}),
    }
    signed = {"__metadata__": dict(sorted(meta.items())), **entries}
    message = json.dumps(signed, separators=(",", ":"), ensure_ascii=False).encode()
    meta["__signature__"] = b64(Ed25519PrivateKey.from_private_bytes(base64.b64decode(signer["d"])).sign(message))
    _write(path, {"__metadata__": meta, **entries}, b"".join(data))


def test_migrate_streams_one_tensor_at_a_time(tmp_path, recipient):
    rng = np.random.default_rng(0)
    tensors = {f"layer{i}.weight": rng.standard_normal(8 << 20, dtype=np.float32) for i in range(8)}  # 8 x 32 MiB
    src, dst = tmp_path / "big.safetensors", tmp_path / "big.migrated.safetensors"
    _legacy_v2_file(src, tensors)
    grew = int(subprocess.run(
        [sys.executable, "-c", _STREAM_CHILD, str(src), str(dst), json.dumps(KEYS), json.dumps(PUB),
         json.dumps(ct.public_key(recipient))],
        check=True, capture_output=True, text=True).stdout)
    # 256 MiB of weights: a migration holding the model would grow by more.
    assert grew < 160, f"peak memory grew by {grew} MiB migrating 256 MiB"
    back = load_file(dst, keys=recipient)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(back[name], arr)
