"""An independent cryptotensors reader, written from FORMAT.md alone.

Uses only the standard library and ``cryptography``; nothing from this project.
Section numbers (§) refer to FORMAT.md.
"""

import base64
import hashlib
import hmac
import json
import math
import re
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

VECTORS = Path(__file__).parent / "vectors"


class ReaderError(Exception):
    kind = "error"


class FormatError(ReaderError):
    kind = "format"


class UnsupportedError(ReaderError):
    kind = "unsupported"


class IntegrityError(ReaderError):
    kind = "integrity"


class KeyNotFoundError(ReaderError):
    kind = "key_not_found"


class SignatureError(ReaderError):
    kind = "signature"


# §2: dtype -> bit width
BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
        "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
        "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
ENV, MAC, SIG = "__cryptotensors__", "__cryptotensors_mac__", "__cryptotensors_signature__"
HPKE_ALG = "HPKE-Base-X25519-SHA256-ChaCha20Poly1305"
AEADS = {"AES-256-GCM": AESGCM, "ChaCha20-Poly1305": ChaCha20Poly1305}


def u64(n):
    return struct.pack(">Q", n)


def lp(b):
    return u64(len(b)) + b


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(s, length=None):
    """Strict base64url without padding (Conventions)."""
    if not isinstance(s, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", s) or len(s) % 4 == 1:
        raise FormatError(f"bad base64url: {s!r}")
    out = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if length is not None and len(out) != length:
        raise FormatError(f"expected {length} bytes, got {len(out)}")
    return out


def strict_json(text):
    def pairs(items):
        keys = [k for k, _ in items]
        if len(keys) != len(set(keys)):
            raise FormatError("duplicate JSON key")
        return dict(items)

    def no_const(c):
        raise FormatError(f"non-JSON constant {c}")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=no_const)
    except ValueError as e:
        raise FormatError(f"bad JSON: {e}") from e


