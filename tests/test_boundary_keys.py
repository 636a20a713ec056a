"""Key arguments cross into the extension as parsed rings (issue 12, "Keys
are parsed once"): the public API takes keys in every form it took before,
converts them once through `_keys`, and the binding refuses text. No error
on these paths carries key text."""

import json

import numpy as np
import pytest

import cryptotensors as ct
import cryptotensors.numpy as cn
from cryptotensors import _core, _keys

TENSORS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.int8)}

# Every form the public API takes a key in: a JWK dict, a one-key list, a
# JWKS dict, JSON text, and a parsed ring.
FORMS = {
    "dict": lambda k: k,
    "list": lambda k: [k],
    "jwks": lambda k: {"keys": [k]},
    "text": lambda k: json.dumps(k),
    "ring": lambda k: _core.KeyRing(json.dumps(k)),
}


def _opens(path, key, signer=None):
    trusted = None if signer is None else ct.public_key(signer)
    got = cn.load_file(path, keys=key, trusted_signers=trusted)
    for name, want in TENSORS.items():
        np.testing.assert_array_equal(got[name], want)
    with ct.safe_open(path, "np", keys=key, trusted_signers=trusted) as f:
        return f.describe()


@pytest.mark.parametrize("form", FORMS)
def test_save_takes_recipients_and_signer_in_every_form(tmp_path, form):
    key, signer = ct.generate_key("X25519"), ct.generate_key("Ed25519")
    path = tmp_path / "m.safetensors"
    cn.save_file(TENSORS, path, encrypt_for=FORMS[form](ct.public_key(key)), sign_with=FORMS[form](signer))
    facts = _opens(path, key, signer)
    assert [r["kid"] for r in ct.inspect(path)["recipients"]] == [_core.key_id(json.dumps(key))[0]]
    assert facts["signer"] == _core.key_id(json.dumps(signer))[0]
    # serialize to bytes as well, with a key wrapper beside the keys.
    wrapped = []

    class Wrapper:
        kid = "hsm"

        def wrap(self, data_key):
            wrapped.append(len(data_key))
            return {"kid": "hsm", "alg": "A256GCMKW", "iv": "A" * 16, "tag": "A" * 22, "encrypted_key": "A" * 43}

    data = cn.save(TENSORS, encrypt_for=[FORMS[form](key), Wrapper()])
    assert wrapped == [32]
    np.testing.assert_array_equal(cn.load(data, keys=key)["w"], TENSORS["w"])
    data = cn.save(TENSORS, encrypt_for=FORMS[form](key))
    np.testing.assert_array_equal(cn.load(data, keys=key)["w"], TENSORS["w"])


@pytest.mark.parametrize("form", FORMS)
def test_rewrap_and_rekey_take_add_recipients_and_signer_in_every_form(tmp_path, form):
    old, new, third = ct.generate_key("oct"), ct.generate_key("X25519"), ct.generate_key("oct")
    first, second = ct.generate_key("Ed25519"), ct.generate_key("P-256")
    path = tmp_path / "m.safetensors"
    cn.save_file(TENSORS, path, encrypt_for=old, sign_with=first)
    ct.rewrap(path, keys=old, trusted_signers=ct.public_key(first),
              add=FORMS[form](ct.public_key(new)), sign_with=FORMS[form](second))
    for k in (old, new):
        assert _opens(path, k, second)["signer"] == _core.key_id(json.dumps(second))[0]
    ct.rekey(path, keys=new, trusted_signers=ct.public_key(second), recipients=FORMS[form](old),
             add=FORMS[form](third), remove=[_core.key_id(json.dumps(new))[0]], sign_with=FORMS[form](first))
    for k in (old, third):
        _opens(path, k, first)
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path, keys=new)


