"""Differential-testing helpers.

Every helper runs one operation against safetensors 0.8.0 (the reference,
``ref*``) and against cryptotensors (``ct*``) and compares the outcomes:

* both succeed  -> the results must be equal (type, dtype, shape, strides,
  bytes, ordering of ordered containers);
* both fail     -> if safetensors raised ``SafetensorError`` cryptotensors must
  raise ``cryptotensors.SafetensorError``; if safetensors raised a builtin
  exception (FileNotFoundError, TypeError, IndexError, ...) cryptotensors must
  raise an instance of that same class.  The one relaxation: where
  safetensors leaks an internal error -- a CPython ``SystemError`` (numpy
  slicing ``[1:0]``) or a Rust panic (``pyo3_runtime.PanicException``, e.g.
  ``[1:0, ::2]``) -- a ``SafetensorError`` is accepted as well;
* one succeeds, the other fails -> test failure.

Deliberate deviations (each marked "safetensors 0.8 bug" where it is handled):
slices that stop before they start, F4 tensors with torch, and
``torch.load`` of F4/F8_E8M0 data; see ``is_internal_error``,
``_f4_torch_bug`` and ``_torch_load_bug``.
"""

import json
import os
import re
import struct
import tempfile

import numpy as np
import safetensors as ref
import safetensors.numpy as ref_np
import safetensors.torch as ref_pt
import torch

import cryptotensors as ct
import cryptotensors.numpy as ct_np
import cryptotensors.torch as ct_pt

__all__ = [
    "ref", "ref_np", "ref_pt", "ct", "ct_np", "ct_pt",
    "FRAMEWORKS", "BACKENDS", "COMBOS", "MISSING_NAME",
    "Outcome", "call", "assert_same_error", "assert_same_outcome", "parity",
    "assert_equal", "assert_equal_unordered", "tensor_bytes",
    "open_parity", "bytes_parity", "file_parity", "offset_order_checker",
    "build_file", "split_file", "header_of",
]

FRAMEWORKS = ("np", "pt")
BACKENDS = ("mmap", "pread")
COMBOS = [(fw, be) for fw in FRAMEWORKS for be in BACKENDS]
MISSING_NAME = "\x00no such tensor\x00"


# --------------------------------------------------------------------------
# outcomes
# --------------------------------------------------------------------------
class Outcome:
    __slots__ = ("value", "exc")

    def __init__(self, value=None, exc=None):
        self.value = value
        self.exc = exc

    @property
    def ok(self):
        return self.exc is None

    def describe(self):
        if self.ok:
            return f"returned {_summary(self.value)}"
        return f"raised {type(self.exc).__module__}.{type(self.exc).__name__}({self.exc})"


def call(fn, *args, **kwargs):
    try:
        return Outcome(fn(*args, **kwargs))
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException is a BaseException
        return Outcome(exc=exc)


# safetensors 0.8 bug: a slice that stops before it starts *with a step*
# (``[3:1:2]``) gets a wrapped-around (usize underflow) length, and numpy or
# torch then fails to reshape to it: ValueError("Maximum allowed dimension
# exceeded" / "cannot reshape array of size 4 into shape
# (9223372036854775807,)"), RuntimeError("shape '[9223372036854775807]' is
# invalid ...") or TypeError("... Overflow when unpacking long long"); on an
# empty tensor numpy says "array is too big" and torch even *returns* a tensor
# of shape [9223372036854775807, 0].  These are the same internal error as the
# SystemError of ``[1:0]``: cryptotensors raises SafetensorError.
_WRAPPED_LENGTH = re.compile(
    r"Maximum allowed dimension exceeded|Overflow when unpacking long long|array is too big|\d{19}")


def _is_wrapped_length_error(exc):
    return type(exc) in (ValueError, RuntimeError, TypeError) and bool(_WRAPPED_LENGTH.search(str(exc)))


def _is_wrapped_length_value(value):
    return any(d >= 1 << 62 for d in getattr(value, "shape", ()))


def is_internal_error(exc):
    """CPython ``SystemError``, a Rust panic surfaced by pyo3 (``PanicException``,
    a ``BaseException`` subclass) or a wrapped-around slice length (above):
    safetensors 0.8 bugs, not API."""
    return (type(exc) is SystemError or type(exc).__name__ == "PanicException"
            or _is_wrapped_length_error(exc))


def _summary(value):
    if isinstance(value, torch.Tensor):
        return f"torch.Tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, np.ndarray):
        return f"np.ndarray(shape={value.shape}, dtype={value.dtype})"
    text = repr(value)
    return text if len(text) < 200 else text[:200] + "..."


