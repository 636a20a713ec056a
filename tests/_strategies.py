"""Hypothesis strategies and dtype tables shared by the compatibility tests."""

import math
import struct

import numpy as np
import torch
from _compat import build_file, header_of, ref_np, split_file
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def compat_settings(max_examples=100):
    """Modest, deterministic-enough settings; no example database is written
    (it would otherwise land in the repository root)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,  # keeps failing runs (shrinking) short
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


# --------------------------------------------------------------------------
# dtype table: safetensors code -> (TensorSpec name, bits, numpy dtype, torch dtype)
# Insertion order is safetensors' Dtype enum order (ascending).
# --------------------------------------------------------------------------
def _t(name):
    return getattr(torch, name, None)


DTYPES = {
    "BOOL": ("bool", 8, np.bool_, torch.bool),
    "F4": ("float4_e2m1fn_x2", 4, None, _t("float4_e2m1fn_x2")),
    "F6_E2M3": (None, 6, None, None),
    "F6_E3M2": (None, 6, None, None),
    "U8": ("uint8", 8, np.uint8, torch.uint8),
    "I8": ("int8", 8, np.int8, torch.int8),
    "F8_E5M2": ("float8_e5m2", 8, None, _t("float8_e5m2")),
    "F8_E4M3": ("float8_e4m3fn", 8, None, _t("float8_e4m3fn")),
    "F8_E8M0": ("float8_e8m0fnu", 8, None, _t("float8_e8m0fnu")),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 8, None, _t("float8_e4m3fnuz")),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 8, None, _t("float8_e5m2fnuz")),
    "I16": ("int16", 16, np.int16, torch.int16),
    "U16": ("uint16", 16, np.uint16, _t("uint16")),
    "F16": ("float16", 16, np.float16, torch.float16),
    "BF16": ("bfloat16", 16, None, torch.bfloat16),
    "I32": ("int32", 32, np.int32, torch.int32),
    "U32": ("uint32", 32, np.uint32, _t("uint32")),
    "F32": ("float32", 32, np.float32, torch.float32),
    "C64": ("complex64", 64, np.complex64, torch.complex64),
    "F64": ("float64", 64, np.float64, torch.float64),
    "I64": ("int64", 64, np.int64, torch.int64),
    "U64": ("uint64", 64, np.uint64, _t("uint64")),
}
ALL_CODES = list(DTYPES)
SPEC_CODES = [c for c, v in DTYPES.items() if v[0] is not None]
NUMPY_CODES = [c for c, v in DTYPES.items() if v[2] is not None]
TORCH_CODES = [c for c, v in DTYPES.items() if v[3] is not None]
# Codes every framework/backend of safetensors 0.8 reads without tripping
# over a missing numpy dtype or the F4 pread bug; used by the generic
# property tests (the exotic ones are covered by explicit matrices).
TORCH_CODES_NO_F4 = [c for c in TORCH_CODES if c != "F4"]
BAD_CODES = ["F33", "f32", "", "F8", "U128", "float32", "Bool", "F32 "]


def nbytes_for(code, shape):
    bits = DTYPES[code][1] * math.prod(shape)
    return bits // 8 if bits % 8 == 0 else None


# --------------------------------------------------------------------------
# primitive strategies
# --------------------------------------------------------------------------
utf8_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
tensor_names = st.one_of(
    utf8_text,
    st.text(alphabet="abcXYZ._-0123456789", min_size=1, max_size=6),
    st.sampled_from(["", "__metadata__", "weight", "a" * 40, "é", "\u2028", '"', "\\", "\x00"]),
)
shapes = st.lists(st.integers(0, 5), max_size=4)


def metadata_dicts(min_keys=0, max_keys=1):
    return st.dictionaries(utf8_text, utf8_text, min_size=min_keys, max_size=max_keys)


def metadata_or_none(max_keys=1):
    return st.one_of(st.none(), metadata_dicts(0, max_keys))


@st.composite
def payload(draw, nbytes, boolean=False):
    """``nbytes`` bytes derived from a drawn seed (cheap on the hypothesis buffer)."""
    kind = draw(st.sampled_from(["random", "random", "random", "zeros", "ones"]))
    if boolean:
        if kind == "zeros":
            return bytes(nbytes)
        if kind == "ones":
            return b"\x01" * nbytes
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return rng.integers(0, 2, nbytes, dtype=np.uint8).tobytes()
    if kind == "zeros":
        return bytes(nbytes)
    if kind == "ones":
        return b"\xff" * nbytes
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.bytes(nbytes)


# --------------------------------------------------------------------------
# numpy / torch / TensorSpec inputs
# --------------------------------------------------------------------------
@st.composite
def numpy_arrays(draw, codes=tuple(NUMPY_CODES)):
    code = draw(st.sampled_from(codes))
    shape = tuple(draw(shapes))
    dt = np.dtype(DTYPES[code][2])
    raw = draw(payload(dt.itemsize * math.prod(shape), boolean=(code == "BOOL")))
    arr = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
    if dt.itemsize > 1 and draw(st.integers(0, 4)) == 0:
        arr = arr.astype(dt.newbyteorder(">"))  # exercises the byteswap path
    return arr


def numpy_dicts(max_size=5, codes=tuple(NUMPY_CODES)):
    return st.dictionaries(tensor_names, numpy_arrays(codes), max_size=max_size)


def torch_from_bytes(raw, code, shape):
    dtype = DTYPES[code][3]
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return flat.view(dtype).reshape(shape)


@st.composite
def torch_tensors(draw, codes=tuple(TORCH_CODES)):
    code = draw(st.sampled_from(codes))
    shape = tuple(draw(shapes))
    # float4_e2m1fn_x2 is a packed byte per element in torch (storage shape).
    itemsize = max(DTYPES[code][1] // 8, 1)
    raw = draw(payload(itemsize * math.prod(shape), boolean=(code == "BOOL")))
    return torch_from_bytes(raw, code, shape)


def torch_dicts(max_size=5, codes=tuple(TORCH_CODES)):
    return st.dictionaries(tensor_names, torch_tensors(codes), max_size=max_size)


@st.composite
def spec_inputs(draw, max_size=5):
    """``{name: (TensorSpec dtype name, shape passed to TensorSpec, raw bytes)}``.

    For F4 the shape is the *storage* shape (TensorSpec doubles the last dim)."""
    out = {}
    names = draw(st.lists(tensor_names, max_size=max_size, unique=True))
    for name in names:
        code = draw(st.sampled_from(SPEC_CODES))
        shape = draw(shapes)
        itemsize = max(DTYPES[code][1] // 8, 1)
        raw = draw(payload(itemsize * math.prod(shape), boolean=(code == "BOOL")))
        out[name] = (DTYPES[code][0], shape, raw)
    return out


def make_specs(module, items):
    """Build ``{name: module.TensorSpec}``; returns ``(specs, keepalive)``."""
    keep = []
    specs = {}
    for name, (dtype, shape, raw) in items.items():
        buf = np.frombuffer(bytearray(raw or b"\x00"), dtype=np.uint8)
        keep.append(buf)
        specs[name] = module.TensorSpec(
            dtype=dtype, shape=list(shape), data_ptr=buf.ctypes.data, data_len=len(raw)
        )
    return specs, keep


# --------------------------------------------------------------------------
# hostile-file mutations (read side)
# --------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65)
    | st.floats(allow_nan=False, allow_infinity=False) | utf8_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(utf8_text, inner, max_size=3),
    max_leaves=6,
)
offset_ints = st.one_of(st.integers(0, 64), st.sampled_from([2**32, 2**63 - 1, 2**64 - 1]))


@st.composite
def header_edit(draw, header, data_len):
    """Apply one structured edit to a parsed header (a fresh dict is returned)."""
    h = {k: (dict(v) if isinstance(v, dict) else v) for k, v in header.items()}
    tensors = [k for k in h if k != "__metadata__"]
    op = draw(st.sampled_from([
        "dtype", "shape", "offsets", "extra_field", "drop_field", "metadata_value",
        "metadata_whole", "rename", "reorder", "add_tensor", "tensor_not_object",
    ]))
    if tensors and op in ("dtype", "shape", "offsets", "extra_field", "drop_field",
                          "rename", "tensor_not_object"):
        name = draw(st.sampled_from(tensors))
        info = h[name]
        if not isinstance(info, dict):  # replaced by a JSON value in an earlier edit
            info = h[name] = {}
        if op == "dtype":
            info["dtype"] = draw(st.sampled_from(ALL_CODES + BAD_CODES) | json_values)
        elif op == "shape":
            info["shape"] = draw(st.lists(st.integers(-2, 9) | st.sampled_from([2**62, 2**64 - 1]),
                                          max_size=4) | json_values)
        elif op == "offsets":
            info["data_offsets"] = draw(st.lists(offset_ints | st.integers(data_len - 4, data_len + 4),
                                                 min_size=1, max_size=3) | json_values)
        elif op == "extra_field":
            info[draw(utf8_text)] = draw(json_values)
        elif op == "drop_field":
            info.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        elif op == "rename":
            h[draw(tensor_names)] = h.pop(name)
        else:
            h[name] = draw(json_values)
    elif op == "metadata_value":
        md = h.get("__metadata__")
        md = dict(md) if isinstance(md, dict) else {}
        md[draw(utf8_text)] = draw(json_values | utf8_text)
        h["__metadata__"] = md
    elif op == "metadata_whole":
        h["__metadata__"] = draw(st.none() | st.just({}) | json_values)
    elif op == "reorder":
        items = list(h.items())
        h = dict(draw(st.permutations(items)))
    elif op == "add_tensor":
        start, stop = draw(offset_ints), draw(offset_ints)
        h[draw(tensor_names)] = {
            "dtype": draw(st.sampled_from(ALL_CODES)),
            "shape": draw(shapes),
            "data_offsets": [start, stop],
        }
    return h


@st.composite
def raw_edit(draw, blob):
    """Apply one byte-level edit to a blob."""
    if len(blob) < 8:
        if draw(st.booleans()):
            return blob + draw(st.binary(min_size=1, max_size=16))
        return blob[: draw(st.integers(0, len(blob)))]
    n, hb, data = split_file(blob)
    op = draw(st.sampled_from([
        "flip", "flip_header", "truncate", "append", "set_n", "whitespace",
        "duplicate_key", "repad",
    ]))
    if op == "flip" and blob:
        b = bytearray(blob)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if op == "flip_header" and hb:
        b = bytearray(hb)
        pos = draw(st.integers(0, len(b) - 1))
        b[pos] = draw(st.sampled_from(b'{}[]",:0123456789 \n\t\\eEnul.-+x') | st.integers(0, 255))
        return struct.pack("<Q", n) + bytes(b) + data
    if op == "truncate":
        return blob[: draw(st.integers(0, max(len(blob) - 1, 0)))]
    if op == "append":
        return blob + draw(st.binary(min_size=1, max_size=16))
    if op == "set_n":
        new_n = draw(st.one_of(
            st.integers(max(n - 16, 0), n + 16),
            st.sampled_from([0, 1, 2, 7, len(blob) - 8, len(blob), 100_000_000,
                             100_000_001, 2**63, 2**64 - 1]),
            st.integers(0, 2**64 - 1),
        ))
        return struct.pack("<Q", min(max(new_n, 0), 2**64 - 1)) + blob[8:]
    if op == "whitespace":
        lead = draw(st.sampled_from([b"", b" ", b"\n", b"\t", b"\r\n", b"\x00", b"\xef\xbb\xbf"]))
        trail = draw(st.sampled_from([b"", b" ", b"\n", b"\x00", b"  \t"]))
        new = lead + hb.rstrip(b" ") + trail
        return struct.pack("<Q", len(new)) + new + data
    if op == "duplicate_key" and hb.startswith(b"{") and hb.rstrip(b" ") != b"{}":
        body = hb.rstrip(b" ")
        dup = draw(st.sampled_from([
            b'"__metadata__":{"k":"v"}',
            b'"__metadata__":null',
            b'"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}',
        ]))
        new = (b"{" + dup + b"," + body[1:]) if draw(st.booleans()) else (body[:-1] + b"," + dup + b"}")
        return struct.pack("<Q", len(new)) + new + data
    if op == "repad":
        body = hb.rstrip(b" ")
        new = body + b" " * draw(st.integers(0, 17))
        return struct.pack("<Q", len(new)) + new + data
    return blob


@st.composite
def hostile_blobs(draw):
    """A file written by safetensors, then damaged in 1-3 ways."""
    arrays = draw(numpy_dicts(max_size=3))
    md = draw(metadata_or_none(2))
    blob = ref_np.save(arrays, metadata=md)
    if md and len(md) > 1:
        # safetensors writes metadata in HashMap order; canonicalise it so the
        # strategy stays deterministic (hypothesis replays draws).
        header = header_of(blob)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        blob = build_file(header, split_file(blob)[2], pad_to=8)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            try:
                header = header_of(blob)
            except Exception:  # noqa: BLE001 - already broken by an earlier edit
                header = None
            if isinstance(header, dict):
                _, _, data = split_file(blob)
                header = draw(header_edit(header, len(data)))
                blob = build_file(header, data, pad_to=draw(st.sampled_from([1, 8])))
                continue
        blob = draw(raw_edit(blob))
    return blob


# --------------------------------------------------------------------------
# get_slice indexes
# --------------------------------------------------------------------------
def index_items(max_dim):
    """One element of an index tuple: int, slice, Ellipsis or None (newaxis)."""
    bound = st.none() | st.integers(0, max_dim) | st.integers(-max_dim - 2, max_dim + 3)
    return st.one_of(
        st.integers(0, max(max_dim - 1, 0)),
        st.integers(-max_dim - 2, max_dim + 2),
        st.builds(slice, bound, bound, st.none() | st.sampled_from([1, 1, 2, 3, 0, -1, -2])),
        st.just(Ellipsis),
        st.just(None),
    )


@st.composite
def slice_indexes(draw, shape):
    """A bare index element or a tuple of up to ndim + 1 elements."""
    item = index_items(max(shape, default=1))
    if draw(st.integers(0, 3)) == 0:
        return draw(item)
    return tuple(draw(st.lists(item, max_size=len(shape) + 1)))
