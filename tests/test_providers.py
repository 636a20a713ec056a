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