def is_uint(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def hkdf_expand(prk, info, length):
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


# ---------------------------------------------------------------- §2 layout
def parse_layout(buf):
    if len(buf) < 8:
        raise FormatError("file shorter than 8 bytes")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > 100_000_000 or 8 + n > len(buf):
        raise FormatError("bad header length")
    try:
        header = strict_json(buf[8:8 + n].decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError("header is not UTF-8") from e
    if not isinstance(header, dict):
        raise FormatError("header is not an object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError("__metadata__ must map strings to strings")
    tensors = {}
    for name, t in header.items():
        if not isinstance(t, dict) or t.get("dtype") not in BITS:
            raise FormatError(f"bad tensor entry {name}")
        shape, offs = t.get("shape"), t.get("data_offsets")
        if not isinstance(shape, list) or not all(is_uint(d) for d in shape):
            raise FormatError(f"bad shape for {name}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(is_uint(o) for o in offs) or offs[0] > offs[1]:
            raise FormatError(f"bad data_offsets for {name}")
        nbits = math.prod(shape) * BITS[t["dtype"]]
        if nbits % 8 or offs[1] - offs[0] != nbits // 8:
            raise FormatError(f"size of {name} does not match dtype and shape")
        tensors[name] = {"dtype": t["dtype"], "shape": shape, "s": offs[0], "e": offs[1]}
    order = sorted(tensors, key=lambda k: (tensors[k]["s"], tensors[k]["e"], k))
    pos = 0
    for name in order:
        if tensors[name]["s"] != pos:
            raise FormatError("tensors do not tile the data buffer")
        pos = tensors[name]["e"]
    return n, meta, tensors, order, pos


# ---------------------------------------------------------------- §3.2 envelope
ENVELOPE_MEMBERS = {"version", "segment_size", "digest", "encryption", "policy", "trailer_length", "trailer_sha256"}
REQUIRED_MEMBERS = ENVELOPE_MEMBERS - {"encryption", "policy"}
MAX_RECIPIENTS, MAX_STANZA_BYTES = 64, 4096


def parse_envelope(text, tensors):
    """In the order of §9: JSON, version, v1 members, digest and algorithm, the rest."""
    env = strict_json(text)
    if not isinstance(env, dict):
        raise FormatError("envelope is not an object")
    version = env.get("version")
    if not is_uint(version):
        raise FormatError(f"version must be a non-negative integer, got {version!r}")
    if version != 1:
        raise UnsupportedError(f"unsupported version {version}")
    if set(env) - ENVELOPE_MEMBERS or REQUIRED_MEMBERS - set(env):
        raise FormatError(f"unknown or missing envelope members {sorted(set(env) ^ REQUIRED_MEMBERS)}")
    if not all(isinstance(env[k], str) for k in ("digest", "trailer_sha256")):
        raise FormatError("digest and trailer_sha256 are strings")
    enc = env.get("encryption")
    if enc is not None:
        if not isinstance(enc, dict) or set(enc) != {"algorithm", "salt", "key_commitment", "recipients", "tensors"}:
            raise FormatError("bad or unknown encryption members")
        if not isinstance(enc["algorithm"], str) or not isinstance(enc["recipients"], list):
            raise FormatError("bad encryption member types")
    if env["digest"] != "SHA-256":
        raise UnsupportedError("digest must be SHA-256")
    if enc is not None and enc["algorithm"] not in AEADS:
        raise UnsupportedError(f"unknown algorithm {enc['algorithm']!r}")
    ss = env.get("segment_size")
    if not is_uint(ss) or not 2**12 <= ss <= 2**30 or ss & (ss - 1):
        raise FormatError("bad segment_size")
    if not is_uint(env.get("trailer_length")):
        raise FormatError("bad trailer_length")
    env["trailer_sha256"] = unb64u(env.get("trailer_sha256"), 32)
    if enc is not None:
        if not 1 <= len(enc["recipients"]) <= MAX_RECIPIENTS:
            raise FormatError(f"a file lists 1 to {MAX_RECIPIENTS} recipients")
        for r in enc["recipients"]:
            parse_stanza(r)
        names = enc["tensors"]
        if not isinstance(names, list) or not names or not all(isinstance(x, str) and x in tensors for x in names):
            raise FormatError("encryption.tensors must be non-empty names from the header")
        raw = [x.encode() for x in names]
        if any(a >= b for a, b in zip(raw, raw[1:])):
            raise FormatError("encryption.tensors not sorted by bytes and unique")
        enc["salt"] = unb64u(enc["salt"], 32)
        enc["key_commitment"] = unb64u(enc["key_commitment"], 32)
    return env


STANZA_MEMBERS = {"A256GCMKW": {"kid", "alg", "iv", "tag", "encrypted_key"},
                  HPKE_ALG: {"kid", "alg", "enc", "encrypted_key"}}


def parse_stanza(r):
    """§6 "Stanzas": known algs strict, others skipped whatever their members."""
    if not isinstance(r, dict):
        raise FormatError("a stanza is an object")
    compact = json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode()
    if len(compact) > MAX_STANZA_BYTES:
        raise FormatError("stanza too large")
    if not isinstance(r.get("kid"), str) or not r["kid"] or not isinstance(r.get("alg"), str):
        raise FormatError("a stanza needs a non-empty string kid and a string alg")
    if r["alg"] not in STANZA_MEMBERS:
        return
    if set(r) != STANZA_MEMBERS[r["alg"]]:
        raise FormatError("bad or unknown recipient members")
    if r["alg"] == "A256GCMKW":
        unb64u(r["iv"], 12), unb64u(r["tag"], 16), unb64u(r["encrypted_key"], 32)
    else:
        unb64u(r["enc"], 32), unb64u(r["encrypted_key"], 48)


# ---------------------------------------------------------------- §3.4 canonical header
def canonical(meta, tensors, order, excluded):
    items = sorted((k.encode(), v.encode()) for k, v in meta.items() if k not in excluded)
    out = b"cryptotensors/v1 canonical header\x00" + u64(len(items))
    out += b"".join(lp(k) + lp(v) for k, v in items)
    out += u64(len(order))
    for name in order:
        out += lp(name.encode()) + describe(tensors[name])
    return out


def describe(t):
    """lp(dtype) || u64be(len(shape)) || dims || u64be(s) || u64be(e): shared by §3.4 and §4.3."""
    return lp(t["dtype"].encode()) + u64(len(t["shape"])) + b"".join(u64(d) for d in t["shape"]) + u64(t["s"]) + u64(t["e"])


# ---------------------------------------------------------------- §6 recipients
def thumbprint(jwk):
    req = {"oct": ["k", "kty"], "OKP": ["crv", "kty", "x"], "EC": ["crv", "kty", "x", "y"]}.get(jwk.get("kty"))
    if req is None or any(k not in jwk for k in req):
        return None
    js = json.dumps({k: jwk[k] for k in req}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(js.encode()).digest())


def matches(stanza, jwk):
    """§6: the stanza's kid is the key's kid member or its thumbprint, and
    its alg is the key type's."""
    if stanza["alg"] not in STANZA_MEMBERS or stanza["kid"] not in (jwk.get("kid"), thumbprint(jwk)):
        return False
    if stanza["alg"] == "A256GCMKW":
        return jwk.get("kty") == "oct"
    return jwk.get("kty") == "OKP" and jwk.get("crv") == "X25519" and "d" in jwk


def labeled_extract(suite, salt, label, ikm):
    return hkdf_extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, length):
    return hkdf_expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def hpke_open(sk_bytes, enc, ct, info):
    """RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305; single-shot Open."""
    sk = X25519PrivateKey.from_private_bytes(sk_bytes)
    pkrm = sk.public_key().public_bytes_raw()
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))  # raises on an all-zero result
    if dh == bytes(32):
        raise ValueError("all-zero shared secret")
    kem = b"KEM" + struct.pack(">H", 0x0020)
    eae_prk = labeled_extract(kem, b"", b"eae_prk", dh)
    shared = labeled_expand(kem, eae_prk, b"shared_secret", enc + pkrm, 32)
    suite = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0003)
    ctx = (b"\x00" + labeled_extract(suite, b"", b"psk_id_hash", b"")
           + labeled_extract(suite, b"", b"info_hash", info))
    secret = labeled_extract(suite, shared, b"secret", b"")
    key = labeled_expand(suite, secret, b"key", ctx, 32)
    nonce = labeled_expand(suite, secret, b"base_nonce", ctx, 12)  # seq 0: nonce = base_nonce
    return ChaCha20Poly1305(key).decrypt(nonce, ct, b"")


