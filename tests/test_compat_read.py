"""Differential reading: whatever safetensors 0.8.0 accepts, cryptotensors
accepts with identical results; whatever it rejects, cryptotensors rejects
(with ``cryptotensors.SafetensorError`` or the same builtin exception)."""

import math
import os
import struct

import numpy as np
import pytest
from _compat import (
    COMBOS,
    build_file,
    bytes_parity,
    call,
    ct,
    ct_np,
    ct_pt,
    file_parity,
    offset_order_checker,
    open_parity,
    parity,
    ref,
    ref_np,
    ref_pt,
)
from _strategies import (
    ALL_CODES,
    DTYPES,
    TORCH_CODES_NO_F4,
    compat_settings,
    hostile_blobs,
    metadata_or_none,
    numpy_dicts,
    torch_dicts,
)
from hypothesis import assume, given
from hypothesis import strategies as st

PT_COMBOS = [c for c in COMBOS if c[0] == "pt"]


# --------------------------------------------------------------------------
# valid files written by safetensors
# --------------------------------------------------------------------------
@compat_settings(100)
@given(arrays=numpy_dicts(), metadata=metadata_or_none(3))
def test_valid_numpy_files_read_identically(scratch, arrays, metadata):
    assume(arrays or metadata != {})  # that header is invalid, see test_compat_write
    assume("__metadata__" not in arrays)  # written fine, but unreadable by safetensors
    path = scratch.write(ref_np.save(arrays, metadata=metadata))
    assert file_parity(path) == set(COMBOS)
    # load_file on both frameworks
    in_order = offset_order_checker(path)
    parity(lambda: ref_np.load_file(path), lambda: ct_np.load_file(path), "numpy.load_file",
           eq=in_order)
    parity(lambda: ref_pt.load_file(path), lambda: ct_pt.load_file(path), "torch.load_file",
           eq=in_order)
    os.remove(path)


@compat_settings(100)
@given(tensors=torch_dicts(codes=tuple(TORCH_CODES_NO_F4)), metadata=metadata_or_none(3))
def test_valid_torch_files_read_identically(scratch, tensors, metadata):
    assume(tensors or metadata != {})
    assume("__metadata__" not in tensors)
    path = scratch.write(ref_pt.save(tensors, metadata=metadata))
    assert file_parity(path, PT_COMBOS) == set(PT_COMBOS)
    for backend in ("mmap", "pread"):
        parity(lambda be=backend: ref_pt.load_file(path, backend=be),
               lambda be=backend: ct_pt.load_file(path, backend=be), f"torch.load_file({backend})",
               eq=offset_order_checker(path))
    os.remove(path)


def _dtype_file(code):
    """A [2, 4] tensor of ``code`` with distinct bytes."""
    nbytes = DTYPES[code][1] * 8 // 8
    return build_file({"__metadata__": {"dtype": code},
                       "a": {"dtype": code, "shape": [2, 4], "data_offsets": [0, nbytes]}},
                      bytes(range(1, nbytes + 1)))


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("code", ALL_CODES)
def test_every_dtype_read_parity(scratch, code, combo):
    # This matrix pins safetensors 0.8.0's per-dtype behaviour, including its
    # rough edges: numpy framework raises AttributeError for F4/F8_* and
    # TypeError for BF16; F6_* raise SafetensorError("Dtype not understood")
    # on get_tensor.
    # safetensors 0.8 bug: F4 with pt+pread and every pt get_slice of F4 raise
    # RuntimeError from torch.reshape; cryptotensors loads them (compared with
    # safetensors' pt+mmap get_tensor instead, see _compat._f4_torch_bug).
    path = scratch.write(_dtype_file(code))
    assert open_parity(path, *combo)


@pytest.mark.parametrize("code", ALL_CODES)
def test_every_dtype_bytes_api_parity(code):
    bytes_parity(_dtype_file(code))


def test_every_dtype_reachable_through_deserialize():
    for code in ALL_CODES:
        out = ct.deserialize(_dtype_file(code))
        assert [(n, d["dtype"], d["shape"]) for n, d in out] == [("a", code, [2, 4])]


# --------------------------------------------------------------------------
# hand-written hostile files
# --------------------------------------------------------------------------
T8 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
Z8 = b"\x01\x02\x03\x04\x05\x06\x07\x08"


def _t(dtype="F32", shape=(2,), start=0, stop=8):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [start, stop]}


