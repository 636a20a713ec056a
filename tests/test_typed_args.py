"""Arguments are converted by the binding (issue 12, "A typed boundary"):
framework, device, backend, slice indexes and TensorSpec dtypes are
`FromPyObject` types in rust/python/src/args.rs, whose errors are
safetensors 0.8's own (class and message); dtypes come from the core's one
table (`_core.DTYPES`). The Python layer no longer re-creates these
messages, so these tests call the binding itself and compare it with
safetensors."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import cryptotensors as ct
import cryptotensors.torch
from cryptotensors import _core


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - the class and message are what is compared
        return (type(e).__name__, str(e))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("args") / "p.safetensors")
    safetensors.numpy.save_file({"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}, path)
    return path


ARGS = [
    ("pt", None, "mmap"), (None, None, "mmap"), (3, None, "mmap"), ("PT", None, "mmap"), ("jax", None, "mmap"),
    ("np", "cuda:x", "mmap"), ("np", "cuda:", "mmap"), ("np", "cuda:99999999999999999999", "mmap"),
    ("np", "mps:1", "mmap"), ("pt", "mps:0", "mmap"), ("np", "cuda:+1", "mmap"), ("pt", "cuda:1:2", "mmap"),
    ("pt", "meta", "mmap"), ("pt", -1, "mmap"), ("pt", 2**70, "mmap"), ("pt", 1.5, "mmap"),
    ("pt", torch.device("cpu"), "mmap"), ("pt", True, "mmap"), ("pt", "xpu", "pread"),
    ("pt", None, None), ("pt", None, 3), ("pt", None, "MMAP"),
]


@pytest.mark.parametrize("framework,device,backend", ARGS, ids=repr)
def test_load_target_raises_what_safetensors_raises(plain, framework, device, backend):
    want = _outcome(lambda: safetensors.safe_open(plain, framework, device=device, backend=backend))
    got = _outcome(lambda: _core.load_target(framework, device, backend))
    if want[0] == "SafetensorError" and "is not supported for framework" in want[1]:
        # safetensors checks the device against the framework after opening.
        assert got[0] == "ok"
        got = _outcome(lambda: _core.check_device(framework, device))
    if want[0] == "ok":
        assert got[0] == "ok", got
        assert _core.check_device(framework, device) is None
    else:
        assert got == want


def test_load_target_is_typed():
    assert _core.load_target("torch", 1, "pread") == ("pt", "cuda:1", "pread")
    assert _core.load_target("jax") == ("flax", "cpu", "mmap")
    assert _core.load_target("numpy", "npu") == ("np", "npu:0", "mmap")


@pytest.mark.parametrize("dtype", ["float32", "float4_e2m1fn_x2", "nope", "F32", "", 3, None])
def test_spec_dtype_matches_tensorspec(dtype):
    want = _outcome(lambda: safetensors.TensorSpec(dtype=dtype, shape=[2], data_ptr=0, data_len=0).dtype)
    assert _outcome(lambda: ct.TensorSpec(dtype=dtype, shape=[2], data_ptr=0, data_len=0).dtype) == want


INDEXES = [0, -1, 2, slice(None), slice(0, 5), slice(-1, None), slice(None, None, 0), slice(None, None, 2**64),
           Ellipsis, (Ellipsis, Ellipsis), (0, 1, 2, 3), None, [0], [], "a", 1.5, 2**40, (0, slice(1, 0)),
           (slice(None), slice(1, 3), slice(None, None, 2))]


@pytest.mark.parametrize("index", INDEXES, ids=repr)
def test_select_raises_what_safetensors_slicing_raises(plain, index):
    with safetensors.safe_open(plain, "np") as f:
        want = _outcome(lambda: f.get_slice("x")[index].shape)
    h = _core.Handle.open(plain, "pread")
    got = _outcome(lambda: h.select("x", index))
    if want[0] == "ok":
        assert got[0] == "ok", got
        _, shape, nbytes = got[1]
        assert tuple(shape) == want[1] and nbytes == 4 * int(np.prod(shape))
    elif "stops before it starts" in got[1]:
        assert want[0] in ("SystemError", "PanicException")  # safetensors 0.8's failure there
    else:
        assert got == want


def test_select_torch_rules_defer_what_the_core_does_not_slice(plain):
    h = _core.Handle.open(plain, "pread")
    for index in (None, (0, None), slice(None, None, -1), True, [0, 1]):
        assert h.select("x", index, torch=True) is None, index
    idx, shape, nbytes = h.select("x", (slice(-1, None), slice(0, 100)), torch=True)  # clamped, as torch
    assert shape == [1, 3, 4] and nbytes == 48
    out = np.zeros(12, np.float32)
    h.read_slice_into("x", idx, out)
    assert out.tolist() == list(range(12, 24))
    with pytest.raises(TypeError):
        h.read_slice_into("x", [("s", 0, 1, 1)], out)  # the old tagged tuples are refused


def test_dtype_table_is_the_cores():
    table = _core.DTYPES
    assert table["F32"] == (32, "float32") and table["F4"] == (4, "float4_e2m1fn_x2")
    assert table["F6_E2M3"] == (6, None)
    for code, (bits, name) in table.items():
        if name and hasattr(torch, name) and code != "F4":  # torch packs F4 two to an element
            assert getattr(torch, name).itemsize * 8 == bits, code
    assert list(cryptotensors.torch._TYPES.items()) == list(safetensors.torch._TYPES.items())
