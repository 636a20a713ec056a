"""Encrypted tensors: round trips, keys, errors and the promises of FORMAT.md."""

import json
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy as sn
import safetensors.torch as stt
import torch

import cryptotensors as ct
import cryptotensors.numpy as cn
import cryptotensors.torch as ctt
from cryptotensors._frameworks import torch_types

ALGS = ["AES-256-GCM", "ChaCha20-Poly1305"]


def recipient(kind):
    """(key given to the writer, key given to the reader)."""
    k = ct.generate_key(kind)
    return (k if kind == "oct" else ct.public_key(k)), k


def header_of(path_or_bytes):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


NP_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.uint64, np.int32, np.uint32, np.int16, np.uint16, np.int8, np.uint8, np.bool_, np.complex64]
TORCH_DTYPES = sorted(set(torch_types().values()), key=str)  # every format dtype this torch has


def np_tensors(rng):
    out = {}
    for i, dt in enumerate(NP_DTYPES):
        shape = [(2, 3), (5000,), (0, 3), ()][i % 4]
        out[f"t{i}.{np.dtype(dt).name}"] = np.asarray(rng.standard_normal(shape) * 100).astype(dt)
    return out


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("kind", ["oct", "X25519"])
@pytest.mark.parametrize("partial", [False, True])
def test_numpy_round_trip_every_dtype(tmp_path, alg, kind, partial):
    rng = np.random.default_rng(0)
    d = np_tensors(rng)
    to, key = recipient(kind)
    sel = sorted(d)[::2] if partial else None
    path = tmp_path / "m.safetensors"
    cn.save_file(d, path, metadata={"format": "np"}, encrypt_for=to, encrypted_tensors=sel, algorithm=alg, segment_size=4096)
    got = cn.load_file(path, keys=key)
    for k, v in d.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype
    with ct.safe_open(path, "np", keys=key) as f:
        assert f.metadata() == {"format": "np"}
        desc = f.describe()
        assert desc["algorithm"] == alg
        assert desc["encrypted"] == (sel or sorted(d))
    back = cn.load(cn.save(d, encrypt_for=to, encrypted_tensors=sel, algorithm=alg), keys=key)
    for k, v in d.items():
        np.testing.assert_array_equal(back[k], v)


@pytest.mark.parametrize("alg", ALGS)
def test_torch_round_trip_every_dtype(tmp_path, alg):
    to, key = recipient("X25519")
    d = {}
    for i, dt in enumerate(TORCH_DTYPES):
        shape = (4, 6) if dt != torch.float4_e2m1fn_x2 else (4, 3)
        d[f"w{i}"] = torch.randint(0, 100, shape, dtype=torch.uint8).view(torch.uint8).view(dt) if dt.itemsize == 1 else torch.randint(0, 100, (4, 6)).to(torch.float32).to(dt) if dt != torch.bool else torch.rand(4, 6) > 0.5
    path = tmp_path / "m.safetensors"
    ctt.save_file(d, path, encrypt_for=to, algorithm=alg)
    got = ctt.load_file(path, keys=key)
    for k, v in d.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert torch.equal(got[k].view(torch.uint8), v.view(torch.uint8))
    got = ctt.load(ctt.save(d, encrypt_for=to), keys=key)
    assert all(torch.equal(got[k].view(torch.uint8), v.view(torch.uint8)) for k, v in d.items())