def assert_same_error(r_exc, c_exc, what, *, same_message=False):
    if isinstance(r_exc, ref.SafetensorError):
        assert isinstance(c_exc, ct.SafetensorError), (
            f"{what}: safetensors raised SafetensorError({r_exc}) but cryptotensors "
            f"raised {type(c_exc).__module__}.{type(c_exc).__name__}({c_exc})"
        )
    elif is_internal_error(r_exc):
        assert isinstance(c_exc, ct.SafetensorError) or is_internal_error(c_exc), (
            f"{what}: safetensors raised {type(r_exc).__name__}({r_exc}) but cryptotensors "
            f"raised {type(c_exc).__name__}({c_exc})"
        )
    else:
        assert isinstance(c_exc, type(r_exc)), (
            f"{what}: safetensors raised {type(r_exc).__name__}({r_exc}) but "
            f"cryptotensors raised {type(c_exc).__module__}.{type(c_exc).__name__}({c_exc})"
        )
    if same_message:
        assert str(c_exc) == str(r_exc), (
            f"{what}: message differs: safetensors {str(r_exc)!r} vs cryptotensors {str(c_exc)!r}"
        )


def _no_compare(r, c, what):
    return None


def assert_same_outcome(r, c, what, *, eq=None, same_message=False):
    """Return True when both succeeded (and were compared), False when both failed."""
    if eq is None:
        eq = assert_equal
    if r.ok and c.ok:
        eq(r.value, c.value, what)
        return True
    if not r.ok and not c.ok:
        assert_same_error(r.exc, c.exc, what, same_message=same_message)
        return False
    if r.ok and _is_wrapped_length_value(r.value) and isinstance(c.exc, ct.SafetensorError):
        return False  # safetensors 0.8 bug, see _WRAPPED_LENGTH
    raise AssertionError(
        f"{what}: safetensors {r.describe()} but cryptotensors {c.describe()}"
    )


def parity(ref_fn, ct_fn, what, *, eq=None, same_message=False, bug=None):
    """Run both callables; returns ``(ref_value, ct_value)`` or ``None`` if both raised.

    ``bug=(is_bug, oracle)``: where safetensors fails with a known bug
    (``is_bug(exc)``), cryptotensors must do what ``oracle()`` does instead."""
    r = call(ref_fn)
    c = call(ct_fn)
    if bug is not None and not r.ok and bug[0](r.exc):
        r = call(bug[1])
        what += " [safetensors 0.8 bug, compared with the oracle]"
    if assert_same_outcome(r, c, what, eq=eq, same_message=same_message):
        return r.value, c.value
    return None


# --------------------------------------------------------------------------
# value equality
# --------------------------------------------------------------------------
def tensor_bytes(t):
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.numel() == 0:
        return b""
    flat = t.clone(memory_format=torch.contiguous_format).reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _strides_that_matter(t):
    """Strides of dimensions longer than one (torch leaves the others arbitrary)."""
    return tuple(st for st, n in zip(t.stride(), t.shape) if n > 1)


def assert_equal(r, c, what="value"):
    if isinstance(r, torch.Tensor):
        assert isinstance(c, torch.Tensor), f"{what}: expected torch.Tensor, got {type(c)}"
        assert c.dtype == r.dtype, f"{what}: dtype {c.dtype} != {r.dtype}"
        assert tuple(c.shape) == tuple(r.shape), f"{what}: shape {tuple(c.shape)} != {tuple(r.shape)}"
        assert c.device == r.device, f"{what}: device {c.device} != {r.device}"
        if r.numel():
            # view-vs-copy is observable (safetensors' cpu/mmap get_slice returns views)
            assert c.is_contiguous() == r.is_contiguous(), f"{what}: contiguity differs"
            assert _strides_that_matter(c) == _strides_that_matter(r), (
                f"{what}: stride {c.stride()} != {r.stride()}")
        assert c.requires_grad == r.requires_grad, f"{what}: requires_grad differs"
        assert tensor_bytes(c) == tensor_bytes(r), f"{what}: tensor bytes differ"
    elif isinstance(r, np.ndarray):
        assert type(c) is type(r), f"{what}: expected {type(r)}, got {type(c)}"
        assert c.dtype.str == r.dtype.str, f"{what}: dtype {c.dtype.str} != {r.dtype.str}"
        assert c.shape == r.shape, f"{what}: shape {c.shape} != {r.shape}"
        assert c.flags.writeable == r.flags.writeable, f"{what}: writeable flag differs"
        assert c.tobytes() == r.tobytes(), f"{what}: array bytes differ"
    elif isinstance(r, dict):
        assert isinstance(c, dict), f"{what}: expected dict, got {type(c)}"
        assert list(c) == list(r), f"{what}: keys/order {list(c)!r} != {list(r)!r}"
        for k in r:
            assert_equal(r[k], c[k], f"{what}[{k!r}]")
    elif isinstance(r, (list, tuple)):
        assert type(c) is type(r), f"{what}: expected {type(r).__name__}, got {type(c).__name__}"
        assert len(c) == len(r), f"{what}: length {len(c)} != {len(r)}"
        for i, (rv, cv) in enumerate(zip(r, c)):
            assert_equal(rv, cv, f"{what}[{i}]")
    else:
        assert type(c) is type(r), f"{what}: expected {type(r).__name__}, got {type(c).__name__} ({c!r})"
        assert c == r, f"{what}: {c!r} != {r!r}"