def unwrap(stanza, jwk):
    if stanza["alg"] == "A256GCMKW":
        k = unb64u(jwk["k"], 32)
        ct = unb64u(stanza["encrypted_key"]) + unb64u(stanza["tag"])
        return AESGCM(k).decrypt(unb64u(stanza["iv"]), ct, b"")
    return hpke_open(unb64u(jwk["d"], 32), unb64u(stanza["enc"]), unb64u(stanza["encrypted_key"]),
                     b"cryptotensors/v1 data key")


def open_data_key(enc, keys, canonical_mac, mac_b64):
    """§6.3: each distinct stanza once, each data key checked once, first success wins."""
    matched, stanzas, checked = False, [], set()
    for stanza in enc["recipients"]:
        if stanza not in stanzas:
            stanzas.append(stanza)
    for stanza in stanzas:
        for jwk in keys:
            if not matches(stanza, jwk):
                continue
            matched = True
            try:
                dk = unwrap(stanza, jwk)
            except (InvalidTag, ValueError):
                continue
            if dk in checked:
                continue
            checked.add(dk)
            prk = hkdf_extract(enc["salt"], dk)  # §4.2
            if not hmac.compare_digest(hkdf_expand(prk, b"cryptotensors/v1 key commitment", 32),
                                       enc["key_commitment"]):
                continue
            mac_key = hkdf_expand(prk, b"cryptotensors/v1 header mac", 32)
            if hmac.compare_digest(hmac.new(mac_key, canonical_mac, hashlib.sha256).digest(), unb64u(mac_b64, 32)):
                return prk
    if not matched:
        raise KeyNotFoundError(f"no key for recipients {[r['kid'] for r in enc['recipients']]}")
    raise IntegrityError("wrong key or tampered file")


