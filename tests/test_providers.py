"""The key provider chain: a provider unwraps without handing out its secret,
and what it returns must still pass the file's commitment and MAC."""

import base64

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import cryptotensors as ct
import cryptotensors.numpy as cn
from cryptotensors import _providers


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class VaultProvider:
    """Holds an oct key and unwraps A256GCMKW stanzas itself (FORMAT.md §6.1)."""

    def __init__(self, jwk):
        self.kid, self._k = jwk["kid"], b64d(jwk["k"])
        self.calls = 0

    def unwrap(self, r):
        if r["kid"] != self.kid or r["alg"] != "A256GCMKW":
            return None
        self.calls += 1
        return AESGCM(self._k).decrypt(b64d(r["iv"]), b64d(r["encrypted_key"]) + b64d(r["tag"]), None)


class LyingProvider:
    def unwrap(self, r):
        return bytes(32)


@pytest.fixture
def clean_providers(monkeypatch):
    monkeypatch.setattr(_providers, "_registered", [])
    monkeypatch.setattr(_providers, "_discovered", [])


def test_provider_opens_files_and_bytes(tmp_path, clean_providers):
    vault_key = ct.generate_key("oct")
    d = {"w": np.arange(100, dtype=np.float32)}
    path = tmp_path / "m.safetensors"
    cn.save_file(d, path, encrypt_for=vault_key)
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path)
    vault = VaultProvider(vault_key)
    ct.register_key_provider(vault)
    np.testing.assert_array_equal(cn.load_file(path)["w"], d["w"])
    np.testing.assert_array_equal(cn.load(path.read_bytes())["w"], d["w"])
    assert vault.calls == 2
    # Rotation through the provider: add a JWK recipient, drop the vault.
    new = ct.generate_key("oct")
    ct.rewrap(path, add=new, remove=[vault_key["kid"]])
    np.testing.assert_array_equal(cn.load_file(path, keys=new)["w"], d["w"])


def test_a_provider_cannot_substitute_a_key(tmp_path, clean_providers):
    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.ones(3)}, path, encrypt_for=ct.generate_key("oct"))
    ct.register_key_provider(LyingProvider())
    with pytest.raises(ct.IntegrityError):
        cn.load_file(path)


def test_register_checks_the_interface():
    with pytest.raises(TypeError):
        ct.register_key_provider(object())


def _b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class CapturingWrapper:
    """A key wrapper (encrypt_for=) that keeps the data key, so the test can
    forge what a recipient could: the envelope edited and the MAC redone."""

    def __init__(self, jwk):
        self.kid, self._k, self.data_key = jwk["kid"], b64d(jwk["k"]), None

    def wrap(self, data_key):
        import os

        self.data_key = data_key
        iv = os.urandom(12)
        ct = AESGCM(self._k).encrypt(iv, data_key, None)
        return {"kid": self.kid, "alg": "A256GCMKW", "iv": _b64e(iv), "tag": _b64e(ct[32:]), "encrypted_key": _b64e(ct[:32])}


def _remac(data, data_key, edit):
    """`data` with its envelope's recipient list edited and the header MAC
    recomputed (FORMAT.md §3.4, §4.2), laid out compactly."""
    import hashlib
    import hmac
    import json
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header["__metadata__"]
    env = json.loads(meta["__cryptotensors__"])
    env["encryption"]["recipients"] = edit(env["encryption"]["recipients"])
    meta["__cryptotensors__"] = json.dumps(env, separators=(",", ":"))
    prk = hmac.new(b64d(env["encryption"]["salt"]), data_key, hashlib.sha256).digest()
    mac_key = HKDFExpand(hashes.SHA256(), 32, b"cryptotensors/v1 header mac").derive(prk)

    def lp(b):
        return struct.pack(">Q", len(b)) + b

    tensors = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: (kv[1]["data_offsets"], kv[0].encode()))
    items = sorted((k.encode(), v.encode()) for k, v in meta.items() if k != "__cryptotensors_mac__")
    canon = b"cryptotensors/v1 canonical header\x00" + struct.pack(">Q", len(items))
    canon += b"".join(lp(k) + lp(v) for k, v in items) + struct.pack(">Q", len(tensors))
    for name, t in tensors:
        canon += lp(name.encode()) + lp(t["dtype"].encode()) + struct.pack(">Q", len(t["shape"]))
        canon += b"".join(struct.pack(">Q", d) for d in t["shape"])
        canon += struct.pack(">QQ", *t["data_offsets"])
    meta["__cryptotensors_mac__"] = _b64e(hmac.new(mac_key, canon, hashlib.sha256).digest())
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def test_a_provider_is_asked_once_per_distinct_stanza(tmp_path, clean_providers):
    """FORMAT.md §6.3: a file that repeats its stanza (a forgery by a
    recipient, say) makes a provider work once per distinct stanza, on
    files and on bytes; over the cap the core refuses the file before any
    provider is asked."""
    vault_key = ct.generate_key("oct")
    wrapper = CapturingWrapper(vault_key)
    path = tmp_path / "m.safetensors"
    d = {"w": np.arange(10, dtype=np.float32)}
    cn.save_file(d, path, encrypt_for=[wrapper])
    forged = _remac(path.read_bytes(), wrapper.data_key, lambda rs: rs * 64)
    path.write_bytes(forged)
    vault = VaultProvider(vault_key)
    ct.register_key_provider(vault)
    np.testing.assert_array_equal(cn.load_file(path)["w"], d["w"])
    assert vault.calls == 1
    np.testing.assert_array_equal(cn.load(forged)["w"], d["w"])
    assert vault.calls == 2
    path.write_bytes(_remac(forged, wrapper.data_key, lambda rs: rs + rs[:1]))
    with pytest.raises(ct.SafetensorError, match="more than the 64"):
        cn.load_file(path)
    assert vault.calls == 2


def test_a_provider_gets_unknown_stanzas_whole(tmp_path, clean_providers):
    """A stanza of an alg the core does not know reaches providers with all
    its members (a provider may implement it), and the file still opens
    through the stanza the core does know (FORMAT.md §6)."""
    key = ct.generate_key("oct")
    wrapper = CapturingWrapper(key)
    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.ones(4)}, path, encrypt_for=[wrapper])
    future = {"kid": "hsm-1", "alg": "ECDH-ES+A256KW", "epk": {"kty": "EC", "crv": "P-384"}, "encrypted_key": "AAAA"}
    path.write_bytes(_remac(path.read_bytes(), wrapper.data_key, lambda rs: [future] + rs))
    seen = []

    class Recorder:
        def unwrap(self, r):
            seen.append(r)
            return None

    ct.register_key_provider(Recorder())
    np.testing.assert_array_equal(cn.load_file(path, keys=key)["w"], np.ones(4))
    assert seen == []  # the JWK opened it; providers come last
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path)
    assert seen[0] == future and seen[1]["alg"] == "A256GCMKW"
