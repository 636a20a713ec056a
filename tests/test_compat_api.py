"""API parity with safetensors 0.8.0 for plain files."""

import gc
import importlib
import importlib.util
import inspect
import os
import pickle
import random
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from _compat import (
    COMBOS,
    MISSING_NAME,
    assert_equal,
    assert_same_outcome,
    build_file,
    call,
    ct,
    ct_np,
    ct_pt,
    parity,
    ref,
    ref_np,
    ref_pt,
)
from _strategies import compat_settings, shapes, slice_indexes
from hypothesis import given
from hypothesis import strategies as st

COMBO_IDS = [f"{fw}-{be}" for fw, be in COMBOS]


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("api") / "sample.safetensors")
    ref_np.save_file(
        {
            "x": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "s": np.array(5, np.int64),
            "e": np.zeros((0, 3), np.int16),
            "b": np.array([True, False, True]),
        },
        path,
        metadata={"k": "v"},
    )
    return path


def _both(path, framework="np", **kw):
    return ref.safe_open(path, framework, **kw), ct.safe_open(path, framework, **kw)


# --------------------------------------------------------------------------
# module surface
# --------------------------------------------------------------------------
def test_cryptotensors_is_not_safetensors():
    # Guards the differential tests against comparing safetensors with itself.
    assert ct.safe_open is not ref.safe_open
    assert ct.SafetensorError is not ref.SafetensorError
    assert ct.serialize is not ref.serialize


def test_public_names_exist():
    for name in ("safe_open", "serialize", "serialize_file", "deserialize", "TensorSpec",
                 "SafetensorError", "__version__"):
        assert hasattr(ct, name), name
    for name in ("save", "save_file", "load", "load_file", "save_model", "load_model",
                 "storage_ptr", "storage_size", "_find_shared_tensors",
                 "_remove_duplicate_names", "_TYPES"):
        assert hasattr(ct_pt, name), name
    for name in ("save", "save_file", "load", "load_file"):
        assert hasattr(ct_np, name), name


def test_version_is_a_version_string():
    assert isinstance(ct.__version__, str)
    assert re.match(r"^\d+\.\d+\.\d+", ct.__version__), ct.__version__


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def assert_signature_extends(c_fn, r_fn, *, defaults):
    """cryptotensors may add keyword-only parameters (with defaults), nothing else:
    the positional parameters are identical and every safetensors keyword-only
    parameter exists with the same kind (and default for Python functions)."""
    r_params = list(inspect.signature(r_fn).parameters.values())
    c_params = list(inspect.signature(c_fn).parameters.values())

    def positional(ps):
        return [(p.name, p.kind) + ((p.default,) if defaults else ()) for p in ps if p.kind in _POSITIONAL]

    assert positional(c_params) == positional(r_params)
    c_by_name = {p.name: p for p in c_params}
    for p in r_params:
        if p.kind in _POSITIONAL:
            continue
        assert p.name in c_by_name, f"missing parameter {p.name}"
        assert c_by_name[p.name].kind == p.kind, p.name
        if defaults:
            assert c_by_name[p.name].default == p.default, p.name
    r_names = {p.name for p in r_params}
    for p in c_params:
        if p.name not in r_names:
            assert p.kind == inspect.Parameter.VAR_KEYWORD or (
                p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
            ), f"extra parameter {p.name} must be keyword-only with a default"


@pytest.mark.parametrize("name", ["safe_open", "serialize", "serialize_file", "deserialize",
                                  "TensorSpec"])
def test_core_signatures(name):
    assert_signature_extends(getattr(ct, name), getattr(ref, name), defaults=False)


@pytest.mark.parametrize("module,name", [
    ("torch", n) for n in ("save", "save_file", "load", "load_file", "save_model", "load_model",
                           "storage_ptr", "storage_size", "_find_shared_tensors",
                           "_remove_duplicate_names")
] + [("numpy", n) for n in ("save", "save_file", "load", "load_file")])
def test_python_signatures(module, name):
    r_mod, c_mod = (ref_pt, ct_pt) if module == "torch" else (ref_np, ct_np)
    assert_signature_extends(getattr(c_mod, name), getattr(r_mod, name), defaults=True)


