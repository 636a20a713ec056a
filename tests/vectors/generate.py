"""Regenerates the test vectors in this folder (run from the repository root:
`python tests/vectors/generate.py`, or `... generate.py NAME ...` for only
those vectors). Keys and salts are random, so running it changes every file
it writes; the committed vectors are the reference. Each vector
`NAME.safetensors` has `NAME.json`: the description, the keys a reader gets,
the trusted signers, the expected outcome and the expected tensors."""

import hashlib
import json
import os
import sys

import numpy as np

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


if __name__ == "__main__":
    main()
