"""Rekey: a fresh data key, every encrypted tensor re-encrypted; what a
rewrap cannot do (revoke the old data key)."""

import json
import os

import numpy as np
import pytest
from test_providers import CapturingWrapper, Naming, VaultProvider

import cryptotensors as ct
import cryptotensors.numpy as cn


def header_of(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return raw[: 8 + n], raw[8 + n :]


def envelope(path):
    h, _ = header_of(path)
    meta = json.loads(h[8:])["__metadata__"]
    return json.loads(meta["__cryptotensors__"])


def model():
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal(3 * 4096 + 77, dtype=np.float32),  # several segments, the last partial
        "b": np.arange(10, dtype=np.int64),
        "e8": np.zeros(0, np.uint8),
        "e32": np.zeros(0, np.float32),
        "plain": np.ones(5000, np.float16),
    }


def check(path, key, d):
    got = cn.load_file(path, keys=key)
    assert set(got) == set(d)
    for name, v in d.items():
        np.testing.assert_array_equal(got[name], v)
        assert got[name].dtype == v.dtype


def test_rekey_revokes_the_old_data_key(tmp_path):
    """After a rewrap that removes a recipient, the old header spliced onto
    the file opens it again for that recipient; after a rekey it opens
    nothing, and the new file has a new salt, commitment and ciphertext."""
    stays, leaves = ct.generate_key("oct"), ct.generate_key("oct")
    d = model()
    path = tmp_path / "m.safetensors"
    cn.save_file(d, path, metadata={"format": "np"}, encrypt_for=[stays, leaves], segment_size=4096,
                 encrypted_tensors=["w", "b", "e8", "e32"])
    old_head, old_body = header_of(path)
    old_env = envelope(path)

    ct.rewrap(path, keys=stays, remove=[leaves["kid"]])
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path, keys=leaves)
    spliced = tmp_path / "spliced.safetensors"
    spliced.write_bytes(old_head + header_of(path)[1])
    check(spliced, leaves, d)  # what a rewrap does not revoke

    ct.rekey(path, keys=stays)
    check(path, stays, d)
    new_env = envelope(path)
    assert new_env["encryption"]["salt"] != old_env["encryption"]["salt"]
    assert new_env["encryption"]["key_commitment"] != old_env["encryption"]["key_commitment"]
    assert [r["kid"] for r in new_env["encryption"]["recipients"]] == [stays["kid"]]
    assert sorted(new_env["encryption"]["tensors"]) == ["b", "e32", "e8", "w"]
    assert ct.inspect(path)["metadata"] == {"format": "np"}
    new_body = header_of(path)[1]
    assert new_body != old_body and len(new_body) == len(old_body)
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path, keys=leaves)
    spliced.write_bytes(old_head + new_body)
    with pytest.raises(ct.IntegrityError):
        cn.load_file(spliced, keys=leaves)
    # The plain tensor stays plain (its bytes are in the clear in both files).
    assert np.ones(5000, np.float16).tobytes() in new_body


def test_rekey_keeps_recipients_given_their_keys(tmp_path):
    opener, pub_holder, oct_holder, added = (ct.generate_key("oct"), ct.generate_key("X25519"),
                                             ct.generate_key("oct"), ct.generate_key("X25519"))
    d = model()
    path = tmp_path / "m.safetensors"
    cn.save_file(d, path, encrypt_for=[opener, ct.public_key(pub_holder), oct_holder])
    before = path.read_bytes()
    with pytest.raises(ct.SafetensorError, match=pub_holder["kid"]) as e:
        ct.rekey(path, keys=opener, recipients=oct_holder)
    assert "remove it" in str(e.value)
    with pytest.raises(ct.SafetensorError, match="not a recipient"):
        ct.rekey(path, keys=opener, recipients=[ct.public_key(pub_holder), oct_holder, ct.public_key(added)])
    with pytest.raises(ct.SafetensorError, match="already a recipient"):
        ct.rekey(path, keys=opener, recipients=[ct.public_key(pub_holder), oct_holder], add=oct_holder)
    with pytest.raises(ct.SafetensorError, match="no recipient has kid"):
        ct.rekey(path, keys=opener, remove=["nope"])
    with pytest.raises(ct.KeyNotFoundError):
        ct.rekey(path, keys=added, recipients=[ct.public_key(pub_holder), oct_holder])
    assert path.read_bytes() == before
    out = tmp_path / "out.safetensors"
    ct.rekey(path, keys=opener, recipients=[ct.public_key(pub_holder)], remove=[oct_holder["kid"]],
             add=ct.public_key(added), output=out)
    assert path.read_bytes() == before, "the source is left as it was"
    for k in (opener, pub_holder, added):
        check(out, k, d)
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(out, keys=oct_holder)