def test_safe_open_argument_forms(sample_file):
    forms = [
        lambda m: m.safe_open(filename=sample_file, framework="np").keys(),
        lambda m: m.safe_open(sample_file, "np", "cpu").keys(),
        lambda m: m.safe_open(sample_file, "np", device="cpu", backend="pread").keys(),
        lambda m: m.safe_open(sample_file, "np", "cpu", "mmap"),  # backend is keyword-only
        lambda m: m.safe_open(sample_file),
        lambda m: m.safe_open(sample_file, "np", bogus=1),
    ]
    for i, form in enumerate(forms):
        parity(lambda f=form: f(ref), lambda f=form: f(ct), f"form {i}")


def test_handle_and_slice_methods(sample_file):
    r, c = _both(sample_file)
    public = lambda o: {n for n in dir(o) if not n.startswith("_")}  # noqa: E731
    assert public(c) >= public(r) == {"get_slice", "get_tensor", "get_tensors", "keys",
                                      "metadata", "offset_keys"}
    assert public(c.get_slice("x")) >= public(r.get_slice("x")) == {"get_shape", "get_dtype"}
    assert hasattr(c, "__enter__") and hasattr(c, "__exit__")


# --------------------------------------------------------------------------
# frameworks and devices
# --------------------------------------------------------------------------
_ABSENT_MODULE = {"tf": "tensorflow", "tensorflow": "tensorflow", "flax": "jax", "jax": "jax",
                  "paddle": "paddle", "mlx": "mlx"}
FRAMEWORK_NAMES = ["pt", "torch", "pytorch", "np", "numpy", "tf", "tensorflow", "flax", "jax",
                   "paddle", "mlx", "PT", "Numpy", "foo", "", " pt", "pt ", "mx", "jnp"]


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_framework_names(sample_file, framework):
    mod = _ABSENT_MODULE.get(framework)
    if mod and importlib.util.find_spec(mod) is not None:
        pytest.skip(f"{mod} is installed; this test compares the 'absent' behaviour")
    got = parity(lambda: ref.safe_open(sample_file, framework),
                 lambda: ct.safe_open(sample_file, framework),
                 f"safe_open(framework={framework!r})", eq=lambda r, c, w: None, same_message=True)
    if got is None:
        return
    r, c = got
    parity(r.keys, c.keys, "keys()")
    parity(lambda: r.get_tensor("x"), lambda: c.get_tensor("x"), "get_tensor", same_message=True)
    parity(lambda: r.get_slice("x")[0], lambda: c.get_slice("x")[0], "get_slice()[0]",
           same_message=True)
    parity(r.get_tensors, c.get_tensors, "get_tensors", same_message=True)


@pytest.mark.parametrize("framework,expected", [("pt", torch.Tensor), ("torch", torch.Tensor),
                                                ("pytorch", torch.Tensor), ("np", np.ndarray),
                                                ("numpy", np.ndarray)])
def test_framework_result_types(sample_file, framework, expected):
    with ct.safe_open(sample_file, framework) as f:
        t = f.get_tensor("x")
    assert isinstance(t, expected)
    assert tuple(t.shape) == (2, 3, 4) and float(t[1, 2, 3]) == 23.0


def test_unknown_framework_error(sample_file):
    with pytest.raises(ct.SafetensorError, match="framework foo is invalid"):
        ct.safe_open(sample_file, "foo")


@pytest.mark.parametrize("framework", ["tf", "flax", "mlx", "paddle"])
def test_absent_framework_error_is_module_not_found(sample_file, framework):
    mod = _ABSENT_MODULE[framework]
    if importlib.util.find_spec(mod) is not None:
        pytest.skip(f"{mod} is installed")
    # safetensors 0.8: paddle fails at safe_open(), the others on first tensor access
    with pytest.raises(ModuleNotFoundError, match=f"No module named '{mod}'"):
        with ct.safe_open(sample_file, framework) as f:
            f.get_tensor("x")


DEVICES = ["cpu", "cpu:0", "meta", "foo", "", -1, 0, "cuda", "cuda:0", "cuda:x", "mps", "xpu:0",
           torch.device("cpu"), None]