def test_a_ring_is_parsed_once_for_many_saves(tmp_path, monkeypatch):
    # The regression: before, every save sent JSON text that the binding parsed
    # again; now the same keys map to one cached ring, built once.
    built = []
    real = _keys.KeyRing

    class Rings(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, real)

    class Counting(metaclass=Rings):  # KeyRing, counting the rings built from text
        join = staticmethod(real.join)

        def __new__(cls, text):
            built.append(len(text))
            return real(text)

    monkeypatch.setattr(_keys, "KeyRing", Counting)
    monkeypatch.setattr(_keys, "_RINGS", {})
    key, signer = ct.generate_key("oct"), ct.generate_key("Ed25519")
    for _ in range(5):
        cn.save(TENSORS, encrypt_for=key, sign_with=signer)
    assert len(built) == 2  # the recipient's ring and the signer's, once each


def test_the_binding_takes_no_key_text(tmp_path):
    key = ct.generate_key("oct")
    path = tmp_path / "m.safetensors"
    cn.save_file(TENSORS, path, encrypt_for=key)
    text = json.dumps([ct.generate_key("oct")])
    with pytest.raises(TypeError, match="not a KeyRing") as info:
        _core.rewrap(str(path), str(tmp_path / "o.safetensors"), keys=_core.KeyRing(json.dumps(key)), add=text)
    assert text not in str(info.value)
    with pytest.raises(TypeError, match="not a KeyRing"):
        _core.serialize([("w", "F32", [1], np.zeros(4, np.uint8))], recipients=json.dumps(key))


def _carried(exc: BaseException) -> str:
    """Everything an exception holds, its chain included."""
    seen, out = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(repr((str(exc), exc.args, getattr(exc, "__dict__", None))))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def _refused(secret: str, exc_type, fn, *args, **kwargs) -> BaseException:
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert secret not in _carried(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
    return info.value


def test_no_refused_key_argument_carries_its_secret(tmp_path):
    # The regression: a save with key text that is not JSON raised the JSON
    # parser's error, whose .doc held the text, secret and all.
    secret = "S3cr3tKeyMaterial_never_shown"
    broken = '{"kty": "oct", "k": "' + secret  # unterminated
    for bad in (broken, [broken], [ct.generate_key("oct"), broken]):
        _refused(secret, ct.KeyConfigError, cn.save, TENSORS, encrypt_for=bad)
        _refused(secret, ct.KeyConfigError, cn.save, TENSORS, sign_with=bad)
    key = ct.generate_key("oct")
    path = tmp_path / "m.safetensors"
    cn.save_file(TENSORS, path, encrypt_for=key)
    _refused(secret, ct.KeyConfigError, ct.rewrap, path, keys=key, add=broken)
    _refused(secret, ct.KeyConfigError, ct.rekey, path, keys=key, add=[broken])
    _refused(secret, ct.KeyConfigError, ct.migrate, path, tmp_path / "n.safetensors", legacy_keys=broken,
             encrypt_for=key, verify_signature=False)
    # A signing ring of the wrong shape is refused by the binding, naming how
    # many keys it holds and nothing of them.
    a, b = ct.generate_key("Ed25519"), ct.generate_key("P-256")
    for bad in ([a, b], _core.KeyRing(json.dumps([a, b])), [], ct.public_key(a), key):
        e = _refused(a["d"], ct.InvalidKeyError, cn.save, TENSORS, sign_with=bad)
        assert b["d"] not in _carried(e) and key["k"] not in _carried(e)
        assert "sign_with takes exactly one private Ed25519 or P-256 JWK" in str(e)
        _refused(a["d"], ct.InvalidKeyError, ct.rewrap, path, keys=key, sign_with=bad)


def test_rings_show_no_secret():
    from pathlib import Path

    text = (Path(__file__).parent / "vectors" / "legacy" / "keys.json").read_text()
    legacy = _core.LegacyKeyRing(text)
    secrets = [k["k"] for k in json.loads(text)["keys"] if "k" in k]
    assert secrets and not any(s in repr(legacy) for s in secrets)
    assert repr(legacy) == f"LegacyKeyRing({len(legacy)} keys)"
    signer = ct.generate_key("Ed25519")
    assert signer["d"] not in repr(_keys.signer(signer))
    assert _keys.legacy(json.loads(text)) is _keys.legacy(text)  # parsed once per key set
