"""Every reader path runs every vector in tests/vectors (FORMAT.md §10)."""

import glob
import hashlib
import json
import os

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
    "unsupported": ct.SafetensorError,
    "format": ct.SafetensorError,
}


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
            with pytest.raises(ERRORS[meta["expect"]]):
                read()


@pytest.mark.parametrize("name", [v for v in VECTORS if v != "plain"])
def test_stock_safetensors_refuses_protected_vectors(name):
    import safetensors.numpy

    _, path = _load(name)
    with pytest.raises(Exception, match="incomplete metadata|not fully covered"):
        safetensors.numpy.load_file(path)