@pytest.mark.parametrize("framework", ["np", "pt"])
@pytest.mark.parametrize("device", DEVICES, ids=repr)
def test_device_argument(sample_file, framework, device):
    got = parity(lambda: ref.safe_open(sample_file, framework, device=device),
                 lambda: ct.safe_open(sample_file, framework, device=device),
                 f"safe_open({framework!r}, device={device!r})",
                 eq=lambda r, c, w: None, same_message=True)
    if got is not None:
        parity(got[0].keys, got[1].keys, "keys()")


@pytest.mark.parametrize("backend", ["mmap", "pread", "MMAP", "", "io_uring", None])
def test_backend_argument(sample_file, backend):
    for fw in ("np", "pt"):
        got = parity(lambda fw=fw: ref.safe_open(sample_file, fw, backend=backend),
                     lambda fw=fw: ct.safe_open(sample_file, fw, backend=backend),
                     f"safe_open(backend={backend!r})", eq=lambda r, c, w: None, same_message=True)
        if got is not None:
            parity(got[0].get_tensors, got[1].get_tensors, "get_tensors()")
    parity(lambda: ref_np.load_file(sample_file, backend=backend),
           lambda: ct_np.load_file(sample_file, backend=backend), "numpy.load_file", same_message=True)
    parity(lambda: ref_pt.load_file(sample_file, backend=backend),
           lambda: ct_pt.load_file(sample_file, backend=backend), "torch.load_file", same_message=True)


# --------------------------------------------------------------------------
# handle behaviour
# --------------------------------------------------------------------------
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_handle_methods_match(sample_file, combo):
    r, c = _both(sample_file, combo[0], backend=combo[1])
    assert c.keys() == r.keys() == ["b", "e", "s", "x"]
    assert c.offset_keys() == r.offset_keys()
    assert c.metadata() == r.metadata() == {"k": "v"}
    for name in r.keys():
        parity(lambda n=name: r.get_tensor(n), lambda n=name: c.get_tensor(n), f"get_tensor({name!r})")
    parity(r.get_tensors, c.get_tensors, "get_tensors()")
    parity(lambda: r.get_tensor(MISSING_NAME), lambda: c.get_tensor(MISSING_NAME),
           "get_tensor(missing)", same_message=True)
    parity(lambda: r.get_slice("nope"), lambda: c.get_slice("nope"), "get_slice(missing)",
           same_message=True)
    parity(lambda: r.get_tensor(3), lambda: c.get_tensor(3), "get_tensor(3)")
    parity(lambda: r.get_slice(None), lambda: c.get_slice(None), "get_slice(None)")


def test_missing_tensor_message(sample_file):
    with ct.safe_open(sample_file, "np") as f:
        with pytest.raises(ct.SafetensorError, match="File does not contain tensor missing"):
            f.get_tensor("missing")


def test_metadata_none_when_absent(tmp_path):
    p = str(tmp_path / "nometa.safetensors")
    ref_np.save_file({"a": np.zeros(2, np.uint8)}, p)
    r, c = _both(p)
    assert r.metadata() is None and c.metadata() is None


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_closed_handle(sample_file, combo):
    fw, be = combo
    handles = {}
    for name, mod in (("ref", ref), ("ct", ct)):
        h = mod.safe_open(sample_file, fw, backend=be)
        assert h.__enter__() is h
        sl = h.get_slice("x")
        assert h.__exit__(None, None, None) is None
        handles[name] = (h, sl)
    (rh, rsl), (ch, csl) = handles["ref"], handles["ct"]
    calls = {
        "keys": lambda h: h.keys(),
        "offset_keys": lambda h: h.offset_keys(),
        "metadata": lambda h: h.metadata(),
        "get_tensor": lambda h: h.get_tensor("x"),
        "get_tensors": lambda h: h.get_tensors(),
        "get_slice": lambda h: h.get_slice("x"),
    }
    for what, fn in calls.items():
        with pytest.raises(ct.SafetensorError, match="File is closed"):
            fn(ch)
        parity(lambda f=fn: f(rh), lambda f=fn: f(ch), f"closed.{what}", same_message=True)
    # slices obtained before closing keep working
    parity(lambda: rsl[...], lambda: csl[...], "slice after close")
    parity(lambda: rsl[1, :2], lambda: csl[1, :2], "slice after close [1, :2]")
    assert csl.get_shape() == [2, 3, 4] and csl.get_dtype() == "F32"
    # closing twice is harmless; re-entering a closed handle mirrors safetensors
    parity(lambda: rh.__exit__(None, None, None), lambda: ch.__exit__(None, None, None), "2nd exit")
    parity(lambda: rh.__enter__() is rh, lambda: ch.__enter__() is ch, "enter after close")