def test_rekey_signature_policy_and_damage(tmp_path):
    key, signer, other = ct.generate_key("oct"), ct.generate_key("Ed25519"), ct.generate_key("Ed25519")
    d = {"w": np.arange(1000, dtype=np.float32)}
    path = tmp_path / "s.safetensors"
    cn.save_file(d, path, encrypt_for=key, sign_with=signer)
    with pytest.raises(ct.SafetensorError, match="drop_signature"):
        ct.rekey(path, keys=key)
    with pytest.raises(ct.SignatureError):
        ct.rekey(path, keys=key, sign_with=other, trusted_signers=ct.public_key(other))
    ct.rekey(path, keys=key, sign_with=other, trusted_signers=ct.public_key(signer))
    cn.load_file(path, keys=key, trusted_signers=ct.public_key(other))
    ct.rekey(path, keys=key, drop_signature=True)
    assert ct.inspect(path)["signer"] is None

    deny = 'package cryptotensors\nimport rego.v1\ndefault allow := false\nreason := "denied by test"\n'
    ct.rewrap(path, keys=key, policy=deny)
    before = path.read_bytes()
    with pytest.raises(ct.PolicyDeniedError):
        ct.rekey(path, keys=key, remove_policy=True)
    assert path.read_bytes() == before

    allow = 'package cryptotensors\nimport rego.v1\ndefault allow := false\nallow if input.framework == "rekey"\n'
    cn.save_file(d, path, encrypt_for=key, policy=allow, segment_size=4096)
    ct.rekey(path, keys=key)
    assert ct.inspect(path)["policy"] == allow, "the policy is kept"
    raw = bytearray(path.read_bytes())
    n = 8 + int.from_bytes(raw[:8], "little")
    raw[n + 100] ^= 1  # a ciphertext byte: the trailer digest still matches
    path.write_bytes(bytes(raw))
    with pytest.raises(ct.IntegrityError):
        ct.rekey(path, keys=key)
    assert path.read_bytes() == bytes(raw)
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors"], "no temporary file left"


def test_rekey_refuses_files_without_a_data_key(tmp_path):
    signer = ct.generate_key("Ed25519")
    path = tmp_path / "p.safetensors"
    cn.save_file({"w": np.arange(3)}, path, sign_with=signer)
    with pytest.raises(ct.SafetensorError, match="not encrypted"):
        ct.rekey(path, sign_with=signer)
    cn.save_file({"w": np.arange(3)}, path)
    with pytest.raises(ct.SafetensorError, match="neither encrypted nor signed"):
        ct.rekey(path)


def _plan(path, keys=None, recipients=(), add=(), remove=(), sign_with=None, drop_signature=False):
    """_core.rekey_plan with the arguments ct.rekey takes (JWK dicts)."""
    return ct._core.rekey_plan(
        os.fspath(path), keys=ct._keys.keyring(keys), **ct._rekey_keys(list(recipients) or None, list(add) or None),
        remove=list(remove), sign_with=ct._keys.signer(sign_with) if sign_with else None,
        drop_signature=drop_signature)


def test_rekey_plan_and_rekey_refuse_the_same_cases(tmp_path):
    """The core's rekey plan, asked from the header alone, refuses exactly
    what rekey refuses, with the same message; what it accepts, rekey does."""
    opener, holder, oct_holder, stranger, signer = (ct.generate_key("oct"), ct.generate_key("X25519"),
                                                    ct.generate_key("oct"), ct.generate_key("oct"),
                                                    ct.generate_key("Ed25519"))
    path, signed, signed_only = tmp_path / "m.safetensors", tmp_path / "s.safetensors", tmp_path / "p.safetensors"
    cn.save_file(model(), path, encrypt_for=[opener, ct.public_key(holder), oct_holder])
    cn.save_file(model(), signed, encrypt_for=opener, sign_with=signer)
    cn.save_file(model(), signed_only, sign_with=signer)
    pub = ct.public_key(holder)
    cases = [
        ("no_key_for", path, dict(keys=opener, recipients=[oct_holder])),
        ("not_staying", path, dict(keys=opener, recipients=[pub, oct_holder, stranger])),
        ("not_staying", path, dict(keys=opener, recipients=[pub, oct_holder], remove=[oct_holder["kid"]])),
        ("already_recipient", path, dict(keys=opener, recipients=[pub, oct_holder], add=[oct_holder])),
        ("unknown_kid", path, dict(keys=opener, recipients=[pub, oct_holder], remove=["nope"])),
        ("no_recipient_left", path, dict(keys=opener, remove=[opener["kid"], holder["kid"], oct_holder["kid"]])),
        ("signed", signed, dict(keys=opener)),
        ("no_data_key", signed_only, dict(sign_with=signer)),
        ("already_recipient", path, dict(keys=opener, recipients=[pub, oct_holder], add=[CapturingWrapper(oct_holder)])),
        ("wrapper_without_kid", path, dict(keys=opener, recipients=[pub, oct_holder], add=[Naming(stranger, None)])),
    ]
    before = {p: p.read_bytes() for p in (path, signed, signed_only)}
    for code, file, args in cases:
        refusal = _plan(file, **args)["refusal"]
        assert refusal is not None and refusal["code"] == code, (code, refusal)
        kw = dict(args)
        for name in ("recipients", "add"):
            kw[name] = kw.get(name) or None
        with pytest.raises(ct.InvalidArgumentError) as e:
            ct.rekey(file, **kw)
        assert str(e.value) == refusal["message"], code
    assert _plan(path, keys=opener, recipients=[oct_holder])["refusal"]["kids"] == [holder["kid"]]
    assert {p: p.read_bytes() for p in before} == before, "nothing refused was written"

    accepted = dict(keys=opener, recipients=[pub], remove=[oct_holder["kid"]], add=[stranger])
    plan = _plan(path, **accepted)
    assert plan["refusal"] is None
    assert plan["staying"] == [(opener["kid"], "key"), (holder["kid"], "recipient")]
    assert plan["added"] == [stranger["kid"]] and plan["removed"] == [oct_holder["kid"]]
    ct.rekey(path, **accepted)
    check(path, stranger, model())


