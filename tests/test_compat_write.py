"""Files written by cryptotensors must be byte-identical to safetensors 0.8.0's."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from _compat import (
    assert_same_outcome,
    call,
    ct,
    ct_np,
    ct_pt,
    header_of,
    parity,
    ref,
    ref_np,
    ref_pt,
    split_file,
)
from _strategies import (
    DTYPES,
    SPEC_CODES,
    compat_settings,
    make_specs,
    metadata_dicts,
    metadata_or_none,
    numpy_dicts,
    spec_inputs,
    torch_dicts,
)
from hypothesis import assume, given


def _identical(r, c, what):
    assert type(c) is bytes, f"{what}: expected bytes, got {type(c)}"
    assert c == r, f"{what}: output differs\n safetensors:   {r[:300]!r}\n cryptotensors: {c[:300]!r}"


def _file_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def _write_parity(scratch, ref_write, ct_write, what):
    """``*_write(path)`` writes a file; both outcomes and file bytes must match."""
    rp, cp = scratch.path(), scratch.path()
    if assert_same_outcome(call(ref_write, rp), call(ct_write, cp), what,
                           eq=lambda r, c, w: None):
        _identical(_file_bytes(rp), _file_bytes(cp), what)


# --------------------------------------------------------------------------
# property tests: 0 or 1 metadata key -> exact bytes
# --------------------------------------------------------------------------
@compat_settings(150)
@given(items=spec_inputs(), metadata=metadata_or_none(1))
def test_serialize_and_serialize_file_byte_identical(scratch, items, metadata):
    assume(items or metadata != {})  # see test_empty_tensors_with_empty_metadata_quirk
    rspecs, keep_r = make_specs(ref, items)
    cspecs, keep_c = make_specs(ct, items)
    got = parity(lambda: ref.serialize(rspecs, metadata=metadata),
                 lambda: ct.serialize(cspecs, metadata=metadata),
                 "serialize", eq=_identical)
    _write_parity(scratch,
                  lambda p: ref.serialize_file(rspecs, p, metadata=metadata),
                  lambda p: ct.serialize_file(cspecs, p, metadata=metadata),
                  "serialize_file")
    if got is not None:
        # serialize_file writes exactly what serialize returns
        p = scratch.path()
        ct.serialize_file(cspecs, p, metadata=metadata)
        assert _file_bytes(p) == got[1]
    del keep_r, keep_c


@compat_settings(120)
@given(arrays=numpy_dicts(), metadata=metadata_or_none(1))
def test_numpy_save_byte_identical(scratch, arrays, metadata):
    assume(arrays or metadata != {})
    parity(lambda: ref_np.save(arrays, metadata=metadata),
           lambda: ct_np.save(arrays, metadata=metadata),
           "numpy.save", eq=_identical)
    _write_parity(scratch,
                  lambda p: ref_np.save_file(arrays, p, metadata=metadata),
                  lambda p: ct_np.save_file(arrays, p, metadata=metadata),
                  "numpy.save_file")


@compat_settings(120)
@given(tensors=torch_dicts(), metadata=metadata_or_none(1))
def test_torch_save_byte_identical(scratch, tensors, metadata):
    assume(tensors or metadata != {})
    parity(lambda: ref_pt.save(tensors, metadata=metadata),
           lambda: ct_pt.save(tensors, metadata=metadata),
           "torch.save", eq=_identical)
    _write_parity(scratch,
                  lambda p: ref_pt.save_file(tensors, p, metadata=metadata),
                  lambda p: ct_pt.save_file(tensors, p, metadata=metadata),
                  "torch.save_file")


# --------------------------------------------------------------------------
# several metadata keys: safetensors' metadata order is HashMap order (random
# per process), so compare the parsed header and the data section instead.
# --------------------------------------------------------------------------
def _assert_same_modulo_metadata_order(r, c, what):
    rn, rh, rd = split_file(r)
    cn, ch, cd = split_file(c)
    assert cn == rn, f"{what}: header length {cn} != {rn}"
    assert cd == rd, f"{what}: data section differs"
    assert ch.endswith(b" ") == rh.endswith(b" ") and len(ch.rstrip(b" ")) == len(rh.rstrip(b" "))
    rjson, cjson = header_of(r), header_of(c)
    assert list(cjson)[:1] == ["__metadata__"] == list(rjson)[:1], f"{what}: __metadata__ not first"
    assert cjson["__metadata__"] == rjson["__metadata__"], f"{what}: metadata differs"
    r_t = [(k, v) for k, v in rjson.items() if k != "__metadata__"]
    c_t = [(k, v) for k, v in cjson.items() if k != "__metadata__"]
    assert c_t == r_t, f"{what}: tensor entries differ"


@compat_settings(80)
@given(items=spec_inputs(max_size=3), arrays=numpy_dicts(max_size=3),
       metadata=metadata_dicts(2, 6))
def test_multi_key_metadata_same_header_and_data(items, arrays, metadata):
    rspecs, keep_r = make_specs(ref, items)
    cspecs, keep_c = make_specs(ct, items)
    parity(lambda: ref.serialize(rspecs, metadata=metadata),
           lambda: ct.serialize(cspecs, metadata=metadata),
           "serialize(multi-key metadata)", eq=_assert_same_modulo_metadata_order)
    parity(lambda: ref_np.save(arrays, metadata=metadata),
           lambda: ct_np.save(arrays, metadata=metadata),
           "numpy.save(multi-key metadata)", eq=_assert_same_modulo_metadata_order)
    del keep_r, keep_c


# --------------------------------------------------------------------------
# metadata None vs {}
# --------------------------------------------------------------------------
_BUF = np.ones(2, np.float32)
_WRITERS = {
    "serialize": lambda mod, md: mod.serialize(
        {"w": mod.TensorSpec(dtype="float32", shape=[2], data_ptr=_BUF.ctypes.data, data_len=8)},
        metadata=md),
    "numpy.save": lambda mod, md: (ct_np if mod is ct else ref_np).save(
        {"w": np.ones(2, np.float32)}, metadata=md),
    "torch.save": lambda mod, md: (ct_pt if mod is ct else ref_pt).save(
        {"w": torch.ones(2)}, metadata=md),
}


@pytest.mark.parametrize("writer", list(_WRITERS))
@pytest.mark.parametrize("metadata", [None, {}], ids=["None", "empty"])
def test_metadata_none_vs_empty(writer, metadata):
    fn = _WRITERS[writer]
    r, c = fn(ref, metadata), fn(ct, metadata)
    _identical(r, c, f"{writer}(metadata={metadata!r})")
    header = header_of(c)
    if metadata is None:
        # None -> no __metadata__ entry at all
        assert "__metadata__" not in header
        assert split_file(c)[1].startswith(b'{"w":')
    else:
        # {} -> an explicit, empty __metadata__ object, written first
        assert list(header) == ["__metadata__", "w"] and header["__metadata__"] == {}
        assert split_file(c)[1].startswith(b'{"__metadata__":{},"w":')


def test_empty_tensors_with_empty_metadata_quirk(scratch):
    # safetensors 0.8 bug: serialize({}, metadata={}) writes the *invalid*
    # header '{},"__metadata__":{}}' (no reader, its own included, can open
    # it). cryptotensors writes the valid header '{"__metadata__":{}}' instead:
    # same length prefix and padding, a file both libraries read back.
    invalid = b'\x18\x00\x00\x00\x00\x00\x00\x00{},"__metadata__":{}}   '
    expected = b'\x18\x00\x00\x00\x00\x00\x00\x00{"__metadata__":{}}     '
    assert ref.serialize({}, metadata={}) == invalid
    assert not call(ref.deserialize, invalid).ok
    _identical(expected, ct.serialize({}, metadata={}), "serialize({}, metadata={})")
    _identical(expected, ct_np.save({}, metadata={}), "numpy.save({}, {})")
    _identical(expected, ct_pt.save({}, metadata={}), "torch.save({}, {})")
    path = scratch.path()
    ct.serialize_file({}, path, metadata={})
    _identical(expected, _file_bytes(path), "serialize_file({}, {})")
    for mod in (ref, ct):
        assert mod.deserialize(expected) == []
        with mod.safe_open(path, "np") as f:
            assert f.keys() == [] and f.metadata() == {}
    # and the other empty combinations are byte-identical
    for md in (None, {"k": "v"}):
        _identical(ref.serialize({}, metadata=md), ct.serialize({}, metadata=md), f"serialize({{}}, {md})")


# --------------------------------------------------------------------------
# ordering and layout
# --------------------------------------------------------------------------
# Tensors are laid out by dtype descending in safetensors' enum order, then by
# name (byte order).  F6_* cannot be written through TensorSpec in 0.8.0.
EXPECTED_WRITE_ORDER = [
    "U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16",
    "F8_E5M2FNUZ", "F8_E4M3FNUZ", "F8_E8M0", "F8_E4M3", "F8_E5M2", "I8", "U8", "F4", "BOOL",
]


def test_write_order_all_dtypes():
    # names sort opposite to the dtype order so that a name-only sort fails
    items = {}
    for i, code in enumerate(SPEC_CODES):
        # one storage element each (for F4 that is one byte = two logical values)
        nbytes = max(DTYPES[code][1] // 8, 1)
        items[f"t{i:02d}"] = (DTYPES[code][0], [1], bytes(range(1, nbytes + 1)))
    items["z_second_f32"] = ("float32", [1], b"\x01\x02\x03\x04")
    items["a_first_f32"] = ("float32", [1], b"\x05\x06\x07\x08")
    rspecs, keep_r = make_specs(ref, items)
    cspecs, keep_c = make_specs(ct, items)
    r, c = ref.serialize(rspecs), ct.serialize(cspecs)
    _identical(r, c, "serialize(all dtypes)")
    header = header_of(c)
    order = [v["dtype"] for v in header.values()]
    dedup = [d for i, d in enumerate(order) if d not in order[:i]]
    assert dedup == EXPECTED_WRITE_ORDER
    f32 = [k for k, v in header.items() if v["dtype"] == "F32"]
    assert f32 == sorted(f32) and f32[0] == "a_first_f32"
    # offsets are contiguous and start at 0
    end = 0
    for v in header.values():
        assert v["data_offsets"][0] == end
        end = v["data_offsets"][1]
    assert end == len(split_file(c)[2])
    del keep_r, keep_c


@pytest.mark.parametrize("name", [
    '"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "\U0001F600", "é", "ﬃ", "a b", "/", "</script>",
])
def test_special_character_names_identical(name):
    arrays = {name: np.arange(3, dtype=np.int16), name + "x": np.zeros((), np.uint8)}
    md = {name: name}
    _identical(ref_np.save(arrays, metadata=md), ct_np.save(arrays, metadata=md), f"name {name!r}")


def test_header_is_space_padded_to_eight():
    for n in range(0, 12):
        arrays = {"x" * n: np.zeros(1, np.uint8)}
        c = ct_np.save(arrays)
        _identical(ref_np.save(arrays), c, f"name length {n}")
        size, hb, _ = split_file(c)
        assert size % 8 == 0, f"header length {size} is not a multiple of 8"
        assert len(hb) - len(hb.rstrip(b" ")) < 8
        assert json.loads(hb) == header_of(c)


def test_numpy_non_c_contiguous_written_in_c_order():
    # safetensors 0.8 bug: safetensors.numpy hands (ctypes.data, nbytes) to
    # the writer, i.e. raw memory order, so a Fortran-ordered or transposed
    # array is saved with its elements scrambled (silent data corruption).
    # cryptotensors writes the array's values in C order: exactly what
    # safetensors writes for a C-contiguous copy, and it loads back equal.
    base = np.arange(12, dtype=np.int32).reshape(3, 4)
    for arr in (np.asfortranarray(base), base.T, base[:, ::2]):
        got = ct_np.save({"a": arr})
        _identical(ref_np.save({"a": np.ascontiguousarray(arr)}), got, "non C-contiguous numpy")
        np.testing.assert_array_equal(ct_np.load(got)["a"], arr)
        np.testing.assert_array_equal(ref_np.load(got)["a"], arr)
    for arr in (np.asfortranarray(base), base.T):  # the bug itself
        assert not np.array_equal(ref_np.load(ref_np.save({"a": arr}))["a"], arr)


# --------------------------------------------------------------------------
# errors on write
# --------------------------------------------------------------------------
def test_plain_dicts_rejected_with_type_error(scratch):
    buf = np.zeros(4, np.uint8)
    plain = {"a": {"dtype": "float32", "shape": [1], "data_ptr": buf.ctypes.data, "data_len": 4}}
    with pytest.raises(TypeError):
        ct.serialize(plain)
    with pytest.raises(TypeError):
        ct.serialize_file(plain, scratch.path())
    parity(lambda: ref.serialize(plain), lambda: ct.serialize(plain), "serialize(plain dict)",
           same_message=True)


def _spec(mod, **kw):
    buf = _ERRBUF
    args = dict(dtype="float32", shape=[1], data_ptr=buf.ctypes.data, data_len=4)
    args.update(kw)
    return mod.TensorSpec(**args)


_ERRBUF = np.zeros(64, np.uint8)
def _np_of(mod):
    return ct_np if mod is ct else ref_np


def _pt_of(mod):
    return ct_pt if mod is ct else ref_pt


_shared = torch.arange(6)

WRITE_ERRORS = {
    "data_len_too_big": lambda m, p: m.serialize({"a": _spec(m, data_len=8)}),
    "data_len_too_small": lambda m, p: m.serialize({"a": _spec(m, data_len=2)}),
    "metadata_int_value": lambda m, p: m.serialize({"a": _spec(m)}, metadata={"k": 1}),
    "metadata_none_value": lambda m, p: m.serialize({"a": _spec(m)}, metadata={"k": None}),
    "metadata_int_key": lambda m, p: m.serialize({"a": _spec(m)}, metadata={1: "v"}),
    "metadata_list": lambda m, p: m.serialize({"a": _spec(m)}, metadata=[("k", "v")]),
    "int_tensor_name": lambda m, p: m.serialize({1: _spec(m)}),
    "tensor_dict_list": lambda m, p: m.serialize([("a", _spec(m))]),
    "surrogate_name": lambda m, p: m.serialize({"\ud800": _spec(m)}),
    "surrogate_metadata": lambda m, p: m.serialize({"a": _spec(m)}, metadata={"\udfff": "v"}),
    "spec_unknown_dtype_code": lambda m, p: _spec(m, dtype="F32"),
    "spec_unknown_dtype": lambda m, p: _spec(m, dtype="complex128"),
    "spec_f6": lambda m, p: _spec(m, dtype="float6_e2m3fn"),
    "spec_negative_dim": lambda m, p: _spec(m, shape=[-1]),
    "spec_positional": lambda m, p: m.TensorSpec("float32", [1], _ERRBUF.ctypes.data, 4),
    "f4_scalar": lambda m, p: m.serialize({"a": _spec(m, dtype="float4_e2m1fn_x2", shape=[], data_len=1)}),
    "file_in_missing_dir": lambda m, p: m.serialize_file({"a": _spec(m)}, p + ".d/missing/x"),
    "file_is_directory": lambda m, p: (os.makedirs(p, exist_ok=True), m.serialize_file({"a": _spec(m)}, p)),
    "file_bytes_path": lambda m, p: m.serialize_file({"a": _spec(m)}, p.encode()),
    "np_float128": lambda m, p: _np_of(m).save({"a": np.zeros(2, np.longdouble)}),
    "np_complex128": lambda m, p: _np_of(m).save({"a": np.zeros(2, np.complex128)}),
    "np_str": lambda m, p: _np_of(m).save({"a": np.array(["x"])}),
    "pt_non_contiguous": lambda m, p: _pt_of(m).save({"a": torch.arange(6)[::2]}),
    "pt_shared": lambda m, p: _pt_of(m).save({"a": _shared, "b": _shared}),
    "pt_not_dict": lambda m, p: _pt_of(m).save([torch.arange(2)]),
    "pt_not_tensor": lambda m, p: _pt_of(m).save({"a": np.zeros(2)}),
    "pt_sparse": lambda m, p: _pt_of(m).save({"a": torch.eye(2).to_sparse()}),
    "pt_complex128": lambda m, p: _pt_of(m).save({"a": torch.zeros(2, dtype=torch.complex128)}),
    "pt_meta": lambda m, p: _pt_of(m).save({"a": torch.zeros(2, device="meta")}),
    "pt_f4_scalar": lambda m, p: _pt_of(m).save(
        {"a": torch.zeros((), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)}),
    "pt_metadata_none_value": lambda m, p: _pt_of(m).save({"a": torch.zeros(1)}, metadata={"a": None}),
}


@pytest.mark.parametrize("case", list(WRITE_ERRORS))
def test_write_errors_match(scratch, case):
    fn = WRITE_ERRORS[case]
    r = call(fn, ref, scratch.path())
    c = call(fn, ct, scratch.path())
    assert not r.ok, f"precondition: safetensors accepted {case}"
    assert_same_outcome(r, c, case)


def test_tensorspec_attributes_match():
    buf = np.zeros(64, np.uint8)
    ptr = buf.ctypes.data
    cases = [
        dict(dtype="float32", shape=[2, 3], data_len=24),
        dict(dtype="bool", shape=[], data_len=1),
        dict(dtype="float4_e2m1fn_x2", shape=[2, 3], data_len=6),  # -> F4 [2, 6]
        dict(dtype="float4_e2m1fn_x2", shape=[0], data_len=0),
        dict(dtype="float8_e8m0fnu", shape=(4,), data_len=4),
        dict(dtype="bfloat16", shape=torch.Size([2, 2]), data_len=8),
    ]
    for kw in cases:
        r, c = ref.TensorSpec(data_ptr=ptr, **kw), ct.TensorSpec(data_ptr=ptr, **kw)
        for attr in ("dtype", "shape", "data_ptr", "data_len"):
            assert getattr(c, attr) == getattr(r, attr), (kw, attr)
            assert type(getattr(c, attr)) is type(getattr(r, attr)), (kw, attr)
        assert repr(c) == repr(r)
    assert ct.TensorSpec(dtype="float4_e2m1fn_x2", shape=[2, 3], data_ptr=ptr, data_len=6).shape == [2, 6]


# --------------------------------------------------------------------------
# file-system behaviour of serialize_file
# --------------------------------------------------------------------------
def test_serialize_file_replaces_target_like_safetensors(scratch):
    # safetensors writes a temp file and renames it over the target: the result
    # is a fresh regular file with the temp file's mode (0600), existing files'
    # modes are not kept and a symlink target is replaced, not followed.
    results = {}
    for name, mod in (("ref", ref), ("ct", ct)):
        d = scratch.dir / f"fs_{name}"
        d.mkdir()
        fresh, existing, target, link = (str(d / n) for n in ("fresh", "existing", "target", "link"))
        with open(existing, "wb") as fh:
            fh.write(b"old")
        os.chmod(existing, 0o644)
        with open(target, "wb") as fh:
            fh.write(b"target")
        os.symlink(target, link)
        for p in (fresh, existing, link):
            mod.serialize_file({}, p)
        results[name] = {
            "fresh_mode": stat.S_IMODE(os.stat(fresh).st_mode),
            "existing_mode": stat.S_IMODE(os.stat(existing).st_mode),
            "link_is_symlink": os.path.islink(link),
            "target_content": _file_bytes(target),
            "contents": [_file_bytes(p) for p in (fresh, existing, link)],
            "leftovers": sorted(os.listdir(d)),
        }
    assert results["ct"] == results["ref"]