def test_context_manager_closes(sample_file):
    with ct.safe_open(sample_file, "pt") as f:
        t = f.get_tensor("x")
        sl = f.get_slice("x")
    with pytest.raises(ct.SafetensorError, match="File is closed"):
        f.keys()
    assert float(t.sum()) == float(sum(range(24)))  # tensors outlive the handle
    assert sl[1].tolist() == torch.arange(12, 24, dtype=torch.float32).reshape(3, 4).tolist()


def test_exception_inside_with_propagates_and_closes(sample_file):
    with pytest.raises(KeyError):
        with ct.safe_open(sample_file, "np") as f:
            raise KeyError("boom")
    with pytest.raises(ct.SafetensorError, match="File is closed"):
        f.keys()


def test_get_tensors_and_key_orders(tmp_path):
    # header order, name order and offset order all differ
    blob = build_file({
        "m": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]},
        "z": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "a": {"dtype": "U8", "shape": [1], "data_offsets": [3, 4]},
        "k": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]},
    }, b"\x00\x01\x02\x03")
    p = str(tmp_path / "order.safetensors")
    with open(p, "wb") as fh:
        fh.write(blob)
    for fw, be in COMBOS:
        r, c = _both(p, fw, backend=be)
        assert c.keys() == r.keys() == ["a", "k", "m", "z"]
        assert c.offset_keys() == r.offset_keys() == ["z", "k", "m", "a"]
        assert list(c.get_tensors()) == list(r.get_tensors()) == ["z", "k", "m", "a"]
        assert [int(v[0]) for v in c.get_tensors().values()] == [0, 1, 2, 3]
    assert list(ct_np.load_file(p)) == list(ct_pt.load_file(p)) == ["z", "k", "m", "a"]


# --------------------------------------------------------------------------
# get_slice
# --------------------------------------------------------------------------
SLICE_DTYPES = [np.float32, np.int16, np.uint8, np.bool_, np.float64, np.complex64]


@compat_settings(150)
@given(shape=shapes, dtype=st.sampled_from(SLICE_DTYPES), data=st.data())
def test_get_slice_matches(scratch, shape, dtype, data):
    n = int(np.prod(shape))
    arr = (np.arange(n) % 251).astype(dtype).reshape(shape)
    path = scratch.write(ref_np.save({"t": arr}))
    indexes = [data.draw(slice_indexes(shape), label=f"index{i}") for i in range(4)]
    for fw, be in COMBOS:
        r, c = _both(path, fw, backend=be)
        rs, cs = r.get_slice("t"), c.get_slice("t")
        assert cs.get_shape() == rs.get_shape() == list(shape)
        assert cs.get_dtype() == rs.get_dtype()
        for idx in indexes:
            parity(lambda s=rs, i=idx: s[i], lambda s=cs, i=idx: s[i], f"{fw}/{be} shape={shape} [{idx!r}]")
    os.remove(path)


SLICE_EDGE_CASES = {
    "int": 0, "neg_int": -1, "int_oob": 2, "neg_int_oob": -3, "full": slice(None),
    "step2": slice(None, None, 2), "step_neg": slice(None, None, -1), "step_zero": slice(None, None, 0),
    "start_gt_size": slice(5, 1), "neg_start": slice(-1, None), "huge_bounds": slice(-100, 100),
    "stop_gt_size": slice(0, 100), "empty_forward": slice(1, 1), "reversed": slice(1, 0),
    "start_eq_size": slice(2, None), "big_step": slice(None, None, 1000), "tuple2": (0, 1),
    "tuple3": (0, 1, 2), "too_many": (0, 1, 2, 3), "ellipsis": Ellipsis, "ellipsis_last": (Ellipsis, 0),
    "ellipsis_mid": (0, Ellipsis, 1), "two_ellipsis": (Ellipsis, Ellipsis), "newaxis": None,
    "newaxis_tuple": (None, 0), "newaxis_after": (slice(None), None), "empty_tuple": (),
    "list": [0, 1], "empty_list": [], "np_int": np.int64(1), "bool": True, "str": "a", "float": 1.0,
    "huge_int": 2**70, "mixed": (slice(0, 2, 2), slice(0, 3, 2), slice(1, None, 2)),
    "inner_oob": (0, slice(10, 20)), "inner_neg": (0, -4),
    "reversed_then_strided": (slice(1, 0), slice(None, None, 2)),  # safetensors np/pread: Rust panic
}


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("case", list(SLICE_EDGE_CASES))
def test_get_slice_edge_cases(sample_file, combo, case):
    idx = SLICE_EDGE_CASES[case]
    r, c = _both(sample_file, combo[0], backend=combo[1])
    for name in ("x", "s", "e"):
        parity(lambda n=name: r.get_slice(n)[idx], lambda n=name: c.get_slice(n)[idx],
               f"{combo} {name}[{case}]")