def _sorted_dict(d):
    return d if not isinstance(d, dict) else dict(sorted(d.items()))


def assert_equal_unordered(r, c, what="value"):
    """Dict comparison ignoring insertion order (safetensors builds these from a
    HashMap, so their order changes from call to call)."""
    if isinstance(r, dict):
        assert isinstance(c, dict), f"{what}: expected dict, got {type(c)}"
    assert_equal(_sorted_dict(r), _sorted_dict(c), what)


def _normalize_deserialized(out, what):
    assert isinstance(out, list), f"{what}: deserialize must return a list, got {type(out)}"
    items = []
    for item in out:
        assert isinstance(item, tuple) and len(item) == 2, f"{what}: bad item {item!r:.100}"
        name, info = item
        assert isinstance(info, dict), f"{what}: bad info {info!r:.100}"
        assert set(info) == {"shape", "dtype", "data"}, f"{what}: info keys {sorted(info)}"
        items.append((name, dict(sorted(info.items()))))
    names = [n for n, _ in items]
    assert len(names) == len(set(names)), f"{what}: duplicate names in {names}"
    return sorted(items, key=lambda kv: kv[0])


def _eq_deserialized(r, c, what):
    assert_equal(_normalize_deserialized(r, what), _normalize_deserialized(c, what), what)


# --------------------------------------------------------------------------
# file / bytes parity
# --------------------------------------------------------------------------
def _offsets_in_file(path):
    """``{name: (start, stop)}`` from the header (last duplicate wins, like
    safetensors), or ``None`` if the header cannot be parsed here."""
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
        header = header_of(blob)
        return {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}
    except Exception:  # noqa: BLE001
        return None


def offset_order_checker(path):
    """safetensors orders ``offset_keys()``/``get_tensors()`` by ``(start, stop)``;
    ties (several empty tensors at one offset) come out in HashMap order, which
    varies from one open to the next.  Accept any order that is the same up to
    such ties."""
    offsets = _offsets_in_file(path)

    def names(x):
        return list(x) if isinstance(x, dict) else x

    def check(r, c, what):
        rn, cn = names(r), names(c)
        if offsets is None or rn == cn or not isinstance(cn, list) or set(rn) - set(offsets):
            assert_equal(rn, cn, what)
        else:
            assert sorted(cn) == sorted(rn) and len(cn) == len(rn), f"{what}: names {cn} != {rn}"
            keys = [offsets[n] for n in cn]
            assert keys == sorted(keys), f"{what}: {cn} is not in offset order ({keys})"
        if isinstance(r, dict):
            assert_equal_unordered(r, c, what)

    return check


# safetensors 0.8 bug: with torch, F4 tensors (two values per
# float4_e2m1fn_x2 element) load only through get_tensor with the "mmap"
# backend, which gives the storage shape ([2, 4] -> [2, 2]); the "pread"
# backend and every get_slice reshape to the logical shape and fail with
# RuntimeError("shape '[2, 4]' is invalid for input of size 4"); an empty
# F4 tensor fails "pread" get_tensor with NotImplementedError.
# cryptotensors loads F4 the mmap way everywhere (get_slice indexes the logical
# shape): safetensors' mmap get_tensor is the oracle for the whole tensor.
def _f4_torch_bug(exc):
    return (type(exc) is RuntimeError and "is invalid for input of size" in str(exc)
            # empty F4 tensors with "pread": torch.zeros cannot fill float4
            or type(exc) is NotImplementedError and "Float4_e2m1fn_x2" in str(exc))


def _f4_oracle(path, name=None):
    with ref.safe_open(path, "pt", backend="mmap") as f:
        return f.get_tensors() if name is None else f.get_tensor(name)


