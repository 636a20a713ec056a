"""The tamper matrix (issue 4): an encrypted and signed file, a partially
encrypted one and a plain signed one; every mutation is refused, through
every read path, and no data is returned."""

import base64
import hashlib
import json
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cryptotensors as ct
import cryptotensors.numpy as cn
import cryptotensors.torch as ctt

SEG = 4096
SIGNER = ct.generate_key("Ed25519")
KEY = ct.generate_key("X25519")
OTHER = ct.generate_key("oct")


def tensors():
    rng = np.random.default_rng(3)
    return {
        "a": rng.standard_normal(4096, dtype=np.float32),  # 4 segments
        "b": rng.standard_normal(4096, dtype=np.float32),  # same size as a, for swaps
        "norm": np.ones(16, dtype=np.float32),
    }


KINDS = {
    "encrypted_signed": dict(encrypt_for=[ct.public_key(KEY), OTHER], sign_with=SIGNER),
    "partial": dict(encrypt_for=[ct.public_key(KEY), OTHER], encrypted_tensors=["a"]),
    "plain_signed": dict(sign_with=SIGNER),
}


def load_options(kind):
    opts = {"keys": KEY}
    if "sign_with" in KINDS[kind]:
        opts["trusted_signers"] = ct.public_key(SIGNER)
    return opts


@pytest.fixture(scope="module", params=sorted(KINDS))
def original(request):
    kind = request.param
    return kind, cn.save(tensors(), metadata={"format": "np"}, segment_size=SEG, **KINDS[kind])


def split(data):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), n, data[8 + n :]


def join(header, rest):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + rest


def data_start(data):
    return 8 + struct.unpack("<Q", data[:8])[0]


def read_paths(data, tmp_path, opts):
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)

    def via_get_slice():
        with ct.safe_open(path, "np", **opts) as f:
            return {k: f.get_slice(k)[1:] for k in f.keys()}

    def via_get_tensor():
        with ct.safe_open(path, "pt", **opts) as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    return {
        "safe_open+get_tensor": via_get_tensor,
        "get_slice": via_get_slice,
        "load_file": lambda: cn.load_file(path, **opts),
        "torch.load_file(pread)": lambda: ctt.load_file(path, backend="pread", **opts),
        "numpy.load(bytes)": lambda: cn.load(data, **opts),
        "deserialize": lambda: ct.deserialize(data, **opts),
    }


def assert_refused(data, tmp_path, opts, error=ct.SafetensorError):
    for label, read in read_paths(data, tmp_path, opts).items():
        with pytest.raises(error):
            read()
            pytest.fail(f"{label} returned data")


def test_original_loads_through_every_path(original, tmp_path):
    kind, data = original
    for read in read_paths(data, tmp_path, load_options(kind)).values():
        read()


def test_single_bit_flips_anywhere(original, tmp_path):
    kind, data = original
    rng = np.random.default_rng(11)
    start = data_start(data)
    # Positions across the header JSON, the data and the trailer.
    positions = list(rng.integers(8, start, 12)) + list(rng.integers(start, len(data), 24)) + [len(data) - 1]
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        for read in read_paths(bytes(bad), tmp_path, load_options(kind)).values():
            try:
                read()
            except ct.SafetensorError:
                continue
            # A flip inside header padding or JSON whitespace changes nothing
            # the format reads; anything else must have failed.
            assert data[pos] in b" \t\r\n", f"flip at {pos} returned data"


def swap(data, a, b, n):
    out = bytearray(data)
    out[a : a + n], out[b : b + n] = data[b : b + n], data[a : a + n]
    return bytes(out)


def test_swapped_segments_and_tensors(original, tmp_path):
    kind, data = original
    header, _, _ = split(data)
    start = data_start(data)
    a0 = start + header["a"]["data_offsets"][0]
    b0 = start + header["b"]["data_offsets"][0]
    assert_refused(swap(data, a0, a0 + SEG, SEG), tmp_path, load_options(kind))
    assert_refused(swap(data, a0, b0, 4096 * 4), tmp_path, load_options(kind))


