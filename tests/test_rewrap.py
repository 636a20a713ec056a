"""Key rotation: rewrap changes only the header, and a crash at any moment
leaves the old file or the new one."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cryptotensors as ct
import cryptotensors.numpy as cn


def data_region(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return raw[8 + n :]


def test_add_remove_and_replace_keys(tmp_path):
    a, b, c = ct.generate_key("oct"), ct.generate_key("X25519"), ct.generate_key("oct")
    d = {"w": np.arange(10000, dtype=np.float32), "n": np.ones(4, np.float16)}
    path = tmp_path / "m.safetensors"
    cn.save_file(d, path, metadata={"format": "np"}, encrypt_for=a)
    before = data_region(path)
    ct.rewrap(path, keys=a, add=ct.public_key(b))
    assert data_region(path) == before
    for k in (a, b):
        np.testing.assert_array_equal(cn.load_file(path, keys=k)["w"], d["w"])
    ct.rewrap(path, keys=b, add=c, remove=[a["kid"]])  # replace a key-encryption key
    assert data_region(path) == before
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path, keys=a)
    np.testing.assert_array_equal(cn.load_file(path, keys=c)["w"], d["w"])
    assert [r["kid"] for r in ct.inspect(path)["recipients"]] == [b["kid"], c["kid"]]
    assert ct.inspect(path)["metadata"] == {"format": "np"}
    with pytest.raises(ct.SafetensorError, match="unreadable"):
        ct.rewrap(path, keys=c, remove=[b["kid"], c["kid"]])
    with pytest.raises(ct.KeyNotFoundError):
        ct.rewrap(path, keys=a, add=a)


def test_resign_and_drop_signature(tmp_path):
    key, old, new = ct.generate_key("oct"), ct.generate_key("Ed25519"), ct.generate_key("Ed25519")
    path = tmp_path / "s.safetensors"
    cn.save_file({"w": np.arange(5)}, path, encrypt_for=key, sign_with=old)
    with pytest.raises(ct.SafetensorError, match="sign_with"):
        ct.rewrap(path, keys=key, add=ct.generate_key("oct"))
    with pytest.raises(ct.SignatureError):
        ct.rewrap(path, keys=key, sign_with=new, trusted_signers=ct.public_key(new))
    ct.rewrap(path, keys=key, sign_with=new, trusted_signers=ct.public_key(old))
    cn.load_file(path, keys=key, trusted_signers=ct.public_key(new))
    with pytest.raises(ct.SignatureError):
        cn.load_file(path, keys=key, trusted_signers=ct.public_key(old))
    ct.rewrap(path, keys=key, drop_signature=True)
    assert ct.inspect(path)["signer"] is None
    cn.load_file(path, keys=key)


def test_output_elsewhere_leaves_source(tmp_path):
    a, b = ct.generate_key("oct"), ct.generate_key("oct")
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    cn.save_file({"w": np.arange(3)}, src, encrypt_for=a)
    ct.rewrap(src, keys=a, add=b, remove=[a["kid"]], output=dst)
    cn.load_file(src, keys=a)
    cn.load_file(dst, keys=b)


def test_rewrap_in_place_changes_only_the_first_page(tmp_path):
    """Room reserved after the metadata: the rewrap rewrites the first page in
    place (same inode) and every byte after it stays."""
    old, new = ct.generate_key("oct"), ct.generate_key("X25519")
    path = tmp_path / "m.safetensors"
    w = np.arange(50_000, dtype=np.float32)
    cn.save_file({"w": w}, path, metadata={"format": "pt"}, encrypt_for=old)
    before, ino = path.read_bytes(), path.stat().st_ino
    ct.rewrap(path, keys=old, add=ct.public_key(new), remove=[old["kid"]])
    after = path.read_bytes()
    assert path.stat().st_ino == ino and len(after) == len(before)
    assert after[4096:] == before[4096:] and after[:4096] != before[:4096]
    np.testing.assert_array_equal(cn.load_file(path, keys=new)["w"], w)
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path, keys=old)
    assert ct.safe_open(path, "np", keys=new).metadata()["format"] == "pt"


REWRAP = """
import json, os, cryptotensors
k = json.loads(os.environ["KEYS"])
cryptotensors.rewrap(os.environ["FILE"], keys=k["old"], add=k["new"], remove=[k["old"]["kid"]])
"""


def test_sigkill_during_rewrap_leaves_old_or_new(tmp_path):
    old, new = ct.generate_key("oct"), ct.generate_key("oct")
    w = np.random.default_rng(0).standard_normal(16 << 20, dtype=np.float32)  # 64 MiB to copy
    path = tmp_path / "big.safetensors"
    cn.save_file({"w": w}, path, encrypt_for=old)
    env = dict(os.environ, FILE=str(path), KEYS=json.dumps({"old": old, "new": new}))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", REWRAP], env=env, check=True)
    full = time.perf_counter() - start
    cn.save_file({"w": w}, path, encrypt_for=old)
    rng = random.Random(1)
    outcomes = set()
    for _ in range(12):
        p = subprocess.Popen([sys.executable, "-c", REWRAP], env=env)
        time.sleep(rng.uniform(0, full * 1.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
        opened = []
        for name, key in (("old", old), ("new", new)):
            try:
                got = cn.load_file(path, keys=key)["w"]
            except ct.KeyNotFoundError:
                continue
            np.testing.assert_array_equal(got, w)
            opened.append(name)
        assert len(opened) == 1, f"the file must open with exactly one generation of keys, got {opened}"
        outcomes.add(opened[0])
        if opened == ["new"]:
            cn.save_file({"w": w}, path, encrypt_for=old)
    assert outcomes, "no run was observed"


# ---------------------------------------------------------------- concurrency

EDITOR = """
import json, os, sys, time, cryptotensors
k = json.loads(os.environ["KEYS"])
op, path = sys.argv[1], os.environ["FILE"]
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.001)
for key in k[op]:
    if op == "remove":
        cryptotensors.rewrap(path, keys=k["opener"], remove=[key["kid"]])
    else:
        cryptotensors.rewrap(path, keys=k["opener"], add=key)