def open_parity(path, framework, backend, device="cpu"):
    """Open ``path`` with both libraries and compare everything the handle exposes."""
    what = f"safe_open(<{path}>, {framework!r}, backend={backend!r})"
    in_offset_order = offset_order_checker(path)
    r = call(ref.safe_open, path, framework, device=device, backend=backend)
    c = call(ct.safe_open, path, framework, device=device, backend=backend)
    if not assert_same_outcome(r, c, what, eq=_no_compare):
        return False
    rf, cf = r.value, c.value
    with rf, cf:
        parity(rf.keys, cf.keys, f"{what}.keys()")
        parity(rf.offset_keys, cf.offset_keys, f"{what}.offset_keys()", eq=in_offset_order)
        parity(rf.metadata, cf.metadata, f"{what}.metadata()", eq=assert_equal_unordered)
        any_f4 = False
        for name in rf.offset_keys():
            f4 = framework == "pt" and rf.get_slice(name).get_dtype() == "F4"
            any_f4 |= f4
            bug = (_f4_torch_bug, lambda n=name: _f4_oracle(path, n)) if f4 else None
            parity(lambda n=name: rf.get_tensor(n), lambda n=name: cf.get_tensor(n),
                   f"{what}.get_tensor({name!r})", bug=bug)
            got = parity(lambda n=name: rf.get_slice(n), lambda n=name: cf.get_slice(n),
                         f"{what}.get_slice({name!r})", eq=_no_compare)
            if got is not None:
                rs, cs = got
                parity(rs.get_shape, cs.get_shape, f"{what}.get_slice({name!r}).get_shape()")
                parity(rs.get_dtype, cs.get_dtype, f"{what}.get_slice({name!r}).get_dtype()")
                parity(lambda s=rs: s[...], lambda s=cs: s[...], f"{what}.get_slice({name!r})[...]",
                       bug=bug)
        bug = (_f4_torch_bug, lambda: _f4_oracle(path)) if any_f4 else None
        got = parity(rf.get_tensors, cf.get_tensors, f"{what}.get_tensors()", eq=in_offset_order,
                     bug=bug)
        if got is not None:
            assert list(got[1]) == cf.offset_keys(), f"{what}: get_tensors() order != offset_keys()"
        parity(lambda: rf.get_tensor(MISSING_NAME), lambda: cf.get_tensor(MISSING_NAME),
               f"{what}.get_tensor(<missing>)")
    return True


# safetensors 0.8 bug: safetensors.torch.load lacks F4 and F8_E8M0 in its
# dtype table (KeyError), though torch has both and safetensors.torch.save
# writes them; cryptotensors loads them. The oracle is safetensors' own
# load_file (mmap) of the same bytes, which reads them.
_TORCH_LOAD_MISSING = ("F4", "F8_E8M0")


def _torch_load_bug(exc):
    return type(exc) is KeyError and exc.args[:1] in (("F4",), ("F8_E8M0",))


def _torch_load_oracle(data):
    for _, info in ref.deserialize(data):
        if info["dtype"] not in ref_pt._TYPES and info["dtype"] not in _TORCH_LOAD_MISSING:
            raise KeyError(info["dtype"])  # what torch.load raises for dtypes torch lacks
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return {k: v.clone() for k, v in ref_pt.load_file(path).items()}
    finally:
        os.remove(path)


def bytes_parity(data):
    """Compare the in-memory APIs on ``data``."""
    parity(lambda: ref.deserialize(data), lambda: ct.deserialize(data),
           "deserialize(bytes)", eq=_eq_deserialized)
    parity(lambda: ref_np.load(data), lambda: ct_np.load(data),
           "numpy.load(bytes)", eq=assert_equal_unordered)
    parity(lambda: ref_pt.load(data), lambda: ct_pt.load(data),
           "torch.load(bytes)", eq=assert_equal_unordered,
           bug=(_torch_load_bug, lambda: _torch_load_oracle(data)))


def file_parity(path, combos=COMBOS):
    """Compare every framework/backend combination plus the bytes API.

    Returns the set of combos that opened successfully (handy for asserting
    that a supposedly valid file really was accepted)."""
    opened = {combo for combo in combos if open_parity(path, *combo)}
    with open(path, "rb") as fh:
        bytes_parity(fh.read())
    return opened


# --------------------------------------------------------------------------
# raw file construction
# --------------------------------------------------------------------------
def build_file(header, data=b"", *, n=None, pad_to=1):
    """Assemble ``<u64 N><header><data>``.

    ``header`` is a dict (compact JSON, insertion order kept) or raw bytes;
    ``n`` overrides the length prefix; ``pad_to`` pads the header with spaces.
    """
    if isinstance(header, (bytes, bytearray)):
        hb = bytes(header)
    else:
        hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if pad_to > 1 and len(hb) % pad_to:
        hb += b" " * (pad_to - len(hb) % pad_to)
    return struct.pack("<Q", len(hb) if n is None else n) + hb + bytes(data)


def split_file(blob):
    """Return ``(n, header_bytes, data_bytes)`` of a well-formed blob."""
    (n,) = struct.unpack("<Q", blob[:8])
    return n, blob[8:8 + n], blob[8 + n:]


def header_of(blob):
    """Parse the JSON header (preserving key order) of a well-formed blob."""
    _, hb, _ = split_file(blob)
    return json.loads(hb.decode("utf-8"))
