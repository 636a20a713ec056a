"""Regenerates the test vectors in this folder (run from the repository root:
`python tests/vectors/generate.py`, or `... generate.py NAME ...` for only
those vectors). Keys and salts are random, so running it changes every file
it writes; the committed vectors are the reference. Each vector
`NAME.safetensors` has `NAME.json`: the description, the keys a reader gets,
the trusted signers, the expected outcome and the expected tensors."""

import base64
import hashlib
import hmac
import json
import os
import struct
import sys

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

import cryptotensors as ct
import cryptotensors.numpy as cn

HERE = os.path.dirname(os.path.abspath(__file__))
SEG = 4096
ONLY = set(sys.argv[1:])  # vector names to write; empty: all


def tensors():
    rng = np.random.default_rng(7)
    return {
        "embed.weight": rng.standard_normal((3, 1000), dtype=np.float32),  # 12000 bytes: 3 segments
        "layer.0.bias": np.arange(6, dtype=np.int64).reshape(2, 3),
        "norm.weight": np.linspace(0, 1, 5, dtype=np.float16),
        "empty": np.zeros((0, 4), dtype=np.uint8),
        "scalar": np.array(3.5, dtype=np.float64),
        "exact.two_segments": np.arange(2048, dtype=np.int32),  # exactly 2 x 4096 bytes
        "empty.also": np.zeros((2, 0), dtype=np.float32),  # two empty tensors share an offset
    }


def expected(d):
    return {
        k: {"dtype": {"float32": "F32", "int64": "I64", "float16": "F16", "uint8": "U8", "float64": "F64", "int32": "I32"}[str(v.dtype)],
            "shape": list(v.shape), "sha256": hashlib.sha256(v.tobytes()).hexdigest()}
        for k, v in d.items()
    }


def write(name, description, save_kwargs, keys, trusted=None, expect="ok", corrupt=None):
    if ONLY and name not in ONLY:
        return
    path = os.path.join(HERE, name + ".safetensors")
    d = tensors()
    cn.save_file(d, path, metadata={"format": "np"}, **save_kwargs)
    if corrupt:
        corrupt(path)
    meta = {
        "description": description,
        "keys": {"keys": keys},
        "trusted_signers": {"keys": trusted or []},
        "expect": expect,
        "tensors": expected(d),
    }
    with open(os.path.join(HERE, name + ".json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")


def flip_last_tag_byte(path):
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))


def replace_same_length(old, new):
    """Rewrites header bytes in place (same length, so N stays valid)."""
    assert len(old) == len(new)

    def corrupt(path):
        with open(path, "rb") as f:
            data = f.read()
        assert data.count(old) == 1, old
        with open(path, "wb") as f:
            f.write(data.replace(old, new))

    return corrupt


def break_signature(path):
    with open(path, "rb") as f:
        data = f.read()
    i = data.index(b"__cryptotensors_signature__")
    j = data.index(b"..", i) + 2  # the signature's b64u, after the detached payload
    flipped = b"B" if data[j : j + 1] != b"B" else b"C"
    with open(path, "wb") as f:
        f.write(data[:j] + flipped + data[j + 1 :])


# -- forging: what a holder of the data key or of the signing key can write ------------------
# Each forged vector differs from a valid file in exactly the point it tests:
# the header MAC is recomputed with the data key and the signature redone
# with the signing key after the edit, so only that point can be refused.

ENV, MAC, SIG = "__cryptotensors__", "__cryptotensors_mac__", "__cryptotensors_signature__"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class KeepDataKey:
    """A key wrapper (encrypt_for=) for an oct JWK that keeps the data key."""

    def __init__(self, jwk):
        self.jwk, self.data_key = jwk, None

    def wrap(self, data_key):
        self.data_key = data_key
        iv = os.urandom(12)
        ct_tag = AESGCM(b64d(self.jwk["k"])).encrypt(iv, data_key, None)
        return {"kid": self.jwk["kid"], "alg": "A256GCMKW", "iv": b64e(iv), "tag": b64e(ct_tag[32:]),
                "encrypted_key": b64e(ct_tag[:32])}