# ---------------------------------------------------------------- §7 signatures
def key_alg(jwk):
    """The JWS alg a signing key verifies with, from its type alone (§7)."""
    if not isinstance(jwk, dict):
        return None
    return {("OKP", "Ed25519"): "EdDSA", ("EC", "P-256"): "ES256"}.get((jwk.get("kty"), jwk.get("crv")))


def public_key(jwk):
    """The cryptography public key of an Ed25519 or P-256 JWK (ValueError if invalid)."""
    if key_alg(jwk) == "EdDSA":
        return Ed25519PublicKey.from_public_bytes(unb64u(jwk["x"], 32))
    x, y = (int.from_bytes(unb64u(jwk[c], 32), "big") for c in ("x", "y"))
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def verify_with(jwk, sig, signing_input):
    """Raises InvalidSignature (or ValueError for a malformed key) unless jwk verifies sig.
    ES256 accepts high and low S alike (§7)."""
    key = public_key(jwk)
    if key_alg(jwk) == "EdDSA":
        key.verify(sig, signing_input)
        return
    # ES256: the signature is r || s, 32 bytes each (RFC 7518 §3.4).
    if len(sig) != 64:
        raise InvalidSignature("ES256 signatures are 64 bytes")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))


def verify_signature(jws, payload, trusted):
    if jws is None:
        raise SignatureError("file is not signed")
    parts = jws.split(".") if isinstance(jws, str) else []
    if len(parts) != 3 or parts[1] != "":
        raise SignatureError("not a detached compact JWS")
    try:
        header = strict_json(unb64u(parts[0]).decode())
    except (ReaderError, UnicodeDecodeError) as e:  # §7: a malformed JWS is a signature error
        raise SignatureError(f"bad protected header: {e}") from e
    if not isinstance(header, dict) or set(header) != {"alg", "kid", "jwk"}:
        raise SignatureError("the protected header has exactly alg, kid and jwk")
    if header["alg"] not in ("EdDSA", "ES256") or not isinstance(header["kid"], str):
        raise SignatureError("protected header alg must be EdDSA or ES256, kid a string")
    jwk = header["jwk"]
    if not isinstance(jwk, dict) or "d" in jwk or "k" in jwk or key_alg(jwk) != header["alg"]:
        raise SignatureError("jwk must be a public key of the alg's type")
    try:
        public_key(jwk)
    except (ValueError, FormatError, KeyError) as e:
        raise SignatureError("jwk is not a valid public key") from e
    sig, signing_input = unb64u(parts[2]), (parts[0] + "." + b64u(payload)).encode()
    candidates = trusted or [header.get("jwk")]
    for jwk in candidates:
        if key_alg(jwk) != header["alg"]:  # the key's type fixes the algorithm
            continue
        try:
            verify_with(jwk, sig, signing_input)
            return
        except (InvalidSignature, ValueError, FormatError):
            pass
    raise SignatureError("invalid signature" if not trusted else "not signed by a trusted key")