def test_rekey_adds_key_wrapper_recipients(tmp_path, monkeypatch):
    """add= takes key wrappers mixed with JWKs: each wraps the fresh data key
    (not the old one), and what holds its key (a key provider) opens the new
    file; one whose stanza is not of the kid it names is refused, and
    nothing is written."""
    from cryptotensors import _providers

    monkeypatch.setattr(_providers, "_registered", [])
    monkeypatch.setattr(_providers, "_discovered", [])
    monkeypatch.delenv("CRYPTOTENSORS_KEYS", raising=False)
    key, hsm, other = ct.generate_key("oct"), ct.generate_key("oct"), ct.generate_key("oct")
    path, out = tmp_path / "m.safetensors", tmp_path / "n.safetensors"
    cn.save_file(model(), path, encrypt_for=key)
    with pytest.raises(ct.InvalidArgumentError, match="another kid"):
        ct.rekey(path, keys=key, add=[Naming(hsm, "hsm-label")], output=out)
    assert not out.exists()
    wrapper = CapturingWrapper(hsm)
    old_kids = [r["kid"] for r in envelope(path)["encryption"]["recipients"]]
    ct.rekey(path, keys=key, add=[other, wrapper], output=out)
    assert [r["kid"] for r in envelope(out)["encryption"]["recipients"]] == old_kids + [other["kid"], hsm["kid"]]
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(out)
    ct.register_key_provider(VaultProvider(hsm))
    check(out, None, model())
    check(out, other, model())
    # The wrapper was given the new data key: the old header's key opens nothing of the new data.
    (old_header, _), (_, new_data) = header_of(path), header_of(out)
    spliced = tmp_path / "spliced.safetensors"
    spliced.write_bytes(old_header + new_data)
    with pytest.raises(ct.IntegrityError):
        cn.load_file(spliced, keys=key)


REKEY_RSS = """
import json, os, sys, cryptotensors, cryptotensors.numpy

def peak_kib():  # this process's own peak RSS (ru_maxrss would include the parent's, from before exec)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])

before = peak_kib()
key = json.loads(os.environ["KEY"])
if sys.argv[1] == "load":
    cryptotensors.numpy.load_file(os.environ["FILE"], keys=key)
else:
    cryptotensors.rekey(os.environ["FILE"], keys=key, num_threads=2)
print(before, peak_kib())
"""


def test_rekey_streams(tmp_path):
    """A rekey holds a few batches of segments, not the tensor nor the file:
    rekeying a 192 MiB tensor raises the peak RSS by far less than that."""
    import subprocess
    import sys

    key = ct.generate_key("oct")
    path = tmp_path / "big.safetensors"
    cn.save_file({"w": np.ones(48 << 20, np.float32)}, path, encrypt_for=key)
    env = dict(os.environ, FILE=str(path), KEY=json.dumps(key))

    def growth(op):
        out = subprocess.run([sys.executable, "-c", REKEY_RSS, op], env=env, check=True, capture_output=True, text=True).stdout
        before, after = (int(x) for x in out.split())
        return (after - before) << 10

    assert growth("load") > 192 << 20, "the measure sees a whole tensor in memory"
    assert growth("rekey") < 48 << 20, f"peak RSS grew by {growth('rekey') >> 20} MiB"
    assert cn.load_file(path, keys=key)["w"][-1] == 1