def canonical(meta, tensors, excluded):
    """FORMAT.md §3.4."""
    def lp(b):
        return struct.pack(">Q", len(b)) + b

    items = sorted((k.encode(), v.encode()) for k, v in meta.items() if k not in excluded)
    out = b"cryptotensors/v1 canonical header\x00" + struct.pack(">Q", len(items))
    out += b"".join(lp(k) + lp(v) for k, v in items)
    order = sorted(tensors, key=lambda k: (tensors[k]["data_offsets"], k.encode()))
    out += struct.pack(">Q", len(order))
    for name in order:
        t = tensors[name]
        out += lp(name.encode()) + lp(t["dtype"].encode()) + struct.pack(">Q", len(t["shape"]))
        out += b"".join(struct.pack(">Q", d) for d in t["shape"]) + struct.pack(">QQ", *t["data_offsets"])
    return out


def header_bytes(meta, tensors):
    """The compact encoding of FORMAT.md §2, metadata slot included."""
    opening = '{"__metadata__":' + json.dumps(dict(sorted(meta.items(), key=lambda kv: kv[0].encode())),
                                              separators=(",", ":"), ensure_ascii=False)
    opening = opening.encode()
    room = 4096 - 8 - len(opening)
    text = opening + b" " * (room if room >= 1024 else 1024)
    for name, t in tensors.items():
        text += b"," + json.dumps(name, ensure_ascii=False).encode() + json.dumps(
            {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": t["data_offsets"]},
            separators=(",", ":")).encode().replace(b"{", b":{", 1)
    text += b"}"
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def sign_jws(meta, tensors, jwk, protected=None, high_s=False):
    """A detached JWS (FORMAT.md §7) over the canonical header, with any
    protected header text."""
    alg = "ES256" if jwk["kty"] == "EC" else "EdDSA"
    if protected is None:
        public = {k: v for k, v in jwk.items() if k != "d"}
        protected = json.dumps({"alg": alg, "kid": jwk["kid"], "jwk": public}, separators=(",", ":"))
    encoded = b64e(protected.encode())
    signing_input = (encoded + "." + b64e(canonical(meta, tensors, {SIG}))).encode()
    d = b64d(jwk["d"])
    if alg == "EdDSA":
        sig = Ed25519PrivateKey.from_private_bytes(d).sign(signing_input)
    else:
        key = ec.derive_private_key(int.from_bytes(d, "big"), ec.SECP256R1())
        r, s_ = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        if high_s != (s_ > P256_N // 2):
            s_ = P256_N - s_
        sig = r.to_bytes(32, "big") + s_.to_bytes(32, "big")
    return encoded + ".." + b64e(sig)


def forge(name, description, keys, trusted=None, expect="ok", *, sign_key=None, edit, **save_kwargs):
    """Saves aes-style tensors (encrypted for KeepDataKey(keys[0]) unless
    save_kwargs say otherwise), then edit(meta, envelope, tensors) changes
    the header; the MAC (encrypted files) and the signature (sign_key) are
    recomputed over the result. `edit` may return replacement envelope text
    (for what a JSON object cannot hold, such as a repeated member) and may
    set meta[SIG] itself (then it is kept)."""
    if ONLY and name not in ONLY:
        return
    path = os.path.join(HERE, name + ".safetensors")
    d = tensors()
    wrapper = None
    if "encrypt_for" not in save_kwargs and "sign_with" not in save_kwargs:
        wrapper = save_kwargs["encrypt_for"] = KeepDataKey(keys[0])
    cn.save_file(d, path, metadata={"format": "np"}, segment_size=SEG, **save_kwargs)
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    meta.pop(SIG, None)
    env = json.loads(meta[ENV])
    text = edit(meta, env, header)
    meta[ENV] = text if isinstance(text, str) else json.dumps(env, separators=(",", ":"))
    if wrapper is not None and MAC in meta:
        prk = hmac.new(b64d(env["encryption"]["salt"]), wrapper.data_key, hashlib.sha256).digest()
        mac_key = HKDFExpand(hashes.SHA256(), 32, b"cryptotensors/v1 header mac").derive(prk)
        meta[MAC] = b64e(hmac.new(mac_key, canonical(meta, header, {MAC, SIG}), hashlib.sha256).digest())
    if sign_key is not None and SIG not in meta:
        meta[SIG] = sign_jws(meta, header, sign_key)
    with open(path, "wb") as f:
        f.write(header_bytes(meta, header) + data[8 + n:])
    meta_out = {
        "description": description,
        "keys": {"keys": keys},
        "trusted_signers": {"keys": trusted or []},
        "expect": expect,
        "tensors": expected(d),
    }
    with open(os.path.join(HERE, name + ".json"), "w") as f:
        json.dump(meta_out, f, indent=2, sort_keys=True)
        f.write("\n")


def forged_vectors(oct_key, sign_key, p256_key):
    signed = {"sign_with": sign_key}
    pub = [ct.public_key(sign_key)]
    future = {"kid": "hsm-7", "alg": "ECDH-ES+A256KW", "epk": {"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA"},
              "encrypted_key": "AAAA", "apu": "QWxpY2U"}

    def recipients(f):
        def edit(meta, env, t):
            env["encryption"]["recipients"] = f(env["encryption"]["recipients"])
        return edit

    forge("aes_oct_unknown_alg_stanza", "aes_oct whose first stanza has an alg this reader does not know and members "
          "no known stanza has (epk, apu): skipped, and the A256GCMKW stanza opens the file (FORMAT.md §6).",
          [oct_key], edit=recipients(lambda rs: [future] + rs))
    forge("aes_oct_repeated_stanza", "aes_oct whose one stanza appears 64 times (the most a file may list): "
          "tried once, opens (FORMAT.md §6.3).", [oct_key], edit=recipients(lambda rs: rs * 64))
    forge("aes_oct_too_many_stanzas", "aes_oct with 65 stanzas, one more than a file may list: refused unread "
          "(FORMAT.md §3.2).", [oct_key], expect="format", edit=recipients(lambda rs: rs + [future] * 64))
    forge("aes_oct_stanza_without_kid", "aes_oct with a stanza of unknown alg that has no kid: kid is required in "
          "every stanza (FORMAT.md §6).", [oct_key], expect="format",
          edit=recipients(lambda rs: [{k: v for k, v in future.items() if k != "kid"}] + rs))
    forge("aes_oct_known_stanza_extra_member", "aes_oct whose A256GCMKW stanza has a member that alg does not define: "
          "known stanzas are strict (FORMAT.md §6).", [oct_key], expect="format",
          edit=recipients(lambda rs: [dict(rs[0], epk="AAAA")]))

    def repeat(member, inner=False):
        def edit(meta, env, t):
            text = json.dumps(env, separators=(",", ":"))
            if inner:  # inside the stanza: its "alg", twice
                return text.replace('"alg":"A256GCMKW"', '"alg":"A256GCMKW","alg":"A256GCMKW"', 1)
            return text.replace(f'"{member}":', f'"{member}":"SHA-256","{member}":', 1)
        return edit

    forge("aes_oct_repeated_envelope_member", "aes_oct whose envelope names \"digest\" twice (same value): refused "
          "(FORMAT.md §2, §3.2).", [oct_key], expect="format", edit=repeat("digest"))
    forge("aes_oct_repeated_stanza_member", "aes_oct whose stanza names \"alg\" twice (same value): refused.",
          [oct_key], expect="format", edit=repeat("alg", inner=True))

    def version(v, extra):
        def edit(meta, env, t):
            env["version"] = v
            if extra:
                env["future_member"] = {"x": 1}
        return edit

    forge("aes_oct_version_2_new_member", "aes_oct claiming version 2 with a member version 1 does not know: "
          "the version is checked first, so unsupported, not format (FORMAT.md §9).", [oct_key],
          expect="unsupported", edit=version(2, True))
    forge("aes_oct_unknown_envelope_member", "aes_oct (version 1) with an unknown envelope member: format "
          "(FORMAT.md §3.2).", [oct_key], expect="format", edit=version(1, True))
    forge("aes_oct_version_string", "aes_oct with \"version\": \"1\" (a string): format, not unsupported "
          "(FORMAT.md §9).", [oct_key], expect="format", edit=version("1", False))
    forge("aes_oct_without_mac", "aes_oct with its __cryptotensors_mac__ removed: format (FORMAT.md §3.1).",
          [oct_key], expect="format", edit=lambda meta, env, t: meta.pop(MAC))

    def add_mac(meta, env, t):
        meta[MAC] = b64e(bytes(32))

    forge("signed_plain_with_mac", "signed_plain carrying a __cryptotensors_mac__ (re-signed over it): a MAC "
          "without encryption is refused (FORMAT.md §3.1).", [], pub, expect="format", sign_key=sign_key,
          edit=add_mac, **signed)

    def protected(p):
        def edit(meta, env, t):
            meta[SIG] = sign_jws(meta, t, sign_key, protected=p)
        return edit

    public = {k: v for k, v in sign_key.items() if k != "d"}
    forge("signed_plain_jwk_with_d", "signed_plain whose protected header publishes the private d in its jwk: "
          "refused even though the trusted key verifies it (FORMAT.md §7).", [], pub, expect="signature",
          edit=protected(json.dumps({"alg": "EdDSA", "kid": sign_key["kid"], "jwk": sign_key})), **signed)
    forge("signed_plain_jws_repeated_member", "signed_plain whose protected header names \"alg\" twice: refused.",
          [], pub, expect="signature", **signed, edit=protected(
              f'{{"alg":"EdDSA","alg":"EdDSA","kid":{json.dumps(sign_key["kid"])},"jwk":{json.dumps(public)}}}'))
    forge("signed_plain_jws_without_kid", "signed_plain whose protected header has no kid: refused (FORMAT.md §7).",
          [], pub, expect="signature", **signed, edit=protected(json.dumps({"alg": "EdDSA", "jwk": public})))
    p256_pub = [ct.public_key(p256_key)]

    def high_s(meta, env, t):
        meta[SIG] = sign_jws(meta, t, p256_key, high_s=True)

    forge("signed_plain_es256_high_s", "signed_plain_es256 with a high-S signature (s > n/2): accepted, as its "
          "low-S twin is (FORMAT.md §7).", [], p256_pub, sign_with=p256_key, edit=high_s)


def main():
    oct_key = ct.generate_key("oct")
    x_key = ct.generate_key("X25519")
    sign_key = ct.generate_key("Ed25519")
    p256_key = ct.generate_key("P-256")
    write("plain", "A plain safetensors file: no envelope, no trailer.", {}, [])
    write("aes_oct", "AES-256-GCM, every tensor, one A256GCMKW recipient, 4 KiB segments.",
          {"encrypt_for": oct_key, "segment_size": SEG}, [oct_key])
    write("chacha_x25519_partial", "ChaCha20-Poly1305, one HPKE X25519 recipient, only embed.weight and scalar encrypted.",
          {"encrypt_for": ct.public_key(x_key), "encrypted_tensors": ["embed.weight", "scalar"],
           "algorithm": "ChaCha20-Poly1305", "segment_size": SEG}, [x_key])
    write("signed_plain", "Signed with Ed25519, not encrypted: per-segment SHA-256 digests in the trailer.",
          {"sign_with": sign_key, "segment_size": SEG}, [], trusted=[ct.public_key(sign_key)])
    write("signed_plain_es256", "Signed with ES256 (ECDSA P-256, SHA-256), not encrypted.",
          {"sign_with": p256_key, "segment_size": SEG}, [], trusted=[ct.public_key(p256_key)])
    write("aes_two_recipients_signed", "AES-256-GCM for an oct and an X25519 recipient, signed. Opened with the X25519 key.",
          {"encrypt_for": [oct_key, ct.public_key(x_key)], "sign_with": sign_key, "segment_size": SEG},
          [x_key], trusted=[ct.public_key(sign_key)])
    write("aes_oct_tampered_tag", "aes_oct with the last byte of the trailer (a tag) flipped: the trailer digest fails.",
          {"encrypt_for": oct_key, "segment_size": SEG}, [oct_key], expect="integrity", corrupt=flip_last_tag_byte)
    write("signed_plain_bad_signature", "signed_plain with one character of the signature changed.",
          {"sign_with": sign_key, "segment_size": SEG}, [], trusted=[ct.public_key(sign_key)],
          expect="signature", corrupt=break_signature)
    write("aes_oct_version_2", "aes_oct claiming envelope version 2, which a version 1 reader must refuse.",
          {"encrypt_for": oct_key, "segment_size": SEG}, [oct_key], expect="unsupported",
          corrupt=replace_same_length(b'\\"version\\":1', b'\\"version\\":2'))
    write("aes_oct_key_without_kid", "aes_oct opened with the key stripped of its kid: matched by RFC 7638 thumbprint.",
          {"encrypt_for": oct_key, "segment_size": SEG}, [{k: v for k, v in oct_key.items() if k != "kid"}])
    write("aes_oct_wrong_key", "aes_oct opened with a key whose kid is not a recipient.",
          {"encrypt_for": oct_key, "segment_size": SEG}, [ct.generate_key("oct")], expect="key_not_found")
    forged_vectors(oct_key, sign_key, p256_key)


if __name__ == "__main__":
    main()
