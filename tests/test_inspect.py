"""cryptotensors.inspect(): a typed, read-only description of a file from its
header alone (issue 12), computed by the core, that says how a file is
protected even when it is damaged, instead of raising; and the mapping of
the dict it returned before, so its callers keep working."""

import collections.abc
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cryptotensors as ct
from cryptotensors import _core, cli
from cryptotensors.numpy import save_file

LEGACY = Path(__file__).parent / "vectors" / "legacy"
BIN = Path(sys.executable).parent / "cryptotensors"
TENSORS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.uint8)}
EXPECTED_TENSORS = [  # file order: widest dtype first
    {"name": "w", "dtype": "F32", "shape": [2, 3], "nbytes": 24},
    {"name": "b", "dtype": "U8", "shape": [4], "nbytes": 4},
]


def _tensors(encrypted):
    return [dict(t, encrypted=t["name"] in encrypted) for t in EXPECTED_TENSORS]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    key, signer = ct.generate_key("oct"), ct.generate_key("Ed25519")
    meta = {"format": "np"}
    save_file(TENSORS, d / "plain.safetensors", metadata=meta)
    save_file(TENSORS, d / "signed.safetensors", metadata=meta, sign_with=signer)
    save_file(TENSORS, d / "enc.safetensors", metadata=meta, encrypt_for=key, encrypted_tensors=["w"],
              policy="package cryptotensors\ndefault allow := true\n")
    return d, key, signer


def _header(path):
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw[8 : 8 + n], raw[8 + n :]


def _write(path, json_bytes, data=b""):
    Path(path).write_bytes(len(json_bytes).to_bytes(8, "little") + json_bytes + data)
    return path


def test_plain_file(files):
    d, _, _ = files
    h = ct.inspect(d / "plain.safetensors")
    assert (h.protection, h.damage, h.legacy) == ("plain", None, False)
    assert (h.signer, h.format_version, h.segment_size, h.policy, h.algorithm) == (None,) * 5
    assert h.recipients == []
    # The mapping: exactly the old dict's keys (no envelope, so no
    # format_version, segment_size, policy, algorithm or recipients), plus
    # protection and damage.
    assert h.to_dict() == {
        "protection": "plain", "damage": None, "tensors": _tensors(()), "metadata": {"format": "np"}, "signer": None,
    }
    assert "algorithm" not in h and h.get("algorithm") is None and "recipients" not in h


def test_signed_file(files):
    d, _, signer = files
    h = ct.inspect(d / "signed.safetensors")
    assert (h.protection, h.damage, h.legacy) == ("signed", None, False)
    assert h.signer == signer["kid"]
    assert h.to_dict() == {
        "protection": "signed", "damage": None, "tensors": _tensors(()), "metadata": {"format": "np"},
        "signer": signer["kid"], "format_version": 1, "segment_size": 1 << 20, "policy": None,
    }


def test_encrypted_file(files):
    d, key, _ = files
    h = ct.inspect(d / "enc.safetensors")
    assert (h.protection, h.damage, h.legacy, h.algorithm) == ("encrypted", None, False, "AES-256-GCM")
    (stanza,) = h.recipients
    assert (stanza["kid"], stanza["alg"]) == (key["kid"], "A256GCMKW")
    assert set(stanza) == {"kid", "alg", "iv", "tag", "encrypted_key"}
    assert h.to_dict() == {
        "protection": "encrypted", "damage": None, "tensors": _tensors(("w",)), "metadata": {"format": "np"},
        "signer": None, "format_version": 1, "segment_size": 1 << 20,
        "policy": "package cryptotensors\ndefault allow := true\n", "algorithm": "AES-256-GCM",
        "recipients": [stanza],
    }
    assert list(h) == list(h.keys()) == ["protection", "damage", "tensors", "metadata", "signer", "format_version",
                                         "segment_size", "policy", "algorithm", "recipients"]


@pytest.mark.parametrize("case", sorted(json.loads((LEGACY / "cases.json").read_text())["cases"]))
def test_cryptotensors_0_2_3_files_are_encrypted(case):
    want = json.loads((LEGACY / "cases.json").read_text())["cases"][case]["encrypted"]
    h = ct.inspect(LEGACY / f"{case}.safetensors")
    assert (h.protection, h.legacy, h.damage) == ("encrypted", True, None)
    assert sorted(t["name"] for t in h.tensors if t["encrypted"]) == sorted(want)
    assert h["protection"] == "encrypted" and "algorithm" not in h  # no envelope of this format