def test_get_slice_values(sample_file):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with ct.safe_open(sample_file, "np") as f:
        s = f.get_slice("x")
        assert s.get_shape() == [2, 3, 4] and isinstance(s.get_shape(), list)
        assert s.get_dtype() == "F32"
        np.testing.assert_array_equal(s[-1], x[-1])
        np.testing.assert_array_equal(s[:, 1:3, ::2], x[:, 1:3, ::2])
        np.testing.assert_array_equal(s[..., 3], x[..., 3])
        np.testing.assert_array_equal(s[1, 2, 3], x[1, 2, 3])
    with ct.safe_open(sample_file, "pt") as f:
        s = f.get_slice("x")
        assert s[0, ..., 1:].tolist() == x[0, ..., 1:].tolist()
        assert s[:, None].shape == (2, 1, 3, 4)


# --------------------------------------------------------------------------
# SafetensorError
# --------------------------------------------------------------------------
def test_safetensor_error_pickle_round_trip():
    for exc in (ct.SafetensorError("boom"), call(ct.deserialize, b"\x00").exc):
        assert isinstance(exc, ct.SafetensorError)
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is ct.SafetensorError
        assert back.args == exc.args and str(back) == str(exc)


def test_safetensor_error_module_and_hierarchy():
    E = ct.SafetensorError
    mod = importlib.import_module(E.__module__)
    assert getattr(mod, E.__qualname__) is E
    assert E.__name__ == "SafetensorError"
    assert [k.__name__ for k in E.__mro__] == [k.__name__ for k in ref.SafetensorError.__mro__]
    assert E.__module__.split(".")[0] == "cryptotensors", E.__module__


def test_safetensor_error_raised_from_every_entry_point(tmp_path):
    bad = str(tmp_path / "bad.safetensors")
    with open(bad, "wb") as fh:
        fh.write(b"\x00" * 8)
    for fn in (lambda: ct.safe_open(bad, "np"), lambda: ct.deserialize(b"\x00" * 8),
               lambda: ct_np.load(b"\x00" * 8), lambda: ct_pt.load(b"\x00" * 8),
               lambda: ct_np.load_file(bad), lambda: ct_pt.load_file(bad, backend="pread"),
               lambda: ct.TensorSpec(dtype="nope", shape=[1], data_ptr=0, data_len=0)):
        with pytest.raises(ct.SafetensorError):
            fn()


# --------------------------------------------------------------------------
# torch helpers
# --------------------------------------------------------------------------
def test_torch_types_table():
    assert list(ct_pt._TYPES.items()) == list(ref_pt._TYPES.items())


def _state_dicts():
    base = torch.arange(12, dtype=torch.float32)
    other = torch.zeros(3, 4)
    return {
        "independent": {"a": torch.zeros(2), "b": torch.ones(2)},
        "tied": {"w": other, "tied": other},
        "tied_view": {"full": base, "view": base.view(3, 4)},
        "disjoint_halves": {"lo": base[:6], "hi": base[6:]},
        "overlapping_parts": {"p1": base[:8], "p2": base[4:], "full": base},
        "partial_only": {"p1": base[:8], "p2": base[4:]},
        "empty": {"e1": torch.empty(0), "e2": torch.empty(0)},
        "meta": {"m1": torch.empty(3, device="meta"), "m2": torch.empty(3, device="meta")},
        "mixed": {"z": other, "a": other, "m": base[2:5], "n": torch.ones(1)},
    }