# ---------------------------------------------------------------- the reader
def read(buf, keys=(), trusted=()):
    """Return {name: (dtype, shape, plaintext bytes)} or raise a ReaderError."""
    keys, trusted = list(keys), list(trusted)
    n, meta, tensors, order, d = parse_layout(buf)
    data = buf[8 + n:]
    if any(k.startswith("__cryptotensors") and k not in (ENV, MAC, SIG) for k in meta):
        raise FormatError("reserved metadata key")
    if ENV not in meta:
        if MAC in meta or SIG in meta:
            raise FormatError("MAC or signature without an envelope")
        if trusted:
            raise SignatureError("unsigned file but trusted signers configured")
        return {k: (t["dtype"], t["shape"], data[t["s"]:t["e"]]) for k, t in tensors.items()}

    # §4.4 step 2: the signature, before anything it covers (§7: without
    # trusted signers, checked against the embedded jwk)
    if trusted or SIG in meta:
        verify_signature(meta.get(SIG), canonical(meta, tensors, order, {SIG}), trusted)

    # step 3: envelope, file length, trailer
    env = parse_envelope(meta[ENV], tensors)
    enc, ss = env.get("encryption"), env["segment_size"]
    if (MAC in meta) != (enc is not None):
        raise FormatError("__cryptotensors_mac__ must be present iff the file is encrypted")
    if enc is None and SIG not in meta:
        raise FormatError("protected file neither encrypted nor signed")
    encrypted = set(enc["tensors"]) if enc else set()
    segs = {k: max(1, -(-(t["e"] - t["s"]) // ss)) for k, t in tensors.items()}
    if env["trailer_length"] != sum(segs[k] * (16 if k in encrypted else 32) for k in order):
        raise FormatError("trailer_length does not match the tensors")
    if len(buf) != 8 + n + d + env["trailer_length"]:
        raise FormatError("file length != 8 + N + D + T")
    trailer = data[d:]
    if not hmac.compare_digest(hashlib.sha256(trailer).digest(), env["trailer_sha256"]):
        raise IntegrityError("trailer_sha256 mismatch")

    # steps 3-5: unwrap, key commitment, header MAC
    prk = None
    if enc:
        prk = open_data_key(enc, keys, canonical(meta, tensors, order, {MAC, SIG}), meta[MAC])

    out, pos = {}, 0
    for name in order:
        t, count = tensors[name], segs[name]
        body = data[t["s"]:t["e"]]
        chunks = [body[i * ss:(i + 1) * ss] for i in range(count)]
        if name in encrypted:
            binding = lp(enc["algorithm"].encode()) + lp(name.encode()) + describe(t)
            aead = AEADS[enc["algorithm"]](hkdf_expand(prk, b"cryptotensors/v1 tensor key" + binding, 32))
            plain = []
            for i, c in enumerate(chunks):
                nonce = u64(i) + b"\x00\x00\x00" + (b"\x01" if i == count - 1 else b"\x00")  # §5
                try:
                    plain.append(aead.decrypt(nonce, c + trailer[pos:pos + 16], b""))
                except InvalidTag as e:
                    raise IntegrityError(f"segment {i} of {name} failed authentication") from e
                pos += 16
            body = b"".join(plain)
        else:
            for i, c in enumerate(chunks):
                if not hmac.compare_digest(hashlib.sha256(c).digest(), trailer[pos:pos + 32]):
                    raise IntegrityError(f"segment {i} of {name} does not match its digest")
                pos += 32
        out[name] = (t["dtype"], t["shape"], body)
    return out


# ---------------------------------------------------------------- tests
def load(name):
    spec = json.loads((VECTORS / f"{name}.json").read_text())
    return spec, (VECTORS / f"{name}.safetensors").read_bytes()


def open_vector(spec, buf):
    return read(buf, spec["keys"]["keys"], spec["trusted_signers"]["keys"])


@pytest.mark.parametrize("name", sorted(p.stem for p in VECTORS.glob("*.json")))
def test_vector(name):
    spec, buf = load(name)
    if spec["expect"] != "ok":
        with pytest.raises(ReaderError) as info:
            open_vector(spec, buf)
        assert info.value.kind == spec["expect"], info.value
        return
    got = open_vector(spec, buf)
    assert sorted(got) == sorted(spec["tensors"])
    mismatches = []
    for tname, want in spec["tensors"].items():
        dtype, shape, body = got[tname]
        actual = {"dtype": dtype, "shape": shape, "sha256": hashlib.sha256(body).hexdigest()}
        if actual != want:
            mismatches.append(f"{tname}: file {actual} != vector {want}")
    assert not mismatches, "\n".join(mismatches)


def test_key_ids_are_thumbprints():
    for name in ("aes_oct", "chacha_x25519_partial", "signed_plain", "signed_plain_es256"):
        spec, _ = load(name)
        for jwk in spec["keys"]["keys"] + spec["trusted_signers"]["keys"]:
            assert jwk["kid"] == thumbprint(jwk)


def rebuild(buf, edit):
    """Re-serialize the header after edit(header_dict), keeping data and trailer; N is fixed up."""
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + buf[8 + n:]


def flip_data_byte(buf, at=56 + 5000):  # embed.weight is [56, 12056) of data in every vector
    b = bytearray(buf)
    b[8 + struct.unpack("<Q", buf[:8])[0] + at] ^= 1
    return bytes(b)


def swap_first_segments(buf):  # segments 0 and 1 (4 KiB each) of embed.weight
    s = 8 + struct.unpack("<Q", buf[:8])[0] + 56
    return buf[:s] + buf[s + 4096:s + 8192] + buf[s:s + 4096] + buf[s + 8192:]


def set_shape(tensor, shape):
    return lambda buf: rebuild(buf, lambda h: h[tensor].update(shape=shape))


@pytest.mark.parametrize("vector, mutate, kind", [
    ("aes_oct", flip_data_byte, "integrity"),
    ("chacha_x25519_partial", flip_data_byte, "integrity"),
    ("signed_plain", flip_data_byte, "integrity"),
    ("aes_oct", swap_first_segments, "integrity"),
    ("aes_oct", set_shape("embed.weight", [3000]), "integrity"),
    ("chacha_x25519_partial", set_shape("layer.0.bias", [3, 2]), "integrity"),
    ("signed_plain", set_shape("embed.weight", [1000, 3]), "signature"),
    ("signed_plain_es256", flip_data_byte, "integrity"),
    ("signed_plain_es256", set_shape("embed.weight", [1000, 3]), "signature"),
    ("aes_two_recipients_signed", lambda buf: rebuild(buf, lambda h: h["__metadata__"].pop(SIG)), "signature"),
    ("aes_oct", lambda buf: buf[:-1], "format"),
    ("aes_oct", lambda buf: rebuild(buf, lambda h: h["__metadata__"].update(
        {ENV: h["__metadata__"][ENV].replace('"version":1', '"version":2')})), "unsupported"),
    ("aes_oct", lambda buf: rebuild(buf, lambda h: h["__metadata__"].update(
        {ENV: h["__metadata__"][ENV].replace('"digest"', '"extra":0,"digest"')})), "format"),  # §9 step 3
    ("aes_oct", lambda buf: rebuild(buf, lambda h: h["__metadata__"].update(
        {ENV: h["__metadata__"][ENV].replace('"version":1', '"version":2,"extra":0')})), "unsupported"),  # step 2
    ("aes_oct", lambda buf: rebuild(buf, lambda h: h["__metadata__"].update(
        {ENV: h["__metadata__"][ENV].replace('"digest":"SHA-256"', '"digest":"SHA-512"')})), "unsupported"),
])
def test_mutation_rejected(vector, mutate, kind):
    spec, buf = load(vector)
    with pytest.raises(ReaderError) as info:
        open_vector(spec, mutate(buf))
    assert info.value.kind == kind, info.value


def test_matching_kid_wrong_secret_is_integrity_not_key_not_found():
    spec, buf = load("aes_oct")
    spec["keys"]["keys"] = [dict(spec["keys"]["keys"][0], k=b64u(bytes(32)))]  # same kid, wrong secret
    with pytest.raises(IntegrityError):
        open_vector(spec, buf)


def test_es256_vector_refused_under_other_keys_and_algs():
    spec, buf = load("signed_plain_es256")
    with pytest.raises(SignatureError):  # an Ed25519 trusted signer
        read(buf, (), load("signed_plain")[0]["trusted_signers"]["keys"])
    nums = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    other = {"kty": "EC", "crv": "P-256", "x": b64u(nums.x.to_bytes(32, "big")), "y": b64u(nums.y.to_bytes(32, "big"))}
    with pytest.raises(SignatureError):  # another P-256 key
        read(buf, (), [other])

    def rewrite_alg(h):
        protected, _, sig = h["__metadata__"][SIG].split(".")
        p = json.loads(unb64u(protected))
        p["alg"] = "EdDSA"
        h["__metadata__"][SIG] = b64u(json.dumps(p).encode()) + ".." + sig

    with pytest.raises(SignatureError):  # the file cannot pick another algorithm for the key
        open_vector(spec, rebuild(buf, rewrite_alg))


def test_plain_file_refused_when_signers_are_trusted():
    _, buf = load("plain")
    signers, _ = load("signed_plain")
    with pytest.raises(SignatureError):
        read(buf, (), signers["trusted_signers"]["keys"])
