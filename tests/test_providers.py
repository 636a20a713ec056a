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


class Naming(CapturingWrapper):
    """A key wrapper that names `kid` (None: no kid) while its stanzas carry its key's."""

    def __init__(self, jwk, kid):
        super().__init__(jwk)
        self.kid, self._stanza_kid = kid, self.kid

    def wrap(self, data_key):
        return dict(super().wrap(data_key), kid=self._stanza_kid)


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


# -- the provider chain inside one open (issue 12) ---------------------------


class _Counting:
    """Wraps _core.Handle's constructors and counts them."""

    def __init__(self, handle):
        self._handle, self.opens = handle, 0

    def open(self, *a, **k):
        self.opens += 1
        return self._handle.open(*a, **k)

    def from_bytes(self, *a, **k):
        self.opens += 1
        return self._handle.from_bytes(*a, **k)


def test_a_provider_opens_a_file_in_one_open_without_reading_its_header_again(tmp_path, clean_providers, monkeypatch):
    """Before: a KeyNotFoundError was caught, the header read again in Python
    (inspect, or struct.unpack of the bytes) and the file opened a second
    time. Now the core asks the provider inside the one open: one open per
    load, from a path and from bytes, no header read outside the core, and
    the provider asked once per distinct stanza."""
    from cryptotensors import _core, _open, _serialize

    vault_key, other = ct.generate_key("oct"), ct.generate_key("oct")
    wrapper = CapturingWrapper(vault_key)
    path = tmp_path / "m.safetensors"
    d = {"w": np.arange(10, dtype=np.float32)}
    cn.save_file(d, path, encrypt_for=[wrapper, other])
    forged = _remac(path.read_bytes(), wrapper.data_key, lambda rs: rs * 3)
    path.write_bytes(forged)
    asked = []

    class Vault(VaultProvider):
        def unwrap(self, r):
            asked.append(r["kid"])
            return super().unwrap(r)

    ct.register_key_provider(Vault(vault_key))
    counting = _Counting(_core.Handle)
    monkeypatch.setattr(_open, "Handle", counting)
    monkeypatch.setattr(_serialize._core, "Handle", counting)

    def no_header_reads(*a, **k):
        raise AssertionError("the header was read again outside the open")

    monkeypatch.setattr(_core, "inspect", no_header_reads)
    with ct.safe_open(path, "np") as f:
        np.testing.assert_array_equal(f.get_tensor("w"), d["w"])
    assert counting.opens == 1
    assert sorted(asked) == sorted([vault_key["kid"], other["kid"]])  # each distinct stanza once
    del asked[:]
    np.testing.assert_array_equal(cn.load(forged)["w"], d["w"])
    assert counting.opens == 2
    assert sorted(asked) == sorted([vault_key["kid"], other["kid"]])


def test_rewrap_asks_a_provider_once(tmp_path, clean_providers, monkeypatch):
    from cryptotensors import _core

    vault_key = ct.generate_key("oct")
    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.ones(3)}, path, encrypt_for=vault_key)
    vault = VaultProvider(vault_key)
    ct.register_key_provider(vault)
    monkeypatch.setattr(_core, "inspect", None)  # no header read outside the core
    new = ct.generate_key("oct")
    ct.rewrap(path, add=new)
    assert vault.calls == 1
    ct.rekey(path, recipients=new, remove=[vault_key["kid"]])
    assert vault.calls == 2
    np.testing.assert_array_equal(cn.load_file(path, keys=new)["w"], np.ones(3))


def test_a_provider_exception_reaches_the_caller_unchanged(tmp_path, clean_providers):
    class Down(Exception):
        pass

    class Failing:
        def unwrap(self, r):
            raise Down("key service unreachable")

    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.ones(3)}, path, encrypt_for=ct.generate_key("oct"))
    later = VaultProvider(ct.generate_key("oct"))
    ct.register_key_provider(Failing())
    ct.register_key_provider(later)
    with pytest.raises(Down, match="unreachable"):
        cn.load_file(path)
    with pytest.raises(Down):
        cn.load(path.read_bytes())
    assert later.calls == 0  # the failure ended the open


