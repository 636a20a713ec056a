"""ES256 signatures (ECDSA P-256 with SHA-256, RFC 7518 §3.4) beside EdDSA:
P-256 JWKs (RFC 7518 §6.2) as signing keys and trusted signers, refusals
(other keys, the other algorithm, a rewritten alg), and interop with the
`cryptography` package in both directions over the signing input of
FORMAT.md §7."""

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from test_independent_reader import canonical, parse_layout

import cryptotensors as ct
import cryptotensors.numpy as cn

SIG = "__cryptotensors_signature__"
SEG = 4096
SIGNER = ct.generate_key("P-256")
PUB = ct.public_key(SIGNER)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def tensors():
    rng = np.random.default_rng(11)
    return {"w": rng.standard_normal(3000, dtype=np.float32), "b": np.arange(5, dtype=np.int64)}


def check(loaded):
    want = tensors()
    assert sorted(loaded) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(loaded[k], v)


def split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, rest: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + rest


def signing_input(data: bytes, protected: str) -> bytes:
    """FORMAT.md §7: protected || "." || b64u(canonical_sig), computed by the
    independent reader from the header alone."""
    _, meta, tens, order, _ = parse_layout(data)
    return (protected + "." + b64u(canonical(meta, tens, order, {SIG}))).encode()


def public_numbers(jwk: dict) -> ec.EllipticCurvePublicKey:
    x, y = (int.from_bytes(unb64u(jwk[c]), "big") for c in ("x", "y"))
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def jwk_of(key: ec.EllipticCurvePrivateKey, private: bool) -> dict:
    nums = key.private_numbers()
    jwk = {"kty": "EC", "crv": "P-256",
           "x": b64u(nums.public_numbers.x.to_bytes(32, "big")),
           "y": b64u(nums.public_numbers.y.to_bytes(32, "big"))}
    if private:
        jwk["d"] = b64u(nums.private_value.to_bytes(32, "big"))
    return jwk


def thumbprint(jwk: dict) -> str:
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


# ---------------------------------------------------------------- keys


def test_generate_key_and_public_key():
    assert SIGNER["kty"] == "EC" and SIGNER["crv"] == "P-256" and SIGNER["alg"] == "ES256"
    for member in ("x", "y", "d"):
        assert len(unb64u(SIGNER[member])) == 32
    assert "d" not in PUB and {PUB[m] for m in ("x", "y", "kid")} == {SIGNER[m] for m in ("x", "y", "kid")}
    assert SIGNER["kid"] == thumbprint(SIGNER)  # RFC 7638: crv, kty, x, y
    for alias in ("ES256", "EC", "p256"):
        k = ct.generate_key(alias)
        assert (k["kty"], k["crv"]) == ("EC", "P-256") and k["kid"] != SIGNER["kid"]
    # The point is the one of d, as `cryptography` computes it.
    priv = ec.derive_private_key(int.from_bytes(unb64u(SIGNER["d"]), "big"), ec.SECP256R1())
    assert jwk_of(priv, private=True) == {k: SIGNER[k] for k in ("kty", "crv", "x", "y", "d")}


def test_malformed_ec_keys_refused():
    y = bytearray(unb64u(PUB["y"]))
    y[-1] ^= 1
    with pytest.raises(ct.SafetensorError, match="not a point on the P-256 curve"):
        ct.public_key(dict(PUB, y=b64u(bytes(y))))
    with pytest.raises(ct.SafetensorError, match="32 bytes"):
        ct.public_key(dict(PUB, x=b64u(bytes(31))))
    other = ct.generate_key("P-256")
    with pytest.raises(ct.SafetensorError, match="does not match") as info:
        ct.public_key(dict(SIGNER, d=other["d"]))
    assert other["d"] not in str(info.value) and SIGNER["d"] not in str(info.value)
    with pytest.raises(ct.SafetensorError, match="alg"):
        ct.public_key(dict(PUB, alg="EdDSA"))
    with pytest.raises(ct.SafetensorError):
        cn.load(cn.save(tensors(), sign_with=SIGNER), trusted_signers=dict(PUB, y=b64u(bytes(y))))