def test_the_mapping_protocol(files):
    d, key, _ = files
    h = ct.inspect(d / "enc.safetensors")
    assert isinstance(h, collections.abc.Mapping) and isinstance(h, _core.Inspection)
    assert len(h) == 10 and "tensors" in h and 5 not in h and "nope" not in h
    assert h.get("nope", 7) == 7 and h.get(5) is None
    with pytest.raises(KeyError):
        h["nope"]
    assert dict(h.items()) == h.to_dict() and list(h.values()) == [h[k] for k in h]
    assert h == ct.inspect(d / "enc.safetensors") == h.to_dict()
    assert h != ct.inspect(d / "plain.safetensors") and h != 5
    assert h["tensors"][0]["encrypted"] and h["recipients"][0]["kid"] == key["kid"]
    # read-only: not assignable, and the lists handed out are copies
    with pytest.raises(TypeError):
        h["protection"] = "plain"
    with pytest.raises(AttributeError):
        h.protection = "plain"
    h["tensors"].clear()
    assert len(h["tensors"]) == 2
    with pytest.raises(TypeError):
        hash(h)
    json.dumps(h.to_dict())
    text = repr(h)
    assert text.startswith("Inspection(protection=\"encrypted\"") and key["kid"] in text
    assert key["k"] not in text and h.recipients[0]["encrypted_key"] not in text