"""


@pytest.mark.parametrize("n, in_place", [(2, True), (8, False)])
def test_concurrent_rewraps_lose_no_update(tmp_path, n, in_place):
    """Processes that add and remove recipients of one file at the same time:
    every change survives (rewraps of one file are serialized by a lock and
    re-read the header under it). With few recipients every rewrap is in
    place (the inode stays); with many the header outgrows its first page
    and every rewrap renames a new file over the old."""
    for r in range(3):
        opener = ct.generate_key("oct")
        k = {"opener": opener, "remove": [ct.generate_key("oct") for _ in range(n)],
             "add": [ct.generate_key("oct") for _ in range(n)], "add2": [ct.generate_key("oct") for _ in range(n)]}
        path, go = tmp_path / f"m{r}.safetensors", tmp_path / f"go{r}"
        cn.save_file({"w": np.arange(64, dtype=np.float32)}, path, encrypt_for=[opener, *k["remove"]])
        ino = path.stat().st_ino
        env = dict(os.environ, FILE=str(path), GO=str(go), KEYS=json.dumps(k))
        procs = [subprocess.Popen([sys.executable, "-c", EDITOR, op], env=env, stderr=subprocess.PIPE)
                 for op in ("remove", "add", "add2")]
        time.sleep(0.5)  # all three imported and waiting
        go.touch()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
        kids = sorted(r["kid"] for r in ct.inspect(path)["recipients"])
        assert kids == sorted([opener["kid"]] + [x["kid"] for x in k["add"] + k["add2"]]), f"round {r}: lost update"
        if in_place:
            assert path.stat().st_ino == ino
        else:  # a header past the first page is never rewritten in place (inode numbers get reused)
            assert 8 + int.from_bytes(path.read_bytes()[:8], "little") > 4096
        np.testing.assert_array_equal(cn.load_file(path, keys=k["add"][0])["w"], np.arange(64, dtype=np.float32))
        assert sorted(os.listdir(tmp_path)) == sorted(
            [f"m{i}.safetensors" for i in range(r + 1)] + [f"go{i}" for i in range(r + 1)]), "no lock or temporary file left"


# ---------------------------------------------------------------- verification as a load does

DENY = 'package cryptotensors\nimport rego.v1\ndefault allow := false\nreason := "denied by test"\n'
TEE = ('package cryptotensors\nimport rego.v1\ndefault allow := false\n'
       'allow if { input.claims.tee.verified == true }\n')


def test_rewrap_evaluates_the_policy(tmp_path):
    """A key holder whom the policy denies cannot strip (or change) the policy,
    nor the recipients; claims the policy accepts let the rewrap through."""
    key, other = ct.generate_key("oct"), ct.generate_key("oct")
    path = tmp_path / "p.safetensors"
    cn.save_file({"w": np.arange(8)}, path, encrypt_for=key, policy=DENY)
    before = path.read_bytes()
    for change in ({"remove_policy": True}, {"policy": TEE}, {"add": other}):
        with pytest.raises(ct.PolicyDeniedError, match="denied by test"):
            ct.rewrap(path, keys=key, **change)
        assert path.read_bytes() == before
    cn.save_file({"w": np.arange(8)}, path, encrypt_for=key, policy=TEE)
    with pytest.raises(ct.PolicyDeniedError):
        ct.rewrap(path, keys=key, remove_policy=True)
    ct.rewrap(path, keys=key, remove_policy=True, policy_input={"tee": {"verified": True}})
    assert ct.inspect(path)["policy"] is None
    cn.load_file(path, keys=key)


@pytest.mark.parametrize("damage", ["trailer", "appended", "truncated"])
def test_rewrap_refuses_a_damaged_file(tmp_path, damage):
    """A rewrap checks the file length and the trailer digest, as a load does:
    it never re-MACs a corrupted file into one that looks fine."""
    key, other = ct.generate_key("oct"), ct.generate_key("oct")
    path = tmp_path / "d.safetensors"
    cn.save_file({"w": np.arange(4096, dtype=np.float32)}, path, encrypt_for=key, segment_size=4096)
    raw = bytearray(path.read_bytes())
    if damage == "trailer":
        raw[-3] ^= 1
    elif damage == "appended":
        raw += b"\0" * 16
    else:
        del raw[-16:]
    path.write_bytes(bytes(raw))
    error = ct.IntegrityError if damage == "trailer" else ct.SafetensorError
    with pytest.raises(error):
        ct.rewrap(path, keys=key, add=other)
    assert path.read_bytes() == bytes(raw)


def test_in_place_with_empty_tensors_of_two_dtypes(tmp_path):
    """Empty tensors of different dtypes share an offset; the writer lists
    protected files' tensors in file order (offsets, then name), so a rewrap
    re-encodes the same header and stays in place."""
    key, other = ct.generate_key("oct"), ct.generate_key("oct")
    path = tmp_path / "e.safetensors"
    d = {"a": np.zeros(0, np.uint8), "b": np.zeros(0, np.float32), "c": np.arange(3, dtype=np.float64)}
    cn.save_file(d, path, encrypt_for=key)
    before, ino = path.read_bytes(), path.stat().st_ino
    ct.rewrap(path, keys=key, add=other)
    after = path.read_bytes()
    assert path.stat().st_ino == ino, "rewritten in place"
    assert after[4096:] == before[4096:]
    for k in (key, other):
        got = cn.load_file(path, keys=k)
        for name, v in d.items():
            np.testing.assert_array_equal(got[name], v)
            assert got[name].dtype == v.dtype


def test_rewrap_adds_key_wrapper_recipients(tmp_path, monkeypatch):
    """add= mixes JWKs and key wrappers (an HSM, a key service: wrap(data_key)
    and a kid): the wrapper wraps the file's data key, and what holds its
    key (here a key provider) opens the result; the plan names the wrapper
    by its kid. A wrapper whose stanza is not of its kid, of no kid, of a
    recipient's kid, or for a file that is not encrypted is refused, and
    nothing is written."""
    from test_providers import CapturingWrapper, Naming, VaultProvider

    from cryptotensors import _providers

    monkeypatch.setattr(_providers, "_registered", [])
    monkeypatch.setattr(_providers, "_discovered", [])
    monkeypatch.delenv("CRYPTOTENSORS_KEYS", raising=False)
    a, hsm, b = ct.generate_key("oct"), ct.generate_key("oct"), ct.generate_key("X25519")
    d = {"w": np.arange(3000, dtype=np.float32)}
    path = tmp_path / "m.safetensors"
    cn.save_file(d, path, encrypt_for=a)
    before, data = path.read_bytes(), data_region(path)

    wrapper = CapturingWrapper(hsm)
    for bad, match in [(Naming(hsm, "hsm-label"), "another kid"), (Naming(hsm, None), "name its kid"),
                       (CapturingWrapper(a), "already a recipient")]:
        with pytest.raises(ct.InvalidArgumentError, match=match):
            ct.rewrap(path, keys=a, add=[bad])
    assert path.read_bytes() == before

    plan = ct._core.rewrap_plan(os.fspath(path), **ct._added([wrapper, ct.public_key(b)]))
    assert plan["refusal"] is None and plan["added"] == [b["kid"], hsm["kid"]]
    ct.rewrap(path, keys=a, add=[wrapper, ct.public_key(b)])
    assert data_region(path) == data
    assert [r["kid"] for r in ct.inspect(path)["recipients"]] == [a["kid"], b["kid"], hsm["kid"]]
    with pytest.raises(ct.KeyNotFoundError):
        cn.load_file(path)
    provider = VaultProvider(hsm)
    ct.register_key_provider(provider)
    np.testing.assert_array_equal(cn.load_file(path)["w"], d["w"])
    assert provider.calls == 1
    np.testing.assert_array_equal(cn.load_file(path, keys=b)["w"], d["w"])

    signed = tmp_path / "s.safetensors"
    signer = ct.generate_key("Ed25519")
    cn.save_file(d, signed, sign_with=signer)
    with pytest.raises(ct.InvalidArgumentError, match="not encrypted"):
        ct.rewrap(signed, sign_with=signer, add=CapturingWrapper(hsm))


def test_no_file_gets_two_stanzas_of_one_kid(tmp_path):
    """FORMAT.md §8.1: a writer never writes two stanzas of one kid. A key
    given twice to a save, a rewrap or a rekey is refused, and the file is
    left as it was (or not written)."""
    opener, other = ct.generate_key("oct"), ct.generate_key("oct")
    path = tmp_path / "m.safetensors"
    cn.save_file({"w": np.arange(4.0)}, path, encrypt_for=[opener])
    before = path.read_bytes()
    with pytest.raises(ct.InvalidArgumentError, match="two recipients have kid"):
        cn.save_file({"w": np.arange(4.0)}, tmp_path / "twice.safetensors", encrypt_for=[other, other])
    assert not (tmp_path / "twice.safetensors").exists()
    for rotate in (ct.rewrap, ct.rekey):
        with pytest.raises(ct.InvalidArgumentError, match="already a recipient"):
            rotate(path, keys=opener, add=[other, other])
        assert path.read_bytes() == before
    assert [r["kid"] for r in ct.inspect(path)["recipients"]] == [opener["kid"]]