def test_ec_key_is_no_recipient():
    with pytest.raises(ct.SafetensorError, match="signs"):
        cn.save(tensors(), encrypt_for=PUB)


# ---------------------------------------------------------------- save and load


@pytest.fixture(scope="module")
def signed():
    return cn.save(tensors(), metadata={"format": "np"}, segment_size=SEG, sign_with=SIGNER)


def test_signed_round_trip(signed, tmp_path):
    header, _ = split(signed)
    protected = json.loads(unb64u(header["__metadata__"][SIG].split(".")[0]))
    assert protected == {"alg": "ES256", "kid": SIGNER["kid"], "jwk": PUB}
    check(cn.load(signed, trusted_signers=PUB))
    check(cn.load(signed, trusted_signers=[ct.generate_key("Ed25519"), PUB]))
    check(cn.load(signed))  # no trust configured: the signature is checked against its own jwk
    path = tmp_path / "m.safetensors"
    path.write_bytes(signed)
    with ct.safe_open(path, "np", trusted_signers=PUB) as f:
        assert f.describe()["signer"] == SIGNER["kid"]
        np.testing.assert_array_equal(f.get_tensor("b"), tensors()["b"])


def test_encrypted_and_signed(tmp_path):
    x = ct.generate_key("X25519")
    data = cn.save(tensors(), encrypt_for=ct.public_key(x), sign_with=SIGNER)
    check(cn.load(data, keys=x, trusted_signers=PUB))
    with pytest.raises(ct.SignatureError):
        cn.load(data, keys=x, trusted_signers=ct.public_key(ct.generate_key("P-256")))


@pytest.mark.parametrize("trusted", ["other P-256", "Ed25519"])
def test_refused_with_other_trusted_key(signed, trusted):
    kind = "P-256" if trusted == "other P-256" else "Ed25519"
    with pytest.raises(ct.SignatureError, match="untrusted"):
        cn.load(signed, trusted_signers=ct.public_key(ct.generate_key(kind)))


def test_eddsa_file_refused_with_trusted_ec_key():
    ed = ct.generate_key("Ed25519")
    data = cn.save(tensors(), sign_with=ed)
    check(cn.load(data, trusted_signers=ct.public_key(ed)))
    with pytest.raises(ct.SignatureError, match="untrusted"):
        cn.load(data, trusted_signers=PUB)


@pytest.mark.parametrize("alg", ["EdDSA", "ES384", "none", "HS256"])
def test_rewritten_alg_refused(signed, alg):
    """The trusted key's type fixes the algorithm: the file cannot choose another."""
    header, rest = split(signed)
    protected, _, sig = header["__metadata__"][SIG].split(".")
    p = json.loads(unb64u(protected))
    p["alg"] = alg
    header["__metadata__"][SIG] = b64u(json.dumps(p).encode()) + ".." + sig
    with pytest.raises(ct.SignatureError, match="invalid"):
        cn.load(join(header, rest), trusted_signers=PUB)
    with pytest.raises(ct.SignatureError, match="invalid"):
        cn.load(join(header, rest))


@pytest.mark.parametrize("length", [0, 63, 65, 72])
def test_bad_signature_length_refused(signed, length):
    header, rest = split(signed)
    protected, _, sig = header["__metadata__"][SIG].split(".")
    raw = (unb64u(sig) * 2)[:length]
    header["__metadata__"][SIG] = protected + ".." + b64u(raw)
    with pytest.raises(ct.SignatureError):
        cn.load(join(header, rest), trusted_signers=PUB)


