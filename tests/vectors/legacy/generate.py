"""Writes the legacy vectors with the real cryptotensors==0.2.3.

It has our import name, so it runs in its own venv, never in ours:

    python3 -m venv /tmp/legacy
    /tmp/legacy/bin/pip install cryptotensors==0.2.3 numpy cryptography
    /tmp/legacy/bin/python tests/vectors/legacy/generate.py

For each case it writes NAME.safetensors (the old package's file), and
NAME.expected.npz (what the old package's own load_file returns for it).
keys.json holds the old keys in the old form (a JWK Set, lowercase kty,
standard padded base64); keys.public.json only the verifying key;
cases.json the cases and which of their tensors the old file encrypted.
"""

import base64
import json
import os
import sys

import numpy as np
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cryptotensors
from cryptotensors import SerializeCryptoConfig
from cryptotensors.numpy import load_file, save_file

assert "site-packages" in cryptotensors.__file__, "run this in the legacy venv"
HERE = os.path.dirname(os.path.abspath(__file__))


def b64(raw):
    return base64.b64encode(raw).decode()


def ed25519(kid):
    sk = Ed25519PrivateKey.generate()
    d = sk.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    x = sk.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return {"kty": "okp", "alg": "ed25519", "kid": kid, "d": b64(d), "x": b64(x)}


MASTER_LEN = {"aes256gcm": 32, "aes128gcm": 16, "chacha20poly1305": 32}
masters = {
    alg: {"kty": "oct", "alg": alg, "kid": f"master-{alg}", "k": b64(os.urandom(n))}
    for alg, n in MASTER_LEN.items()
}
signer = ed25519("signer-1")
rng = np.random.default_rng(15)


def tensors():
    return {
        "weight": rng.standard_normal((7, 9)).astype(np.float32),
        "bias": rng.standard_normal((9,)).astype(np.float16),
        "ids": np.arange(1000, dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "flag": np.array([True, False, True]),
    }


cases = []
for version in ("1", "2"):
    for alg in MASTER_LEN:
        cases.append((f"v{version}_{alg}", version, alg, None, 64))
# Only some tensors encrypted: the others are plain and unauthenticated.
cases.append(("v1_partial", "1", "aes256gcm", ["weight", "empty"], None))
cases.append(("v2_partial", "2", "chacha20poly1305", ["ids", "empty"], 100))
# The default chunk size, and a tensor much longer than one chunk.
cases.append(("v2_default_chunk", "2", "aes256gcm", None, None))

out = {}
for name, version, alg, only, chunk in cases:
    data = tensors()
    if name == "v2_default_chunk":
        data["big"] = (np.arange(2097152 + 7) % 251).astype(np.uint8)
        del data["ids"]
    kw = dict(enc_key=masters[alg], sign_key=signer, version=version)
    if only is not None:
        kw["tensors"] = only
    if chunk is not None and version == "2":
        kw["chunk_size"] = chunk
    path = os.path.join(HERE, f"{name}.safetensors")
    save_file(data, path, metadata={"note": "legacy é", "format": "np"},
              config=SerializeCryptoConfig(**kw).to_dict())
    cryptotensors.register_direct_key_provider(keys={"keys": [masters[alg], signer]})
    loaded = load_file(path)
    for k, v in data.items():
        assert np.array_equal(loaded[k], v), (name, k)
    np.savez_compressed(os.path.join(HERE, f"{name}.expected.npz"), **loaded)
    out[name] = {"version": version, "alg": alg,
                 "encrypted": sorted(only) if only is not None else sorted(data)}

with open(os.path.join(HERE, "keys.json"), "w") as f:
    json.dump({"keys": [*masters.values(), signer]}, f, indent=1)
with open(os.path.join(HERE, "keys.public.json"), "w") as f:
    json.dump([{k: v for k, v in signer.items() if k != "d"}], f, indent=1)
with open(os.path.join(HERE, "cases.json"), "w") as f:
    json.dump({"package": "cryptotensors==0.2.3", "cases": out}, f, indent=1)
print("wrote", len(out), "cases", file=sys.stderr)