@pytest.mark.parametrize("case", list(_state_dicts()))
def test_shared_tensor_helpers(case):
    sd = _state_dicts()[case]
    for name, t in sd.items():
        assert ct_pt.storage_ptr(t) == ref_pt.storage_ptr(t), name
        assert ct_pt.storage_size(t) == ref_pt.storage_size(t), name
    assert ct_pt._find_shared_tensors(sd) == ref_pt._find_shared_tensors(sd)
    for kw in ({}, {"preferred_names": sorted(sd)[-1:]}, {"discard_names": sorted(sd)[:1]}):
        got = parity(lambda kw=kw: ref_pt._remove_duplicate_names(sd, **kw),
                     lambda kw=kw: ct_pt._remove_duplicate_names(sd, **kw),
                     f"_remove_duplicate_names({case}, {kw})",
                     eq=lambda r, c, w: None, same_message=True)
        if got is not None:
            assert dict(got[1]) == dict(got[0])


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(7, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.arange(3))


def _fresh(seed):
    torch.manual_seed(seed)
    return _Tied()


def test_save_model_byte_identical(tmp_path):
    model = _fresh(0)
    rp, cp = str(tmp_path / "r.safetensors"), str(tmp_path / "c.safetensors")
    ref_pt.save_model(model, rp)
    ct_pt.save_model(model, cp)
    with open(rp, "rb") as a, open(cp, "rb") as b:
        assert b.read() == a.read()
    with ct.safe_open(cp, "pt") as f:
        assert f.metadata() == {"head.weight": "embed.weight"}
    rp2, cp2 = str(tmp_path / "r2.safetensors"), str(tmp_path / "c2.safetensors")
    ref_pt.save_model(model, rp2, metadata={"head.weight": "user"})
    ct_pt.save_model(model, cp2, metadata={"head.weight": "user"})
    with open(rp2, "rb") as a, open(cp2, "rb") as b:
        assert b.read() == a.read()


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_load_model_matches(tmp_path, backend):
    src = _fresh(0)
    path = str(tmp_path / "m.safetensors")
    ct_pt.save_model(src, path)
    r_model, c_model = _fresh(1), _fresh(1)
    r_res = ref_pt.load_model(r_model, path, backend=backend)
    c_res = ct_pt.load_model(c_model, path, backend=backend)
    assert (sorted(c_res[0]), sorted(c_res[1])) == (sorted(r_res[0]), sorted(r_res[1])) == ([], [])
    assert_equal(r_model.state_dict(), c_model.state_dict(), "state_dict")
    assert_equal(src.state_dict(), c_model.state_dict(), "state_dict vs source")
    assert c_model.head.weight is c_model.embed.weight


def test_load_model_strict_errors(tmp_path):
    path = str(tmp_path / "partial.safetensors")
    ct_pt.save_file({"proj.weight": torch.zeros(4, 4), "extra": torch.zeros(1)}, path)
    parity(lambda: ref_pt.load_model(_fresh(1), path), lambda: ct_pt.load_model(_fresh(1), path),
           "load_model(strict)", same_message=True)
    got = parity(lambda: ref_pt.load_model(_fresh(1), path, strict=False),
                 lambda: ct_pt.load_model(_fresh(1), path, strict=False), "load_model(strict=False)",
                 eq=lambda r, c, w: None)
    assert got is not None
    (r_missing, r_unexp), (c_missing, c_unexp) = got
    assert sorted(c_missing) == sorted(r_missing) and sorted(c_unexp) == sorted(r_unexp)
    assert "extra" in c_unexp and "embed.weight" in c_missing


def test_save_model_non_contiguous(tmp_path):
    model = torch.nn.Linear(3, 4)
    model.weight = torch.nn.Parameter(torch.zeros(3, 4).t())
    parity(lambda: ref_pt.save_model(model, str(tmp_path / "r"), force_contiguous=False),
           lambda: ct_pt.save_model(model, str(tmp_path / "c"), force_contiguous=False),
           "save_model(force_contiguous=False)", same_message=True)