HOSTILE = {
    "valid": build_file({"a": T8}, Z8),
    "valid_padded": build_file({"a": T8}, Z8, pad_to=8),
    "empty_header_object": build_file({}),
    "empty_header_trailing_bytes": build_file({}, b"abc"),
    "only_metadata": build_file({"__metadata__": {"a": "b"}}),
    "metadata_null": build_file({"__metadata__": None, "a": T8}, Z8),
    "metadata_only_null": build_file({"__metadata__": None}),
    "metadata_empty": build_file({"__metadata__": {}, "a": T8}, Z8),
    "metadata_value_null": build_file({"__metadata__": {"k": None}, "a": T8}, Z8),
    "metadata_value_int": build_file({"__metadata__": {"k": 1}, "a": T8}, Z8),
    "metadata_value_bool": build_file({"__metadata__": {"k": True}, "a": T8}, Z8),
    "metadata_value_object": build_file({"__metadata__": {"k": {"x": "y"}}, "a": T8}, Z8),
    "metadata_value_list": build_file({"__metadata__": {"k": ["x"]}, "a": T8}, Z8),
    "metadata_list": build_file({"__metadata__": [], "a": T8}, Z8),
    "metadata_string": build_file({"__metadata__": "x", "a": T8}, Z8),
    "metadata_is_tensor_info": build_file({"__metadata__": T8}, Z8),
    "metadata_last": build_file({"a": T8, "__metadata__": {"k": "v"}}, Z8),
    "metadata_key_named_like_tensor": build_file({"__metadata__": {"a": "b"}, "b": T8}, Z8),
    "tensor_named___metadata__x": build_file({"__metadata__": {"x": "y"}, "__metadata__x": T8}, Z8),
    "empty_tensor_name": build_file({"": T8}, Z8),
    "escaped_unicode_name": build_file(b'{"\\u00e9\\n":' + b'{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "lone_surrogate_escape": build_file(b'{"\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "invalid_utf8": build_file(b'{"\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "utf8_bom": build_file(b'\xef\xbb\xbf{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "leading_space": build_file(b' {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "leading_newline": build_file(b'\n\t{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "trailing_whitespace": build_file(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}\n\t ', Z8),
    "trailing_nul": build_file(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}\x00', Z8),
    "trailing_comma": build_file(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},}', Z8),
    "not_an_object": build_file(b"[]"),
    "json_null": build_file(b"null"),
    "header_is_number": build_file(b"8"),
    "duplicate_identical_keys": build_file(
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "duplicate_keys_split_data": build_file(
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', Z8),
    "duplicate_keys_last_wins_order": build_file(
        b'{"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},'
        b'"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', Z8),
    "duplicate_metadata_keys": build_file(
        b'{"__metadata__":{"k":"1","k":"2"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "duplicate_metadata_objects": build_file(
        b'{"__metadata__":{"k":"1"},"__metadata__":{"j":"2"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "unknown_tensor_field": build_file({"a": dict(T8, extra=1)}, Z8),
    "duplicate_field_in_tensor_info": build_file(
        b'{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Z8),
    "unknown_top_level_scalar": build_file({"a": T8, "__foo__": 1}, Z8),
    "tensor_null": build_file({"a": None}),
    "missing_dtype": build_file({"a": {"shape": [2], "data_offsets": [0, 8]}}, Z8),
    "missing_shape": build_file({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, Z8),
    "missing_offsets": build_file({"a": {"dtype": "F32", "shape": [2]}}, Z8),
    "bad_dtype": build_file({"a": _t("F33")}, Z8),
    "lowercase_dtype": build_file({"a": _t("f32")}, Z8),
    "dtype_int": build_file({"a": _t(1)}, Z8),
    "dtype_object": build_file({"a": _t({"F32": 1})}, Z8),
    "negative_dim": build_file({"a": _t(shape=(-2,))}, Z8),
    "float_dim": build_file(b'{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', Z8),
    "exponent_dim": build_file(b'{"a":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}', Z8),
    "string_dim": build_file({"a": _t(shape=("2",))}, Z8),
    "shape_overflow": build_file({"a": _t(shape=(2**62, 2**62))}, Z8),
    "shape_u64_max": build_file({"a": _t(shape=(2**64 - 1,))}, Z8),
    "size_mismatch": build_file({"a": _t(shape=(3,))}, Z8),
    "scalar_shape": build_file({"a": _t(shape=(), stop=4)}, Z8[:4]),
    "zero_dim_shape": build_file({"a": _t(shape=(0, 3), stop=0)}),
    "offsets_reversed": build_file({"a": _t(shape=(0,), start=8, stop=0)}, Z8),
    "three_offsets": build_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, Z8),
    "one_offset": build_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, Z8),
    "offsets_u64_max": build_file({"a": _t(start=2**64 - 1, stop=2**64 - 1)}, Z8),
    "offsets_over_u64": build_file({"a": _t(stop=2**64)}, Z8),
    "hole_at_start": build_file({"a": _t(shape=(1,), start=4, stop=8)}, Z8),
    "gap_between": build_file({"a": _t(shape=(1,), stop=4), "b": _t(shape=(1,), start=8, stop=12)}, Z8 + Z8[:4]),
    "overlap": build_file({"a": T8, "b": _t(shape=(1,), start=4, stop=8)}, Z8),
    "same_range_twice": build_file({"a": _t(shape=(1,), stop=4), "b": _t(shape=(1,), stop=4)}, Z8[:4]),
    "header_order_differs_from_offsets": build_file(
        {"b": _t(shape=(1,), start=4, stop=8), "a": _t(shape=(1,), stop=4)}, Z8),
    "empty_tensor_at_end": build_file({"b": T8, "a": _t(shape=(0,), start=8, stop=8)}, Z8),
    "empty_tensor_in_middle": build_file(
        {"b": _t(shape=(1,), stop=4), "a": _t(shape=(0,), start=4, stop=4), "c": _t(shape=(1,), start=4, stop=8)}, Z8),
    "several_empty_tensors": build_file(
        {"z": _t(shape=(0,), stop=0), "b": _t(shape=(0,), stop=0), "c": _t("U8", (0,), 0, 0)}),
    "trailing_data_byte": build_file({"a": T8}, Z8 + b"\x00"),
    "truncated_data": build_file({"a": T8}, Z8[:7]),
    "n_zero": build_file({"a": T8}, Z8, n=0),
    "n_one": build_file({"a": T8}, Z8, n=1),
    "n_larger_than_file": build_file({"a": T8}, Z8, n=1000),
    "n_exactly_file_len": build_file({"a": T8}, Z8, n=len(build_file({"a": T8}, Z8))),
    "n_100M": build_file({"a": T8}, Z8, n=100_000_000),
    "n_100M_plus_1": build_file({"a": T8}, Z8, n=100_000_001),
    "n_2_pow_63": build_file({"a": T8}, Z8, n=2**63),
    "n_u64_max": build_file({"a": T8}, Z8, n=2**64 - 1),
    "file_empty": b"",
    "file_3_bytes": b"\x01\x02\x03",
    "file_7_bytes": b"\x02\x00\x00\x00\x00\x00\x00",
    "file_8_bytes_n0": struct.pack("<Q", 0),
    "file_8_bytes_n2": struct.pack("<Q", 2),
    "minimal_empty": struct.pack("<Q", 2) + b"{}",
    "f4_even": build_file({"a": _t("F4", (4,), 0, 2)}, b"\x12\x34"),
    "f4_odd_count": build_file({"a": _t("F4", (3,), 0, 2)}, b"\x12\x34"),
    "f6_four": build_file({"a": _t("F6_E2M3", (4,), 0, 3)}, b"\x12\x34\x56"),
    "f6_bad_count": build_file({"a": _t("F6_E3M2", (3,), 0, 3)}, b"\x12\x34\x56"),
    "bf16_np_incompatible": build_file({"a": _t("BF16", (4,), 0, 8)}, Z8),
    "mixed_dtypes": build_file({"a": _t("U8", (3,), 0, 3), "b": _t("I16", (1,), 3, 5), "c": _t("BOOL", (2,), 5, 7)},
                               b"\x01\x02\x03\x04\x05\x01\x00"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_parity(scratch, case):
    path = scratch.write(HOSTILE[case])
    file_parity(path)


def test_hostile_cases_are_meaningful():
    # Guard against a vacuous table: safetensors must accept some and reject others.
    accepted = {k for k, blob in HOSTILE.items() if call(ref.deserialize, blob).ok}
    assert {"valid", "metadata_null", "duplicate_identical_keys", "leading_space",
            "unknown_tensor_field", "empty_tensor_in_middle"} <= accepted
    assert not {"metadata_value_null", "metadata_value_int", "hole_at_start", "overlap",
                "trailing_data_byte", "n_100M_plus_1", "file_7_bytes", "bad_dtype"} & accepted


# --------------------------------------------------------------------------
# random damage
# --------------------------------------------------------------------------
@compat_settings(200)
@given(blob=hostile_blobs())
def test_mutated_files_parity(scratch, blob):
    path = scratch.write(blob)
    file_parity(path)
    os.remove(path)


@compat_settings(100)
@given(blob=hostile_blobs(), cut=st.integers(0, 64))
def test_mutated_bytes_parity(blob, cut):
    bytes_parity(blob)
    bytes_parity(blob[: max(len(blob) - cut, 0)])


# --------------------------------------------------------------------------
# paths and argument types
# --------------------------------------------------------------------------
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_missing_file_raises_file_not_found(scratch, combo):
    path = scratch.path() + ".does-not-exist"
    with pytest.raises(FileNotFoundError) as info:
        ct.safe_open(path, combo[0], backend=combo[1])
    assert path in str(info.value)
    parity(lambda: ref.safe_open(path, combo[0], backend=combo[1]),
           lambda: ct.safe_open(path, combo[0], backend=combo[1]), "safe_open(missing)")


def test_missing_file_load_file(scratch):
    path = scratch.path() + ".does-not-exist"
    for fn in (lambda m: m.load_file(path), lambda m: m.load_file(path, backend="pread")):
        for r_mod, c_mod in ((ref_np, ct_np), (ref_pt, ct_pt)):
            with pytest.raises(FileNotFoundError):
                fn(c_mod)
            parity(lambda f=fn, m=r_mod: f(m), lambda f=fn, m=c_mod: f(m), "load_file(missing)")


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_directory_path(scratch, combo):
    d = scratch.path(".dir")
    os.mkdir(d)
    parity(lambda: ref.safe_open(d, combo[0], backend=combo[1]),
           lambda: ct.safe_open(d, combo[0], backend=combo[1]), "safe_open(directory)")


def test_pathlike_and_bad_filename_types(scratch):
    import pathlib

    path = scratch.write(HOSTILE["valid"])
    for arg in (path, pathlib.Path(path)):
        got = parity(lambda a=arg: ref.safe_open(a, "np").keys(), lambda a=arg: ct.safe_open(a, "np").keys(),
                     f"safe_open({type(arg).__name__})")
        assert got is not None and got[1] == ["a"]
    for bad in (path.encode(), None, 3):
        parity(lambda b=bad: ref.safe_open(b, "np"), lambda b=bad: ct.safe_open(b, "np"),
               f"safe_open({type(bad).__name__})")


@pytest.mark.parametrize("arg", [bytearray(HOSTILE["valid"]), memoryview(HOSTILE["valid"]),
                                 "text", None], ids=["bytearray", "memoryview", "str", "None"])
def test_bytes_api_argument_types(arg):
    parity(lambda: ref.deserialize(arg), lambda: ct.deserialize(arg), "deserialize(arg)",
           eq=lambda r, c, w: None)
    parity(lambda: ref_np.load(arg), lambda: ct_np.load(arg), "numpy.load(arg)",
           eq=lambda r, c, w: None)
    parity(lambda: ref_pt.load(arg), lambda: ct_pt.load(arg), "torch.load(arg)",
           eq=lambda r, c, w: None)


def test_deserialize_structure():
    blob = ref_np.save({"b": np.arange(3, dtype=np.int16), "a": np.zeros((2, 0), np.float32)},
                       metadata={"k": "v"})
    out = ct.deserialize(blob)
    assert isinstance(out, list)
    as_dict = dict(out)
    assert sorted(as_dict) == ["a", "b"]
    assert as_dict["b"] == {"shape": [3], "dtype": "I16", "data": bytearray(b"\x00\x00\x01\x00\x02\x00")}
    assert type(as_dict["b"]["data"]) is type(dict(ref.deserialize(blob))["b"]["data"])
    assert as_dict["a"]["shape"] == [2, 0] and as_dict["a"]["data"] == b""


def test_big_file_reads_identically(scratch):
    # a few MB, several tensors, both frameworks/backends
    rng = np.random.default_rng(0)
    arrays = {f"layer.{i}.weight": rng.standard_normal((257, 129 + i)).astype(np.float32) for i in range(8)}
    arrays["ids"] = rng.integers(-(2**40), 2**40, size=(1000,), dtype=np.int64)
    path = scratch.write(ref_np.save(arrays, metadata={"format": "np"}))
    assert file_parity(path) == set(COMBOS)
    loaded = ct_np.load_file(path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)
    assert math.isclose(float(loaded["layer.0.weight"].sum()), float(arrays["layer.0.weight"].sum()))