@pytest.mark.parametrize("dtype", ["F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "BF16", "F8_E5M2FNUZ"])
def test_exotic_dtypes_through_the_bytes_api(dtype):
    # Dtypes numpy lacks go through raw headers: write a plain file by hand,
    # re-encrypt its bytes via deserialize/serialize where TensorSpec allows.
    key = ct.generate_key("oct")
    spec_name = ct._core.DTYPES[dtype][1]
    if spec_name is None:
        pytest.skip(f"safetensors 0.8 TensorSpec cannot write {dtype} either")
    raw = bytes(range(64))
    # Storage shapes of 64 bytes; float4_e2m1fn_x2 packs two values a byte.
    shape = {"BF16": [2, 16]}.get(dtype, [2, 32])
    buf = np.frombuffer(raw, dtype=np.uint8).copy()
    spec = ct.TensorSpec(dtype=spec_name, shape=shape, data_ptr=buf.ctypes.data, data_len=buf.nbytes)
    data = ct.serialize({"x": spec}, encrypt_for=key)
    [(name, info)] = ct.deserialize(data, keys=key)
    assert info["dtype"] == dtype and info["data"] == raw


def test_get_slice_decrypts_only_what_it_needs_and_matches_numpy(tmp_path):
    key = ct.generate_key("oct")
    a = np.arange(64 * 1000, dtype=np.float32).reshape(64, 1000)
    path = tmp_path / "s.safetensors"
    cn.save_file({"a": a}, path, encrypt_for=key, segment_size=4096)
    with ct.safe_open(path, "np", keys=key) as f:
        s = f.get_slice("a")
        assert s.get_shape() == [64, 1000] and s.get_dtype() == "F32"
        for idx in [np.s_[8:16], np.s_[3], np.s_[-1, 5:900:7], np.s_[..., 999], np.s_[::9, ::-1 + 2], np.s_[60:64]]:
            np.testing.assert_array_equal(s[idx], a[idx])
        # Out of bounds is refused exactly as for a plain file (safetensors' slicer rules).
        with pytest.raises(ct.SafetensorError):
            s[60:200]
    # Corrupt a segment far from the first rows: a slice of the first rows
    # still reads, the corrupted rows fail.
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[8 + n + 200_000] ^= 1
    path.write_bytes(bytes(data))
    with ct.safe_open(path, "np", keys=key) as f:
        np.testing.assert_array_equal(f.get_slice("a")[0:2], a[0:2])
        with pytest.raises(ct.IntegrityError):
            f.get_slice("a")[50:60]
        with pytest.raises(ct.IntegrityError):
            f.get_tensor("a")


def test_missing_and_wrong_keys(tmp_path):
    key = ct.generate_key("oct")
    path = tmp_path / "k.safetensors"
    cn.save_file({"a": np.ones(10, np.float32)}, path, encrypt_for=key)
    with pytest.raises(ct.KeyNotFoundError) as e:
        cn.load_file(path)
    assert key["kid"] in str(e.value)
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path, keys=ct.generate_key("oct"))
    impostor = dict(ct.generate_key("oct"), kid=key["kid"])  # same kid, other secret
    with pytest.raises(ct.IntegrityError):
        cn.load_file(path, keys=impostor)
    assert issubclass(ct.KeyNotFoundError, ct.SafetensorError) and issubclass(ct.IntegrityError, ct.SafetensorError)


def test_flipped_bits_never_return_data(tmp_path):
    key = ct.generate_key("X25519")
    a = np.arange(3000, dtype=np.float32)
    data = cn.save({"a": a, "b": np.ones(7, np.int8)}, encrypt_for=ct.public_key(key), segment_size=4096)
    rng = np.random.default_rng(1)
    for pos in rng.integers(0, len(data), 60):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(ct.SafetensorError):
            cn.load(bytes(bad), keys=key)
        with pytest.raises(ct.SafetensorError):
            ct.deserialize(bytes(bad), keys=key)


def test_stock_safetensors_fails_loudly_but_header_still_parses(tmp_path):
    key = ct.generate_key("oct")
    t = {"w": torch.randn(8, 8), "b": torch.zeros(3, dtype=torch.bfloat16)}
    path = tmp_path / "e.safetensors"
    ctt.save_file(t, path, metadata={"format": "pt"}, encrypt_for=key)
    for load in (stt.load_file, sn.load_file):
        with pytest.raises(safetensors.SafetensorError, match="incomplete metadata"):
            load(path)
    with pytest.raises(safetensors.SafetensorError):
        stt.load(path.read_bytes())
    h = header_of(str(path))
    assert h["w"]["dtype"] == "F32" and h["w"]["shape"] == [8, 8]
    assert h["b"]["dtype"] == "BF16" and h["b"]["shape"] == [3]
    assert h["__metadata__"]["format"] == "pt"
    assert all(isinstance(v, str) for v in h["__metadata__"].values())
    assert key["k"] not in path.read_bytes().decode("latin-1")


def test_plain_save_with_no_options_is_byte_identical(tmp_path):
    t = {"w": torch.randn(4, 4), "i": torch.arange(3)}
    assert ctt.save(t, metadata={"format": "pt"}) == stt.save(t, metadata={"format": "pt"})


def test_keys_from_environment_inline_and_file(tmp_path, monkeypatch):
    key = ct.generate_key("oct")
    path = tmp_path / "e.safetensors"
    cn.save_file({"a": np.arange(5)}, path, encrypt_for=key)
    monkeypatch.setenv("CRYPTOTENSORS_KEYS", json.dumps({"keys": [key]}))
    np.testing.assert_array_equal(cn.load_file(path)["a"], np.arange(5))
    jwks = tmp_path / "keys.jwks"
    jwks.write_text(json.dumps({"keys": [key]}))
    monkeypatch.setenv("CRYPTOTENSORS_KEYS", str(jwks))
    with ct.safe_open(path, "pt") as f:  # unchanged code decrypts
        assert f.get_tensor("a").tolist() == list(range(5))
    monkeypatch.delenv("CRYPTOTENSORS_KEYS")
    monkeypatch.setenv("CRYPTOTENSORS_CONFIG_DIR", str(tmp_path))
    np.testing.assert_array_equal(cn.load_file(path)["a"], np.arange(5))


def test_jwk_rules():
    k = ct.generate_key("oct")
    assert k["kty"] == "oct" and len(k["k"]) == 43 and "=" not in k["k"]
    x = ct.generate_key("X25519")
    assert x["crv"] == "X25519" and "d" in x and "d" not in ct.public_key(x)
    e = ct.generate_key("Ed25519")
    assert ct.public_key(e)["kid"] == e["kid"]
    no_k = {"kty": "oct", "kid": "x"}
    with pytest.raises(ct.SafetensorError, match='"k"'):
        cn.save({"a": np.ones(1)}, encrypt_for=no_k)
    with pytest.raises(ct.SafetensorError):
        cn.save({"a": np.ones(1)}, encrypt_for=dict(k, k=k["k"] + "=="))
    with pytest.raises(ct.SafetensorError):
        cn.save({"a": np.ones(1)}, encrypt_for=e)  # a signing key is no recipient
    with pytest.raises(ct.SafetensorError):
        ct.generate_key("rsa")


def test_rfc7638_thumbprint_is_the_default_kid():
    import base64
    import hashlib

    x = ct.public_key(ct.generate_key("X25519"))
    canon = json.dumps({"crv": "X25519", "kty": "OKP", "x": x["x"]}, separators=(",", ":"), sort_keys=True)
    tp = base64.urlsafe_b64encode(hashlib.sha256(canon.encode()).digest()).rstrip(b"=").decode()
    assert x["kid"] == tp


def test_secrets_never_in_errors_or_reprs(tmp_path):
    key = ct.generate_key("oct")
    bad = dict(key, k=key["k"][:-2])
    with pytest.raises(ct.SafetensorError) as e:
        cn.save({"a": np.ones(1)}, encrypt_for=bad)
    assert key["k"][:-2] not in str(e.value)
    path = tmp_path / "e.safetensors"
    cn.save_file({"a": np.ones(3)}, path, encrypt_for=key)
    with ct.safe_open(path, "np", keys=key) as f:
        assert key["k"] not in repr(f) and key["k"] not in str(f.describe())
    impostor = dict(ct.generate_key("oct"), kid=key["kid"])
    with pytest.raises(ct.IntegrityError) as e:
        cn.load_file(path, keys=impostor)
    assert impostor["k"] not in str(e.value) and key["k"] not in str(e.value)


def test_signatures_and_trust(tmp_path, monkeypatch):
    signer = ct.generate_key("Ed25519")
    other = ct.generate_key("Ed25519")
    key = ct.generate_key("oct")
    d = {"a": np.arange(10, dtype=np.float32)}
    signed = tmp_path / "signed.safetensors"
    cn.save_file(d, signed, encrypt_for=key, sign_with=signer)
    np.testing.assert_array_equal(cn.load_file(signed, keys=key, trusted_signers=ct.public_key(signer))["a"], d["a"])
    with pytest.raises(ct.SignatureError, match="untrusted"):
        cn.load_file(signed, keys=key, trusted_signers=ct.public_key(other))
    unsigned = tmp_path / "unsigned.safetensors"
    cn.save_file(d, unsigned, encrypt_for=key)
    with pytest.raises(ct.SignatureError, match="missing"):
        cn.load_file(unsigned, keys=key, trusted_signers=ct.public_key(signer))
    plain = tmp_path / "plain.safetensors"
    sn.save_file(d, plain)
    with pytest.raises(ct.SignatureError):
        cn.load_file(plain, trusted_signers=ct.public_key(signer))
    monkeypatch.setenv("CRYPTOTENSORS_TRUSTED_SIGNERS", json.dumps([ct.public_key(other)]))
    with pytest.raises(ct.SignatureError):
        cn.load_file(signed, keys=key)
    monkeypatch.delenv("CRYPTOTENSORS_TRUSTED_SIGNERS")
    with pytest.raises(ct.IntegrityError, match="requires encryption"):
        cn.load_file(plain, require_encryption=True)
    cn.load_file(signed, keys=key, require_encryption=True)


def test_signed_plain_file_detects_tampering(tmp_path):
    signer = ct.generate_key("Ed25519")
    path = tmp_path / "p.safetensors"
    cn.save_file({"a": np.arange(2000, dtype=np.int32)}, path, sign_with=signer, segment_size=4096)
    trusted = ct.public_key(signer)
    assert cn.load_file(path, trusted_signers=trusted)["a"][-1] == 1999
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[8 + n + 5000] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ct.IntegrityError):
        cn.load_file(path, trusted_signers=trusted)