# --------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_one_handle_many_threads(tmp_path, combo):
    rng = np.random.default_rng(1)
    arrays = {f"t{i}": rng.standard_normal((64 + i, 33)).astype(np.float32) for i in range(16)}
    path = str(tmp_path / "threads.safetensors")
    ref_np.save_file(arrays, path)
    f = ct.safe_open(path, combo[0], backend=combo[1])
    names = list(arrays)
    barrier = threading.Barrier(8)

    def worker(seed):
        barrier.wait()
        local = random.Random(seed)
        bad = []
        for _ in range(60):
            name = local.choice(names)
            if local.random() < 0.3:
                got = f.get_slice(name)[3:17]
                want = arrays[name][3:17]
            else:
                got = f.get_tensor(name)
                want = arrays[name]
            got = got.numpy() if isinstance(got, torch.Tensor) else got
            if got.shape != want.shape or not np.array_equal(got, want):
                bad.append(name)
        return bad

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    f.__exit__(None, None, None)
    assert results == [[]] * 8


# --------------------------------------------------------------------------
# lazy / file-backed torch tensors
# --------------------------------------------------------------------------
def _mapped_ranges(path):
    real = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def _file_backed(t, path):
    ptr = t.data_ptr()
    return any(lo <= ptr < hi for lo, hi in _mapped_ranges(path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/self/maps")
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_torch_tensor_backing_matches_safetensors(tmp_path, backend):
    paths = {}
    for name in ("ref", "ct"):
        paths[name] = str(tmp_path / f"{name}.safetensors")
        ref_pt.save_file({"big": torch.arange(1 << 20, dtype=torch.float32),
                          "small": torch.arange(10, dtype=torch.int64)}, paths[name])
    backed = {}
    for name, mod in (("ref", ref), ("ct", ct)):
        f = mod.safe_open(paths[name], "pt", backend=backend)
        t = f.get_tensor("big")
        s = f.get_slice("big")[10:20]
        backed[name] = {"tensor": _file_backed(t, paths[name])}
        assert t[123456].item() == 123456.0 and s.tolist() == list(map(float, range(10, 20)))
        f.__exit__(None, None, None)
        del f
        gc.collect()
        # the tensor stays valid after the handle is gone
        assert t[-1].item() == float((1 << 20) - 1)
        backed[name]["alive_after_close"] = bool(_mapped_ranges(paths[name]))
        del t, s
        gc.collect()
        backed[name]["mapped_after_drop"] = bool(_mapped_ranges(paths[name]))
    assert backed["ct"] == backed["ref"]
    if backend == "mmap":  # sanity: safetensors 0.8 serves cpu torch tensors from the mapping
        assert backed["ref"]["tensor"] is True


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_load_file_and_get_tensor_after_file_replaced(tmp_path, combo):
    # safetensors keeps reading the file it opened; replacing the path
    # (rename over it, as serialize_file does) must not affect an open handle.
    path = str(tmp_path / "swap.safetensors")
    ref_np.save_file({"a": np.arange(1000, dtype=np.int32)}, path)
    hs = _both(path, combo[0], backend=combo[1])
    ref_np.save_file({"a": np.zeros(1000, dtype=np.int32)}, path)
    r, c = hs
    parity(lambda: r.get_tensor("a"), lambda: c.get_tensor("a"), "get_tensor after replace")
    assert int(c.get_tensor("a")[999]) == 999


@pytest.mark.parametrize("device", ["cpu"])
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_torch_load_file_backends(tmp_path, device, backend):
    path = str(tmp_path / "lf.safetensors")
    tensors = {"w": torch.randn(5, 3), "b": torch.arange(4, dtype=torch.int16),
               "h": torch.randn(2, 2).to(torch.bfloat16), "f8": torch.randn(3).to(torch.float8_e4m3fn)}
    ct_pt.save_file(tensors, path)
    got = parity(lambda: ref_pt.load_file(path, device=device, backend=backend),
                 lambda: ct_pt.load_file(path, device=device, backend=backend), "load_file")
    assert got is not None
    for k, v in tensors.items():
        assert got[1][k].dtype == v.dtype and torch.equal(got[1][k].float(), v.float())
    np_path = str(tmp_path / "np.safetensors")
    ct_np.save_file({"a": np.arange(6).reshape(2, 3)}, np_path)
    parity(lambda: ref_np.load_file(np_path, backend=backend),
           lambda: ct_np.load_file(np_path, backend=backend), "numpy.load_file")
    assert assert_same_outcome(call(ref_pt.load_file, path, device, backend=backend),
                               call(ct_pt.load_file, path, device, backend=backend),
                               "positional device")