def test_truncated_and_extended(original, tmp_path):
    kind, data = original
    for bad in (data[:-1], data[:-16], data[: data_start(data) + 10], data + b"\0", data + b"x" * 4096):
        assert_refused(bad, tmp_path, load_options(kind))


def edit(data, fn):
    header, _, rest = split(data)
    fn(header)
    return join(header, rest)


def edit_envelope(fn):
    def inner(header):
        env = json.loads(header["__metadata__"]["__cryptotensors__"])
        fn(env)
        header["__metadata__"]["__cryptotensors__"] = json.dumps(env, separators=(",", ":"))

    return inner


def header_edits(kind):
    edits = {
        "metadata": lambda h: h["__metadata__"].__setitem__("format", "pt"),
        "added metadata": lambda h: h["__metadata__"].__setitem__("x", "y"),
        "dtype": lambda h: h["a"].__setitem__("dtype", "I32"),
        "shape": lambda h: h["a"].__setitem__("shape", [64, 64]),
        "segment size": edit_envelope(lambda e: e.__setitem__("segment_size", 8192)),
    }
    if kind != "plain_signed":
        edits["recipient removed"] = edit_envelope(lambda e: e["encryption"]["recipients"].pop())
        edits["encrypted list"] = edit_envelope(lambda e: e["encryption"]["tensors"].append("norm"))
    return edits


def test_header_edits(original, tmp_path):
    kind, data = original
    for name, fn in header_edits(kind).items():
        bad = edit(data, fn)
        assert bad != data, name
        # Signed files fail on the signature; the unsigned partial file on its MAC.
        error = ct.SignatureError if "sign_with" in KINDS[kind] else ct.SafetensorError
        assert_refused(bad, tmp_path, load_options(kind), error)


def test_stripped_signature_is_refused_when_trust_is_configured(original, tmp_path):
    kind, data = original
    if "sign_with" not in KINDS[kind]:
        pytest.skip("unsigned")
    bad = edit(data, lambda h: h["__metadata__"].pop("__cryptotensors_signature__"))
    assert_refused(bad, tmp_path, load_options(kind), ct.SignatureError)


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def canonical(header, exclude):
    """FORMAT.md §3.4, written again here so the test does not trust the writer."""
    lp = lambda b: struct.pack(">Q", len(b)) + b  # noqa: E731
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k not in exclude}
    out = b"cryptotensors/v1 canonical header\0" + struct.pack(">Q", len(meta))
    for k in sorted(meta, key=lambda k: k.encode()):
        out += lp(k.encode()) + lp(meta[k].encode())
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: (header[k]["data_offsets"], k.encode()))
    out += struct.pack(">Q", len(names))
    for k in names:
        t = header[k]
        out += lp(k.encode()) + lp(t["dtype"].encode()) + struct.pack(">Q", len(t["shape"]))
        out += b"".join(struct.pack(">Q", d) for d in t["shape"]) + struct.pack(">QQ", *t["data_offsets"])
    return out


def test_resigned_with_an_unknown_key_is_untrusted(original, tmp_path):
    kind, data = original
    if "sign_with" not in KINDS[kind]:
        pytest.skip("unsigned")
    attacker = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    x = attacker.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(x)}
    header, _, rest = split(data)
    protected = b64u(json.dumps({"alg": "EdDSA", "kid": "attacker", "jwk": jwk}).encode())
    payload = canonical(header, {"__cryptotensors_signature__"})
    sig = attacker.sign(f"{protected}.{b64u(payload)}".encode())
    header["__metadata__"]["__cryptotensors_signature__"] = f"{protected}..{b64u(sig)}"
    forged = join(header, rest)
    assert_refused(forged, tmp_path, load_options(kind), ct.SignatureError)
    # Without trust configured the forged signature is self-consistent, but an
    # encrypted file still needs its MAC, which the attacker cannot forge.
    assert hashlib.sha256(forged).digest() != hashlib.sha256(data).digest()


def test_stripped_encryption_is_refused(tmp_path):
    plain = cn.save(tensors())
    assert_refused(plain, tmp_path, {"trusted_signers": ct.public_key(SIGNER)}, ct.SignatureError)
    assert_refused(plain, tmp_path, {"require_encryption": True}, ct.IntegrityError)
