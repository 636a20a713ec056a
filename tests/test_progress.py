"""Progress from the core while a file is transcoded or rekeyed: the
callback hears rising byte totals that end at the tensors' size, an
exception it raises stops the write (no output, no temporary file) and is
raised as it was, and only a callable is accepted."""

import os

import numpy as np
import pytest

import cryptotensors as ct
import cryptotensors.numpy as cn
from cryptotensors import _core
from cryptotensors._serialize import save_options

MIB = 1 << 20


def _model(path, **save):
    """Three 5 MiB tensors and an empty one: more than one report's worth."""
    tensors = {f"t{i}": np.full(5 * MIB, i, np.uint8) for i in range(3)}
    tensors["empty"] = np.zeros(0, np.float32)
    cn.save_file(tensors, path, **save)
    return tensors, 15 * MIB


def _transcode(src, dst, progress, keys=None, **save):
    with ct.safe_open(src, "np", keys=keys) as f:
        _core.transcode(f._handle, os.fspath(dst), progress=progress, **save_options(f.offset_keys(), **save))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("direction", ["encrypt", "decrypt"])
def test_transcode_reports_rising_totals_ending_at_the_size(tmp_path, direction):
    key = ct.generate_key("oct")
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    tensors, total = _model(src, **({"encrypt_for": key} if direction == "decrypt" else {}))
    seen = []
    if direction == "encrypt":
        _transcode(src, dst, seen.append, encrypt_for=key)
    else:
        _transcode(src, dst, seen.append, keys=key)
    assert len(seen) > 1, seen
    assert all(a < b for a, b in zip(seen, seen[1:])), seen
    assert seen[-1] == total
    back = cn.load_file(dst, keys=key)
    assert all(np.array_equal(back[k], v) for k, v in tensors.items())


@pytest.mark.parametrize("exc", [_Stop, KeyboardInterrupt])
def test_an_exception_in_the_callback_stops_the_write(tmp_path, exc):
    key = ct.generate_key("oct")
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    _model(src)
    seen = []

    def stop(done):
        seen.append(done)
        raise exc("stop here")

    with pytest.raises(exc, match="stop here"):
        _transcode(src, dst, stop, encrypt_for=key)
    assert len(seen) == 1, "the write waits for the callback, and stops at its exception"
    assert sorted(os.listdir(tmp_path)) == ["src.safetensors"], "no output, no temporary file"

    dst.write_bytes(b"old")
    with pytest.raises(exc):
        _transcode(src, dst, stop, encrypt_for=key)
    assert dst.read_bytes() == b"old", "the target is left as it was"
    assert sorted(os.listdir(tmp_path)) == ["dst.safetensors", "src.safetensors"]


def test_the_callback_must_be_callable(tmp_path):
    src = tmp_path / "src.safetensors"
    _model(src)
    with pytest.raises(TypeError, match="progress: expected a callable"):
        _transcode(src, tmp_path / "dst.safetensors", 5)
    with pytest.raises(TypeError, match="progress"):
        ct.rekey(src, progress="not callable")
    assert os.listdir(tmp_path) == ["src.safetensors"]


def test_rekey_reports_progress_and_an_exception_stops_it(tmp_path):
    key = ct.generate_key("oct")
    path = tmp_path / "m.safetensors"
    tensors, total = _model(path, encrypt_for=key)
    seen = []
    ct.rekey(path, keys=key, progress=seen.append)
    assert len(seen) > 1 and all(a < b for a, b in zip(seen, seen[1:])) and seen[-1] == total, seen
    before = path.read_bytes()

    def stop(done):
        raise _Stop(done)

    with pytest.raises(_Stop):
        ct.rekey(path, keys=key, progress=stop)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]
    back = cn.load_file(path, keys=key)
    assert all(np.array_equal(back[k], v) for k, v in tensors.items())
