"""`_safe_open_handle(file_obj, framework, device)`, as safetensors 0.8 exports
it: the same results as safetensors for named files (open() files, fsspec's
local files), and in-memory file objects too, with the same verification as
any open."""

import io

import fsspec
import numpy as np
import pytest
import safetensors
import safetensors.numpy

import cryptotensors
from cryptotensors.numpy import save_file

DATA = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.int64)}


@pytest.fixture
def files(tmp_path):
    key = cryptotensors.generate_key("oct")
    plain, enc = tmp_path / "plain.safetensors", tmp_path / "enc.safetensors"
    save_file(DATA, plain)
    save_file(DATA, enc, encrypt_for=key)
    return plain, enc, key


def _same(h):
    assert h.keys() == sorted(DATA)
    for k, v in DATA.items():
        np.testing.assert_array_equal(h.get_tensor(k), v)
    np.testing.assert_array_equal(h.get_slice("a")[1:3], DATA["a"][1:3])


def test_exported_from_the_package_root():
    from cryptotensors import _safe_open_handle  # noqa: F401 (code written for safetensors imports it)


def test_an_open_file_as_safetensors(files):
    plain, _, _ = files
    with open(plain, "rb") as f, open(plain, "rb") as g:
        ours = cryptotensors._safe_open_handle(f, "np")
        theirs = safetensors._safe_open_handle(g, "np")
        assert ours.keys() == theirs.keys() and ours.metadata() == theirs.metadata()
        for k in theirs.keys():
            np.testing.assert_array_equal(ours.get_tensor(k), theirs.get_tensor(k))
    with open(plain, "rb") as f:
        _same(cryptotensors._safe_open_handle(f, "pt", device="cpu"))


def test_fsspec_local_files(files):
    plain, enc, key = files
    fs = fsspec.filesystem("file")
    with fs.open(str(plain), "rb") as f:
        _same(cryptotensors._safe_open_handle(f, "np"))
    with fs.open(str(enc), "rb") as f:
        _same(cryptotensors._safe_open_handle(f, "np", keys=key))
    with fs.open(str(enc), "rb") as f, pytest.raises(cryptotensors.KeyNotFoundError):
        cryptotensors._safe_open_handle(f, "np")


def test_in_memory_file_objects(files):
    plain, enc, key = files
    _same(cryptotensors._safe_open_handle(io.BytesIO(plain.read_bytes()), "np"))
    buf = io.BytesIO(enc.read_bytes())
    buf.seek(7)  # read from the start whatever the position
    _same(cryptotensors._safe_open_handle(buf, "np", keys=key))
    mem = fsspec.filesystem("memory")
    with mem.open("/enc.safetensors", "wb") as f:
        f.write(enc.read_bytes())
    with mem.open("/enc.safetensors", "rb") as f:
        _same(cryptotensors._safe_open_handle(f, "np", keys=key))


def test_in_memory_objects_are_verified_as_files_are(files):
    _, enc, key = files
    data = bytearray(enc.read_bytes())
    with pytest.raises(cryptotensors.KeyNotFoundError):
        cryptotensors._safe_open_handle(io.BytesIO(bytes(data)), "np")
    data[8 + int.from_bytes(data[:8], "little") + 3] ^= 1  # a ciphertext byte of the first tensor
    with pytest.raises(cryptotensors.IntegrityError):
        h = cryptotensors._safe_open_handle(io.BytesIO(bytes(data)), "np", keys=key)
        for k in h.keys():
            h.get_tensor(k)
    with pytest.raises(cryptotensors.SafetensorError):
        cryptotensors._safe_open_handle(io.BytesIO(b"\x01\x00"), "np")


def test_a_name_that_is_another_file_is_not_trusted(files, tmp_path):
    # The object's descriptor decides, not a name that now names another file.
    plain, enc, key = files
    with open(enc, "rb") as f:
        enc.rename(tmp_path / "moved")
        plain.rename(enc)  # f.name now names the plain file
        h = cryptotensors._safe_open_handle(f, "np", keys=key, require_encryption=True)
        _same(h)


def test_bad_objects_are_type_errors():
    with pytest.raises(TypeError):
        cryptotensors._safe_open_handle(object(), "np")
    with pytest.raises(TypeError):
        cryptotensors._safe_open_handle(io.StringIO("text"), "np")
