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