def test_reserved_metadata_keys_are_refused():
    with pytest.raises(ct.SafetensorError, match="reserved"):
        cn.save({"a": np.ones(1)}, metadata={"__cryptotensors__": "x"}, encrypt_for=ct.generate_key("oct"))


def test_regex_selection_and_errors():
    key = ct.generate_key("oct")
    d = {"model.layers.0.mlp.w": np.ones(4), "model.layers.0.norm": np.ones(4), "lm_head": np.ones(4)}
    data = cn.save(d, encrypt_for=key, encrypted_tensors=r"mlp|lm_head")
    h = header_of(data)
    env = json.loads(h["__metadata__"]["__cryptotensors__"])
    assert env["encryption"]["tensors"] == ["lm_head", "model.layers.0.mlp.w"]
    with pytest.raises(ct.SafetensorError):
        cn.save(d, encrypt_for=key, encrypted_tensors=["nope"])
    with pytest.raises(ct.SafetensorError):
        cn.save(d, encrypt_for=key, segment_size=1000)
    with pytest.raises(ct.SafetensorError):
        cn.save(d, encrypt_for=key, algorithm="DES")


def test_byte_ranges_aligned_and_not(tmp_path):
    # The GPU path stages tensors in byte ranges; check every kind of range.
    key = ct.generate_key("oct")
    a = np.random.default_rng(5).integers(0, 255, 5 * 4096 + 100, dtype=np.uint8)
    path = tmp_path / "r.safetensors"
    cn.save_file({"a": a}, path, encrypt_for=key, segment_size=4096)
    with ct.safe_open(path, "np", keys=key) as f:
        for off, n in [(0, 4096), (4096, 8192), (0, len(a)), (4096 * 5, 100), (10, 5000), (4095, 2), (len(a), 0)]:
            out = np.empty(n, dtype=np.uint8)
            f._handle.read_range_into("a", off, out)
            np.testing.assert_array_equal(out, a[off : off + n])
        with pytest.raises(ct.SafetensorError):
            f._handle.read_range_into("a", len(a) - 1, np.empty(2, dtype=np.uint8))