def _damaged(d, name):
    """A damaged copy of a fixture, and the protection it must still show."""
    header, data = _header(d / ("enc.safetensors" if name != "signed envelope" else "signed.safetensors"))
    out = d / f"damaged-{name.replace(' ', '-')}.safetensors"
    if name == "truncated JSON":
        raw = (d / "enc.safetensors").read_bytes()
        out.write_bytes(raw[: 8 + len(header) // 2])
        return out, "encrypted"
    if name == "JSON not an object":
        return _write(out, b"[1, 2, 3]"), "plain"
    if name == "bad offsets":
        doc = json.loads(header)
        doc["w"]["data_offsets"][1] -= 4
        return _write(out, json.dumps(doc).encode(), data), "encrypted"
    if name in ("envelope member", "signed envelope"):
        marker = b'\\"trailer_sha256\\":\\"'
        assert header.count(marker) == 1
        at = header.index(marker) + len(marker)
        return _write(out, header[:at] + b"!" + header[at + 1 :], data), "signed" if name == "signed envelope" else "encrypted"
    if name == "garbage with the reserved prefix":
        return _write(out, b'{"__metadata__": {"__cryptotensors__": "{\x00\x01 garbage'), "encrypted"
    if name == "data length":
        return _write(out, header, data + b"\0"), "encrypted"
    raise AssertionError(name)


DAMAGE = ["truncated JSON", "JSON not an object", "bad offsets", "envelope member", "signed envelope",
          "garbage with the reserved prefix", "data length"]


@pytest.mark.parametrize("name", DAMAGE)
def test_a_damaged_file_is_described_not_raised(files, name):
    d, _, _ = files
    path, protection = _damaged(d, name)
    h = ct.inspect(path)
    assert isinstance(h.damage, str) and h.damage and len(h.damage) < 500
    assert h.protection == protection == h["protection"] and h["damage"] == h.damage
    assert h.to_dict()["damage"] == h.damage
    with pytest.raises(ct.SafetensorError):
        h.check()
    # what could still be learnt is there
    if name in ("bad offsets", "envelope member", "data length"):
        assert h.metadata == {"format": "np"}
    if name in ("envelope member", "data length"):
        assert [t["name"] for t in h.tensors] == ["w", "b"]
    from cryptotensors import vllm_plugin

    assert vllm_plugin.protection(path) == (None if protection == "plain" else protection)


def test_a_damaged_envelope_keeps_every_tensor_counted_as_encrypted(files):
    d, _, _ = files
    path, _ = _damaged(d, "envelope member")
    assert [t["encrypted"] for t in ct.inspect(path).tensors] == [True, True]  # which ones cannot be told


def test_header_length_over_the_cap_errors_without_allocating(tmp_path):
    huge = _write(tmp_path / "huge.safetensors", b"{}")
    raw = bytearray(huge.read_bytes())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for n in (2**63, 100_000_001):
        raw[:8] = n.to_bytes(8, "little")
        huge.write_bytes(raw)
        with pytest.raises(ct.SafetensorError, match="HeaderTooLarge"):
            ct.inspect(huge)
        with pytest.raises(ct.SafetensorError, match="HeaderTooLarge"):
            _core.protection(huge)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing near 100 MB
    # Under the cap but past the end of the file: a truncated file, damaged.
    raw[:8] = (1_000_000).to_bytes(8, "little")
    huge.write_bytes(raw)
    h = ct.inspect(huge)
    assert "truncated" in h.damage and h.protection == "plain"
    with pytest.raises(ct.SafetensorError, match="InvalidHeaderLength"):
        h.check()
    with pytest.raises(FileNotFoundError):
        ct.inspect(tmp_path / "missing.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"1234")
    with pytest.raises(ct.SafetensorError, match="HeaderTooSmall"):
        ct.inspect(tmp_path / "short.safetensors")


def _fact(result, label):
    """The text of the one fact line with this label."""
    (text,) = re.findall(rf"^  {label} +(.*)$", result.stdout, re.M)
    return text


def _cli(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_inspect_of_a_damaged_file(files, tmp_path):
    d, key, _ = files
    path, _ = _damaged(d, "envelope member")
    r = _cli("inspect", path)
    assert r.returncode == cli.EXIT_INTEGRITY, r.stderr
    assert _fact(r, "protection") == "encrypted"
    line = _fact(r, "damaged")
    assert line.startswith("the cryptotensors metadata is not understood") and line.endswith("; looks encrypted")
    assert _fact(r, "metadata") == "format=np" and _fact(r, "algorithm") == "unknown (its envelope is not understood)"
    assert re.search(r"^  w +F32 +\[2, 3\] +yes$", r.stdout, re.M)  # what could be learnt
    assert r.stderr.strip() == f"{cli.PROG}: {path}: damaged; looks encrypted"
    r = _cli("inspect", "--json", path)
    assert r.returncode == cli.EXIT_INTEGRITY
    doc = json.loads(r.stdout)
    assert doc["protection"] == "encrypted" and doc["damage"] == ct.inspect(path).damage
    # A directory: every file shown, the damaged one said, the exit code its.
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.safetensors").write_bytes((d / "plain.safetensors").read_bytes())
    (model / "b.safetensors").write_bytes(_damaged(d, "garbage with the reserved prefix")[0].read_bytes())
    r = _cli("inspect", model)
    assert r.returncode == cli.EXIT_INTEGRITY
    assert "protection  plain" in r.stdout and "looks encrypted" in r.stdout
    assert "tensors     unknown (the header is not understood)" in r.stdout
    assert "policy      unknown (its envelope is not understood)" in r.stdout
    r = _cli("inspect", model, "--json")
    assert {k: v["protection"] for k, v in json.loads(r.stdout)["files"].items()} == {
        "a.safetensors": "plain", "b.safetensors": "encrypted"}
    # An undamaged file: exit 0, its protection said.
    r = _cli("inspect", d / "signed.safetensors")
    assert r.returncode == 0 and _fact(r, "protection") == "signed"
    # Commands that read the file still fail on it, as they did.
    (tmp_path / "k.jwk").write_text(json.dumps(key))
    r = _cli("decrypt", path, "-o", tmp_path / "out.safetensors", "-k", tmp_path / "k.jwk")
    assert r.returncode == cli.EXIT_FAILURE and "not base64url" in r.stderr, r.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_inspect_of_a_legacy_file():
    r = _cli("inspect", LEGACY / "v2_partial.safetensors")
    assert r.returncode == 0, r.stderr
    assert _fact(r, "protection") == "encrypted, by cryptotensors 0.2.3 (convert it with `cryptotensors migrate`)"
    assert _fact(r, "algorithm") == "unknown (a cryptotensors 0.2.3 file)"
    assert "__encryption__" not in r.stdout and _fact(r, "tensors") == "5, 2 encrypted"
