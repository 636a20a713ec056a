"""Every reader path runs every vector in tests/vectors (FORMAT.md §10)."""

import glob
import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch

import cryptotensors as ct
import cryptotensors.numpy as cn
import cryptotensors.torch as ctt

HERE = os.path.join(os.path.dirname(__file__), "vectors")
VECTORS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(HERE, "*.json")))
ERRORS = {
    "integrity": ct.IntegrityError,
    "key_not_found": ct.KeyNotFoundError,
    "signature": ct.SignatureError,
    "unsupported": ct.UnsupportedError,
    "format": ct.SafetensorError,
}


def assert_kind(e, kind):
    """The exact error kind of FORMAT.md §10: the class itself, not a base
    class (so `format`, a bare SafetensorError, is never UnsupportedError)."""
    assert type(e) is ERRORS[kind], (kind, type(e), e)


def _load(name):
    with open(os.path.join(HERE, name + ".json")) as f:
        return json.load(f), os.path.join(HERE, name + ".safetensors")


def _bytes(t):
    if isinstance(t, torch.Tensor):
        return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    if isinstance(t, (bytes, bytearray)):
        return bytes(t)
    return np.ascontiguousarray(t).tobytes()


def _paths(path, opts):
    with open(path, "rb") as f:
        data = f.read()
    yield "safe_open np mmap", lambda: ct.safe_open(path, "np", **opts).get_tensors()
    yield "safe_open pt pread", lambda: ct.safe_open(path, "pt", backend="pread", **opts).get_tensors()
    yield "numpy.load_file", lambda: cn.load_file(path, **opts)
    yield "torch.load_file", lambda: ctt.load_file(path, **opts)
    yield "numpy.load(bytes)", lambda: cn.load(data, **opts)
    yield "torch.load(bytes)", lambda: ctt.load(data, **opts)
    yield "deserialize", lambda: {n: v["data"] for n, v in ct.deserialize(data, **opts)}


@pytest.mark.parametrize("name", VECTORS)
def test_vector_every_reader_path(name):
    meta, path = _load(name)
    opts = {"keys": meta["keys"] or None, "trusted_signers": meta["trusted_signers"]["keys"] or None}
    for label, read in _paths(path, opts):
        if meta["expect"] == "ok":
            got = read()
            assert sorted(got) == sorted(meta["tensors"]), label
            for k, want in meta["tensors"].items():
                assert hashlib.sha256(_bytes(got[k])).hexdigest() == want["sha256"], (label, k)
        else:
            with pytest.raises(ct.SafetensorError) as info:
                read()
            assert_kind(info.value, meta["expect"])


@pytest.mark.parametrize("name", [v for v in VECTORS if v != "plain"])
def test_vectors_follow_the_metadata_slot_layout(name):
    """FORMAT.md §2: a protected file's header is the compact encoding, its
    metadata slot ending at offset 4096 when 1024 spaces fit, so that a
    rewrap can replace it in place (§8.1)."""
    _, path = _load(name)
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = dict(sorted(header["__metadata__"].items(), key=lambda kv: kv[0].encode()))
    opening = ('{"__metadata__":' + json.dumps(meta, separators=(",", ":"), ensure_ascii=False)).encode()
    assert data[8:].startswith(opening), name
    slot = len(opening) + len(data[8 + len(opening) :]) - len(data[8 + len(opening) :].lstrip(b" "))
    assert 8 + slot == 4096 or (8 + len(opening) + 1024 > 4096 and slot == len(opening) + 1024), (name, slot)


def _recipients(name):
    with open(_load(name)[1], "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    env = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["__cryptotensors__"])
    return len(env["encryption"]["recipients"])


@pytest.mark.parametrize("name", [v for v in VECTORS if v != "plain" and _load(v)[0]["expect"] == "ok"
                                  and _load(v)[0]["keys"]["keys"] and "signed" not in v and _recipients(v) < 64])
def test_rewrapping_a_vector_is_done_in_place(name, tmp_path):
    """FORMAT.md §8.1 on the committed vectors: adding a recipient keeps the
    inode and every byte after the metadata slot."""
    import shutil

    meta, path = _load(name)
    copy = tmp_path / "v.safetensors"
    shutil.copy(path, copy)
    before, inode = copy.read_bytes(), os.stat(copy).st_ino
    ct.rewrap(copy, keys=meta["keys"]["keys"], add=ct.generate_key("oct"))
    after = copy.read_bytes()
    assert os.stat(copy).st_ino == inode and len(after) == len(before)
    assert after[4096:] == before[4096:]


@pytest.mark.parametrize("name", [v for v in VECTORS if v != "plain"])
def test_stock_safetensors_refuses_protected_vectors(name):
    import safetensors.numpy

    _, path = _load(name)
    with pytest.raises(Exception, match="incomplete metadata|not fully covered"):
        safetensors.numpy.load_file(path)


def test_a_rewrap_past_the_recipient_cap_is_refused(tmp_path):
    """aes_oct_repeated_stanza lists 64 stanzas, the most a file may; adding
    one more is refused, and the file is left as it was (FORMAT.md §3.2)."""
    import shutil

    meta, path = _load("aes_oct_repeated_stanza")
    copy = tmp_path / "v.safetensors"
    shutil.copy(path, copy)
    with pytest.raises(ct.SafetensorError, match="more than the 64"):
        ct.rewrap(copy, keys=meta["keys"]["keys"], add=ct.generate_key("oct"))
    assert copy.read_bytes() == open(path, "rb").read()


def test_a_rekey_of_repeated_stanzas_writes_one_per_recipient(tmp_path):
    """aes_oct_repeated_stanza repeats one recipient's stanza 64 times
    (readable, FORMAT.md §6.3); a rekey re-wraps the new data key once for
    that recipient, since a writer never writes two stanzas of one kid."""
    meta, path = _load("aes_oct_repeated_stanza")
    kids = [r["kid"] for r in ct.inspect(path)["recipients"]]
    assert len(kids) == 64 and len(set(kids)) == 1
    out = tmp_path / "rekeyed.safetensors"
    ct.rekey(path, keys=meta["keys"]["keys"], output=out)
    assert [r["kid"] for r in ct.inspect(out)["recipients"]] == kids[:1]
    with ct.safe_open(path, "np", keys=meta["keys"]["keys"]) as a, ct.safe_open(out, "np", keys=meta["keys"]["keys"]) as b:
        assert list(a.keys()) == list(b.keys())
        for name in a.keys():
            assert (a.get_tensor(name) == b.get_tensor(name)).all()


def test_invalid_loader_keys_are_invalid_key_errors():
    """FORMAT.md §6 "Loader keys", §10: a malformed loader key or a trusted
    signer that cannot sign is `invalid_key`, whatever the file."""
    for name in ("plain", "signed_plain"):
        _, path = _load(name)
        for opts in ({"keys": {"kty": "oct", "k": "AAAA"}},
                     {"trusted_signers": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}},
                     {"trusted_signers": ct.generate_key("oct")},
                     {"trusted_signers": ct.public_key(ct.generate_key("X25519"))}):
            with pytest.raises(ct.SafetensorError, match="^Invalid key:") as info:
                ct.safe_open(path, "np", **opts)
            assert type(info.value) is ct.InvalidKeyError, opts