def test_resign_with_rewrap(tmp_path):
    ed = ct.generate_key("Ed25519")
    path = tmp_path / "m.safetensors"
    oct_key = ct.generate_key("oct")
    path.write_bytes(cn.save(tensors(), encrypt_for=oct_key, sign_with=ed))
    ct.rewrap(path, keys=oct_key, trusted_signers=ct.public_key(ed), sign_with=SIGNER)
    check(cn.load_file(path, keys=oct_key, trusted_signers=PUB))
    with pytest.raises(ct.SignatureError):
        cn.load_file(path, keys=oct_key, trusted_signers=ct.public_key(ed))


# ---------------------------------------------------------------- interop with `cryptography`


def test_cryptography_verifies_our_signature(signed):
    header, _ = split(signed)
    protected, empty, sig = header["__metadata__"][SIG].split(".")
    assert empty == ""
    raw = unb64u(sig)
    assert len(raw) == 64  # r || s, 32 bytes each
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    msg = signing_input(signed, protected)
    public_numbers(PUB).verify(encode_dss_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public_numbers(PUB).verify(encode_dss_signature(r, s), msg + b"x", ec.ECDSA(hashes.SHA256()))


def test_our_loader_verifies_cryptography_signature(signed):
    """A JWS made by `cryptography` over the same signing input, with a key
    `cryptography` generated, verifies in our loader."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = jwk_of(key, private=False)
    header, rest = split(signed)
    protected = b64u(json.dumps({"alg": "ES256", "kid": thumbprint(pub), "jwk": pub}).encode())
    der = key.sign(signing_input(signed, protected), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    header["__metadata__"][SIG] = protected + ".." + b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    forged = join(header, rest)
    check(cn.load(forged, trusted_signers=pub))
    assert ct.public_key(pub)["kid"] == thumbprint(pub)  # same key id on both sides
    with pytest.raises(ct.SignatureError, match="untrusted"):
        cn.load(forged, trusted_signers=PUB)
    # The DER form `cryptography` produces natively is not JWS ES256.
    header["__metadata__"][SIG] = protected + ".." + b64u(der)
    with pytest.raises(ct.SignatureError, match="invalid"):
        cn.load(join(header, rest), trusted_signers=pub)


def test_cryptography_key_signs_in_our_writer():
    """A private key made by `cryptography`, as a JWK, is a sign_with key."""
    key = ec.generate_private_key(ec.SECP256R1())
    data = cn.save(tensors(), sign_with=jwk_of(key, private=True))
    header, _ = split(data)
    protected, _, sig = header["__metadata__"][SIG].split(".")
    raw = unb64u(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.public_key().verify(der, signing_input(data, protected), ec.ECDSA(hashes.SHA256()))
    check(cn.load(data, trusted_signers=jwk_of(key, private=False)))


# ---------------------------------------------------------------- CLI


def test_cli_keygen_p256_sign_and_verify(tmp_path):
    bin_ = Path(sys.executable).parent / "cryptotensors"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOTENSORS_")}
    env["CRYPTOTENSORS_CONFIG_DIR"] = str(tmp_path / "no-config")

    def run(*args):
        r = subprocess.run([str(bin_), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return r

    sk, pk, rk, rpk = (tmp_path / n for n in ("sk.jwk", "sk.pub.jwk", "r.jwk", "r.pub.jwk"))
    run("keygen", "--type", "p256", "-o", sk, "-q")
    assert json.loads(sk.read_text())["crv"] == "P-256" and (sk.stat().st_mode & 0o777) == 0o600
    run("keygen", "-y", sk, "-o", pk)
    run("keygen", "--type", "x25519", "-o", rk, "-q")
    run("keygen", "-y", rk, "-o", rpk)
    src, out = tmp_path / "m.safetensors", tmp_path / "enc.safetensors"
    cn.save_file(tensors(), src)
    run("encrypt", src, "-o", out, "-r", rpk, "--sign-key", sk)
    assert "signature valid" in run("verify", out, "--trusted-signer", pk, "-k", rk).stdout
    check(cn.load_file(out, keys=json.loads(rk.read_text()), trusted_signers=json.loads(pk.read_text())))