@pytest.mark.parametrize("answer", [b"", b"k" * 31, b"k" * 33, bytearray(64)])
def test_a_provider_key_of_the_wrong_length_is_invalid_key(tmp_path, clean_providers, answer):
    class Short:
        def unwrap(self, r):
            return answer

    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.ones(3)}, path, encrypt_for=ct.generate_key("oct"))
    ct.register_key_provider(Short())
    with pytest.raises(ct.InvalidKeyError, match=f"{len(answer)} bytes, not 32"):
        cn.load_file(path)


def test_providers_are_listed_only_when_the_keys_open_nothing(tmp_path, clean_providers, monkeypatch):
    """Discovery (entry points, plugins) runs only when the key ring fails,
    and what a provider opened is not cached for a later open without it."""
    key = ct.generate_key("oct")
    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.ones(3)}, path, encrypt_for=key)
    listed = []
    real = _providers.providers
    monkeypatch.setattr(_providers, "providers", lambda: listed.append(1) or real())
    cn.load_file(path, keys=key)
    assert listed == []
    vault = VaultProvider(key)
    ct.register_key_provider(vault)
    cn.load_file(path)
    assert listed == [1] and vault.calls == 1
    _providers._registered.remove(vault)
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path)


def test_a_key_wrapper_gets_a_data_key_drawn_by_the_core(tmp_path, clean_providers, monkeypatch):
    """The data key of a wrapped (HSM) save is drawn in Rust: not by Python's
    secrets module, and a fresh one per save."""
    import secrets

    def refuse(*a, **k):
        raise AssertionError("the data key was drawn in Python")

    monkeypatch.setattr(secrets, "token_bytes", refuse)
    vault_key = ct.generate_key("oct")
    keys = []
    for i in range(2):
        wrapper = CapturingWrapper(vault_key)
        path = tmp_path / f"m{i}.safetensors"
        cn.save_file({"w": np.full(3, i)}, path, encrypt_for=[wrapper])
        assert isinstance(wrapper.data_key, bytes) and len(wrapper.data_key) == 32
        keys.append(wrapper.data_key)
    assert keys[0] != keys[1]
    ct.register_key_provider(VaultProvider(vault_key))
    np.testing.assert_array_equal(cn.load_file(tmp_path / "m1.safetensors")["w"], np.full(3, 1))


def test_a_wrapper_exception_reaches_the_caller_and_nothing_is_written(tmp_path):
    class Refused(Exception):
        pass

    class Failing:
        def wrap(self, data_key):
            raise Refused("token says no")

    with pytest.raises(Refused):
        cn.save_file({"w": np.ones(3)}, tmp_path / "m.safetensors", encrypt_for=[Failing()])
    assert not (tmp_path / "m.safetensors").exists()


def test_key_rings_are_parsed_once_and_show_no_secret(monkeypatch, tmp_path):
    import json

    from cryptotensors import _core, _keys

    key = ct.generate_key("oct")
    ring = _core.KeyRing(json.dumps(key))
    assert key["k"] not in repr(ring) and key["kid"] in repr(ring)
    assert len(ring) == 1 and ring.kids() == [key["kid"]]
    assert _keys.keyring(key) is _keys.keyring(dict(key))  # one parse per distinct key set
    monkeypatch.setenv("CRYPTOTENSORS_KEYS", json.dumps(ct.generate_key("oct")))
    monkeypatch.setenv("CRYPTOTENSORS_CONFIG_DIR", str(tmp_path))
    joined = _keys.keyring(key)
    assert joined is _keys.keyring(key) and len(joined) == 2
    other = ct.generate_key("oct")
    monkeypatch.setenv("CRYPTOTENSORS_KEYS", json.dumps(other))
    assert _keys.keyring(key).kids() == [key["kid"], other["kid"]]
    (tmp_path / "keys.jwks").write_text(json.dumps({"keys": [ct.generate_key("X25519")]}))
    assert len(_keys.keyring(key)) == 3
    # A ring is what an open takes; JSON text is refused.
    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.ones(2)}, path, encrypt_for=key)
    np.testing.assert_array_equal(cn.load_file(path, keys=ring)["w"], np.ones(2))
    with pytest.raises(TypeError):
        _core.Handle.open(str(path), "pread", json.dumps(key))
