"""The Python/Rust boundary cannot crash the process (issue 12, "Soundness
first") nor let a Rust panic out (issue 11 §1).

Before: `Handle.read_into`, `read_range_into`, `read_slice_into` and
`serialize` took integer addresses, so `Handle.from_bytes(data).read_into("w",
0x10, 4096)` killed the interpreter with SIGSEGV; and a panic in the core
reached Python as `pyo3_runtime.PanicException`, a BaseException that
`except Exception` misses. Now memory crosses as buffers and every entry
point turns a panic into `InternalError`.

Every `_core` callable (found by `dir()`, so a new one is swept too) and
every `Handle` method is called with hostile arguments in a child process:
each call must return or raise an ordinary exception, and the child must
live to report. The child's verdict is read back as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_CHILD = textwrap.dedent(
    r'''
    import itertools, json, os, sys
    import numpy as np
    import cryptotensors as ct
    import cryptotensors.numpy as cn
    from cryptotensors import _core

    PAYLOAD = "this payload must never be shown"
    INTERNAL = getattr(_core, "InternalError", ())  # () before the guard existed
    ALLOWED = (TypeError, ValueError, OverflowError, OSError, _core.SafetensorError)
    report = {"failures": [], "expect": [], "cases": 0, "no_baseline": [], "messages": [], "carried": []}

    def started(desc):
        # Written before each call: if the process dies, the parent names the call.
        sys.stdout.write("CASE " + desc + "\n")
        sys.stdout.flush()

    def call(desc, fn, *args, panic_ok=False, **kwargs):
        started(desc)
        report["cases"] += 1
        try:
            fn(*args, **kwargs)
            return None
        except BaseException as e:  # noqa: B036 - a PanicException is what is looked for
            bug = isinstance(e, INTERNAL) and not panic_ok
            if not isinstance(e, ALLOWED) or bug:
                report["failures"].append(f"{desc}: {type(e).__module__}.{type(e).__name__}: {e}")
            report["messages"].append(str(e))
            # Everything an exception carries, for the secrets check.
            report["carried"].append(repr((e.args, vars(e) if hasattr(e, "__dict__") else None,
                                           e.__context__, e.__cause__)))
            return e

    def expect(desc, exc, fn, *args, **kwargs):
        e = call(desc, fn, *args, **kwargs)
        if not isinstance(e, exc):
            want = "/".join(x.__name__ for x in exc) if isinstance(exc, tuple) else exc.__name__
            report["expect"].append(f"{desc}: expected {want}, got {type(e).__name__}: {e}")

    # Fixtures: a plain and an encrypted file, as bytes and on disk (cwd is a
    # scratch directory: hostile paths such as "w" land there).
    key = ct.generate_key("oct")
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "e": np.zeros(0, np.uint8)}
    plain = cn.save(tensors, metadata={"m": "1"})
    enc = cn.save(tensors, encrypt_for=key, segment_size=4096)
    with open("plain.safetensors", "wb") as f:
        f.write(plain)
    with open("enc.safetensors", "wb") as f:
        f.write(enc)
    keys = json.dumps([key])
    ring = _core.KeyRing(keys)
    # Key arguments are parsed rings (issue 12): a signing ring, and rings the
    # binding must refuse for sign_with. Their secrets must never be shown.
    sk = ct.generate_key("Ed25519")
    signer = _core.KeyRing(json.dumps(sk))
    two_signers = _core.KeyRing(json.dumps([sk, ct.generate_key("P-256")]))
    public_signer = _core.KeyRing(json.dumps(ct.public_key(sk)))
    empty = _core.KeyRing.join([])
    SECRETS = (key["k"], sk["d"])
    new_ring = lambda: _core.KeyRing(json.dumps([ct.generate_key("oct")]))  # noqa: E731

    class Wrapper:  # a key service's key wrapper: a stanza of its kid for any data key
        kid = "service-kek"

        def wrap(self, data_key):
            return {"kid": self.kid, "alg": "vault-transit", "ciphertext": "vault:v1:QUJD"}

    class Unnamed(Wrapper):
        kid = None
    from pathlib import Path

    LEGACY = Path(os.environ["CRYPTOTENSORS_TEST_LEGACY"])  # the test tree's, whatever copy is installed

    def handle():
        return _core.Handle.from_bytes(enc, keys=ring)

    def ro_array():
        a = np.zeros(24, np.uint8)
        a.flags.writeable = False
        return a

    def hostile():
        return [
            None, -1, 0, 0x10, 4096, 2**31, 2**63 - 1, 2**64, 1.5, "w", "", b"w", object(), [], {},
            [("i", 0)], [("s", 0, 2**63, 1)], [("x",)], ("w", "F32", [1], 0x10, 4),
            bytearray(3), memoryview(b"read-only"), ro_array(), np.zeros(48, np.uint8)[::2],
            np.zeros(1, np.uint8), np.zeros(1 << 16, np.uint8),
        ]

    legacy_ring = lambda: _core.LegacyKeyRing((LEGACY / "keys.json").read_text())  # noqa: E731
    legacy_public = lambda: _core.LegacyKeyRing((LEGACY / "keys.public.json").read_text())  # noqa: E731
    out24 = lambda: np.zeros(24, np.uint8)  # noqa: E731
    row0 = lambda: handle().select("w", (slice(0, 1),))[0]  # noqa: E731  (a SliceIndex: row 0 of w)
    rec = lambda data: [("w", "F32", [2, 3], data)]  # noqa: E731
    # A valid call of each callable: (positional args, keyword args).
    BASELINE = {
        "serialize": lambda: ((rec(np.zeros(24, np.uint8)), {"m": "1"}, None),
                              {"recipients": ring, "segment_size": 4096, "sign_with": signer, "threads": 1}),
        "rewrap": lambda: (("enc.safetensors", "out.safetensors"),
                           {"keys": ring, "add": new_ring(), "add_wrappers": [Wrapper()], "sign_with": signer}),
        "rekey": lambda: (("enc.safetensors", "out.safetensors"),
                          {"keys": ring, "recipients": ring, "add": new_ring(), "add_wrappers": [Wrapper()],
                           "sign_with": signer, "threads": 1}),
        "rewrap_plan": lambda: (("enc.safetensors",), {"add": new_ring(), "add_wrappers": [Wrapper()], "sign_with": signer}),
        "rekey_plan": lambda: (("enc.safetensors",), {"keys": ring, "recipients": ring, "add": new_ring(),
                                                      "add_wrappers": [Wrapper()], "sign_with": signer}),
        "transcode": lambda: ((handle(), "transcoded.safetensors"),
                              {"recipients": ring, "sign_with": signer, "threads": 1, "progress": abs}),
        "inspect": lambda: (("enc.safetensors",), {}),
        "protection": lambda: (("enc.safetensors",), {}),
        "read_legacy": lambda: ((LEGACY / "v2_partial.safetensors", legacy_ring()), {"trusted": legacy_public()}),
        "migrate": lambda: ((LEGACY / "v2_partial.safetensors", "migrated.safetensors", legacy_ring()),
                            {"trusted": legacy_public(), "recipients": ring, "sign_with": signer, "threads": 1}),
        "generate_key": lambda: (("oct",), {}),
        "public_key": lambda: ((json.dumps(ct.generate_key("X25519")),), {}),
        "key_id": lambda: ((json.dumps(key),), {}),
        "_check_panic_boundary": lambda: ((), {"threads": 2}),
        "Handle.open": lambda: (("enc.safetensors", "pread"), {"keys": ring, "threads": 1}),
        "Handle.from_bytes": lambda: ((enc,), {"keys": ring, "threads": 1}),
        "KeyRing.join": lambda: (([ring, ring],), {}),
        "KeyRing.kids": lambda: ((), {}),
        "Inspection.check": lambda: ((), {}),
        "Inspection.to_dict": lambda: ((), {}),
        "Inspection.keys": lambda: ((), {}),
        "Inspection.values": lambda: ((), {}),
        "Inspection.items": lambda: ((), {}),
        "Inspection.get": lambda: (("tensors",), {}),
        "Inspection.__getitem__": lambda: (("tensors",), {}),
        "Inspection.__contains__": lambda: (("tensors",), {}),
        "Handle.share": lambda: ((), {}),
        "Handle.close": lambda: ((), {}),
        "Handle.offset_keys": lambda: ((), {}),
        "Handle.metadata": lambda: ((), {}),
        "Handle.describe": lambda: ((), {}),
        "Handle.info": lambda: (("w",), {}),
        "Handle.read_into": lambda: (("w", out24()), {}),
        "Handle.read_range_into": lambda: (("w", 4, np.zeros(8, np.uint8)), {}),
        "Handle.select": lambda: (("w", (slice(0, 1),)), {}),
        "Handle.read_slice_into": lambda: (("w", row0(), np.zeros(12, np.uint8)), {}),
        "load_target": lambda: (("pt", "cuda:1", "pread"), {}),
        "check_device": lambda: (("np", "cpu"), {}),
        "spec_dtype": lambda: (("float32",), {}),
    }

    def sweep(name, fn, baseline, panic_ok):
        call(f"{name}()", fn, panic_ok=panic_ok)
        if baseline is None:
            report["no_baseline"].append(name)
            for n in range(1, 4):  # still swept: every mix of a few hostile values
                for args in itertools.product([None, 0x10, -1, "w", np.zeros(4, np.uint8)], repeat=n):
                    call(f"{name}{tuple(map(type, args))}", fn, *args, panic_ok=panic_ok)
            return
        args, kwargs = baseline()
        e = call(f"{name} baseline", fn, *args, panic_ok=panic_ok, **kwargs)
        if e is not None and not panic_ok:
            report["expect"].append(f"{name}: the baseline call failed: {type(e).__name__}: {e}")
        for i in range(len(args)):
            for h in hostile():
                a = list(baseline()[0])
                a[i] = h
                call(f"{name} arg {i} = {type(h).__name__} {h!r:.40}", fn, *a, panic_ok=panic_ok, **kwargs)
        for k in kwargs:
            for h in hostile():
                kw = dict(baseline()[1], **{k: h})
                call(f"{name} {k}= {type(h).__name__} {h!r:.40}", fn, *baseline()[0], panic_ok=panic_ok, **kw)
        for extra in (0x10, 4096, -1, None):  # the old (..., ptr, len) calls
            call(f"{name} + extra {extra!r}", fn, *baseline()[0], extra, 4096, panic_ok=panic_ok, **kwargs)

    is_exc = lambda o: isinstance(o, type) and issubclass(o, BaseException)  # noqa: E731
    for name in sorted(dir(_core)):
        obj = getattr(_core, name)
        if name.startswith("__") or not callable(obj) or is_exc(obj):
            continue
        if isinstance(obj, type):  # a class: its constructor, static and bound methods
            call(f"{name}()", obj)
            if name in ("KeyRing", "LegacyKeyRing"):  # hold no file: no closed state
                for h in hostile():
                    call(f"{name}({type(h).__name__} {h!r:.40})", obj, h)
                if name == "LegacyKeyRing":
                    continue
                for m in ("join", "kids"):
                    attr = getattr(obj, m) if m == "join" else (lambda *a, **k: ring.kids(*a, **k))
                    sweep(f"KeyRing.{m}", attr, BASELINE.get(f"KeyRing.{m}"), False)
                continue
            if name == "Inspection":  # made by inspect(), holds no file: no closed state
                insp = _core.inspect("enc.safetensors")

                def item(*a, **k):
                    try:
                        return insp.__getitem__(*a, **k)
                    except KeyError:  # a mapping's answer for a key it lacks
                        return None

                for m in ("check", "to_dict", "keys", "values", "items", "get", "__getitem__", "__contains__"):
                    fn = item if m == "__getitem__" else (lambda *a, _m=m, **k: getattr(insp, _m)(*a, **k))
                    sweep(f"Inspection.{m}", fn, BASELINE.get(f"Inspection.{m}"), False)
                continue
            for m in sorted(dir(obj)):
                if m.startswith("__"):
                    continue
                key_ = f"{name}.{m}"
                base = BASELINE.get(key_)
                attr = getattr(obj, m)
                if isinstance(obj.__dict__.get(m), staticmethod) or m in ("open", "from_bytes"):
                    sweep(key_, attr, base, False)
                    continue
                if not callable(getattr(handle(), m)):
                    continue  # a property (closed)
                sweep(key_, lambda *a, _m=m, **k: getattr(handle(), _m)(*a, **k), base, False)
                closed = handle()
                closed.close()
                if base is not None and m not in ("close",):
                    args, kwargs = base()
                    expect(f"{key_} on a closed handle", _core.SafetensorError, getattr(closed, m), *args, **kwargs)
        else:
            sweep(name, obj, BASELINE.get(name), name == "_check_panic_boundary")

    # The calls that crashed before, and what each must raise now.
    h = handle()
    ro = ro_array()
    for desc, exc, fn, args, *kwargs in [
        ("read_into(w, 0x10, 24)", TypeError, h.read_into, ("w", 0x10, 24)),  # its size: SIGSEGV before
        ("read_into(w, 0x10, 4096)", TypeError, h.read_into, ("w", 0x10, 4096)),
        ("read_into(w, 0x10)", TypeError, h.read_into, ("w", 0x10)),
        ("read_into(w, None)", TypeError, h.read_into, ("w", None)),
        ("read_into(w, too small)", _core.SafetensorError, h.read_into, ("w", np.zeros(23, np.uint8))),
        ("read_into(w, too large)", _core.SafetensorError, h.read_into, ("w", np.zeros(25, np.uint8))),
        ("read_into(w, read-only array)", ValueError, h.read_into, ("w", ro)),
        ("read_into(w, bytes)", ValueError, h.read_into, ("w", bytes(24))),
        ("read_into(w, non-contiguous)", ValueError, h.read_into, ("w", np.zeros(48, np.uint8)[::2])),
        ("read_range_into(w, 0, 0x10, 8)", TypeError, h.read_range_into, ("w", 0, 0x10, 8)),
        ("read_range_into(w, -1, buf)", OverflowError, h.read_range_into, ("w", -1, np.zeros(4, np.uint8))),
        ("read_range_into(w, 2**63, buf)", _core.SafetensorError, h.read_range_into, ("w", 2**63, np.zeros(4, np.uint8))),
        ("read_range_into(w, 20, 8 bytes)", _core.SafetensorError, h.read_range_into, ("w", 20, np.zeros(8, np.uint8))),
        ("read_slice_into(w, idx, 0x10, 12)", TypeError, h.read_slice_into, ("w", row0(), 0x10, 12)),
        ("read_slice_into(w, idx, wrong size)", _core.SafetensorError, h.read_slice_into, ("w", row0(), out24())),
        ("read_slice_into(w, tagged tuples)", TypeError, h.read_slice_into, ("w", [("s", 0, 1, 1)], np.zeros(12, np.uint8))),
        ("select(w, huge step)", OverflowError, h.select, ("w", slice(0, 1, 2**64))),
        ("select(w, huge int, torch)", OverflowError, h.select, ("w", 2**64), {"torch": True}),
        ("serialize((ptr, len) record)", (TypeError, ValueError), _core.serialize, ([("w", "F32", [1], 0x10, 4)],)),
        ("serialize(int data)", TypeError, _core.serialize, ([("w", "F32", [1], 0x10)],)),
        ("serialize(None data)", TypeError, _core.serialize, ([("w", "F32", [1], None)],)),
        ("serialize(non-contiguous data)", ValueError, _core.serialize, (rec(np.zeros(48, np.uint8)[::2]),)),
        ("serialize(short data)", _core.SafetensorError, _core.serialize, (rec(np.zeros(4, np.uint8)),)),
        ("serialize(huge shape)", _core.SafetensorError, _core.serialize, ([("w", "F32", [2**62, 2**62], b"")],)),
        ("serialize(threads=2**40)", ValueError, _core.serialize, (rec(out24()),), {"threads": 2**40}),
        ("Handle.from_bytes(threads=10**6)", ValueError, _core.Handle.from_bytes, (enc,), {"threads": 10**6}),
        ("Handle.from_bytes(keys=JSON text)", TypeError, _core.Handle.from_bytes, (enc,), {"keys": keys}),
        # Every key argument is a parsed ring, never text (issue 12); sign_with holds one private signing key.
        ("serialize(recipients=JSON text)", TypeError, _core.serialize, (rec(out24()),), {"recipients": keys}),
        ("serialize(sign_with=JSON text)", TypeError, _core.serialize, (rec(out24()),), {"sign_with": json.dumps(sk)}),
        ("serialize(sign_with=dict)", TypeError, _core.serialize, (rec(out24()),), {"sign_with": sk}),
        ("serialize(sign_with=two keys)", _core.InvalidKeyError, _core.serialize, (rec(out24()),), {"sign_with": two_signers}),
        ("serialize(sign_with=empty ring)", _core.InvalidKeyError, _core.serialize, (rec(out24()),), {"sign_with": empty}),
        ("serialize(sign_with=public key)", _core.InvalidKeyError, _core.serialize, (rec(out24()),), {"sign_with": public_signer}),
        ("serialize(sign_with=oct key)", _core.InvalidKeyError, _core.serialize, (rec(out24()),), {"sign_with": ring}),
        ("serialize(recipients=empty ring)", _core.InvalidArgumentError, _core.serialize, (rec(out24()),), {"recipients": empty}),
        ("transcode(recipients=JSON text)", TypeError, _core.transcode, (handle(), "t.safetensors"), {"recipients": keys}),
        ("transcode(sign_with=two keys)", _core.InvalidKeyError, _core.transcode, (handle(), "t.safetensors"),
         {"sign_with": two_signers}),
        ("rewrap(add=JSON text)", TypeError, _core.rewrap, ("enc.safetensors", "o.safetensors"), {"keys": ring, "add": keys}),
        ("rewrap(sign_with=JSON text)", TypeError, _core.rewrap, ("enc.safetensors", "o.safetensors"),
         {"keys": ring, "sign_with": json.dumps(sk)}),
        ("rewrap(sign_with=two keys)", _core.InvalidKeyError, _core.rewrap, ("enc.safetensors", "o.safetensors"),
         {"keys": ring, "sign_with": two_signers}),
        ("rewrap_plan(add=JSON text)", TypeError, _core.rewrap_plan, ("enc.safetensors",), {"add": keys}),
        ("rewrap(add_wrappers=a wrapper of no kid)", _core.InvalidArgumentError, _core.rewrap,
         ("enc.safetensors", "o.safetensors"), {"keys": ring, "add_wrappers": [Unnamed()]}),
        ("rekey(add_wrappers=a wrapper of no kid)", _core.InvalidArgumentError, _core.rekey,
         ("enc.safetensors", "o.safetensors"), {"keys": ring, "add_wrappers": [Unnamed()]}),
        ("rewrap_plan(sign_with=empty ring)", _core.InvalidKeyError, _core.rewrap_plan, ("enc.safetensors",), {"sign_with": empty}),
        ("rekey(recipients=JSON text)", TypeError, _core.rekey, ("enc.safetensors", "o.safetensors"),
         {"keys": ring, "recipients": keys}),
        ("rekey(add=JSON text)", TypeError, _core.rekey, ("enc.safetensors", "o.safetensors"), {"keys": ring, "add": keys}),
        ("rekey(sign_with=public key)", _core.InvalidKeyError, _core.rekey, ("enc.safetensors", "o.safetensors"),
         {"keys": ring, "sign_with": public_signer}),
        ("migrate(keys=JSON text)", TypeError, _core.migrate,
         (LEGACY / "v2_partial.safetensors", "m.safetensors", (LEGACY / "keys.json").read_text()), {"recipients": ring}),
        ("migrate(keys=KeyRing)", TypeError, _core.migrate,
         (LEGACY / "v2_partial.safetensors", "m.safetensors", ring), {"recipients": ring}),
        ("migrate(recipients=JSON text)", TypeError, _core.migrate,
         (LEGACY / "v2_partial.safetensors", "m.safetensors", legacy_ring()), {"recipients": keys}),
        ("read_legacy(keys=JSON text)", TypeError, _core.read_legacy,
         (LEGACY / "v2_partial.safetensors", (LEGACY / "keys.json").read_text())),
        # Providers are called back (GIL taken again) when no key opens the file.
        ("Handle.from_bytes(providers=int)", TypeError, _core.Handle.from_bytes, (enc,), {"providers": 5}),
        ("Handle.from_bytes(providers: not a list)", TypeError, _core.Handle.from_bytes, (enc,),
         {"providers": lambda: 5}),
        ("Handle.from_bytes(provider: 3 bytes)", _core.InvalidKeyError, _core.Handle.from_bytes, (enc,),
         {"providers": lambda: [type("P", (), {"unwrap": lambda self, r: b"abc"})()]}),
        ("Handle.from_bytes(provider: a str)", TypeError, _core.Handle.from_bytes, (enc,),
         {"providers": lambda: [type("P", (), {"unwrap": lambda self, r: "k" * 32})()]}),
        ("serialize(wrapper: not a stanza)", (TypeError, ValueError), _core.serialize, (rec(out24()),),
         {"recipients": "[]", "wrappers": [type("W", (), {"wrap": lambda self, k: 5})()]}),
        ("public serialize(TensorSpec(data_ptr=0, data_len=4))", ValueError, ct.serialize,
         ({"a": ct.TensorSpec(dtype="float32", shape=[1], data_ptr=0, data_len=4)},)),
    ]:
        expect(desc, exc, fn, *args, **(kwargs[0] if kwargs else {}))

    # Inputs may be read-only.
    report["ro_input_ok"] = call("serialize(read-only input)", _core.serialize, rec(ro), None, None) is None

    # The GIL is released during a read: another thread resizing the output
    # meets the held export (BufferError) instead of freeing it underneath.
    import threading
    big = cn.save({"w": np.zeros(1 << 24, np.uint8)}, encrypt_for=key)
    hb = _core.Handle.from_bytes(big, keys=ring, threads=2)
    refused, done = [0], threading.Event()

    def resize(buf):
        while not done.is_set():
            try:
                buf.append(0)
                buf.pop()
            except BufferError:
                refused[0] += 1

    for _ in range(5):
        buf = bytearray(1 << 24)
        done.clear()
        t = threading.Thread(target=resize, args=(buf,))
        t.start()
        call("read_into(bytearray being resized)", hb.read_into, "w", buf)
        done.set()
        t.join()
    report["resize_refused"] = refused[0]

    # A panic (here on a rayon pool thread, GIL released) is InternalError,
    # shows no payload, and later calls on the same pool still work.
    e = call("_check_panic_boundary(threads=2)", _core._check_panic_boundary, panic_ok=True, threads=2)
    report["panic"] = [type(e).__name__, str(e)] if e is not None else None
    after = np.zeros(24, np.uint8)
    _core.Handle.from_bytes(enc, keys=ring, threads=2).read_into("w", after)
    report["after_panic_ok"] = after.view(np.float32).tolist() == list(range(6))
    report["payload_in_messages"] = any(PAYLOAD in m for m in report["messages"])
    report["secret_carried"] = [c for c in report["carried"] if any(s in c for s in SECRETS)]
    sys.stdout.write("REPORT " + json.dumps(report) + "\n")
    '''
)


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("boundary")
    env = dict(os.environ)
    env.pop("CRYPTOTENSORS_PANIC_DETAILS", None)
    env.update(CRYPTOTENSORS_OPEN_CACHE="0", PYTHONFAULTHANDLER="0",
               CRYPTOTENSORS_TEST_LEGACY=str(Path(__file__).parent / "vectors" / "legacy"))
    p = subprocess.run([sys.executable, "-c", _CHILD], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    lines = p.stdout.splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("REPORT "):
        last = next((line for line in reversed(lines) if line.startswith("CASE ")), "CASE (none)")
        how = f"signal {signal.Signals(-p.returncode).name}" if p.returncode < 0 else f"exit {p.returncode}"
        pytest.fail(f"the child process died ({how}) during {last[5:]}\nstderr tail:\n{p.stderr[-2000:]}")
    return json.loads(lines[-1][len("REPORT "):]), p.stderr


def test_no_call_crashes_or_leaks_a_panic(child):
    report, _ = child
    assert report["cases"] > 500
    assert report["failures"] == []


def test_hostile_buffers_and_sizes_raise_the_right_exception(child):
    report, _ = child
    assert report["expect"] == []
    assert report["ro_input_ok"]
    assert report["resize_refused"] > 0


def test_no_exception_carries_a_secret(child):
    # The key arguments refused above held private keys (as text, or in a
    # ring): no message, argument, attribute or chained exception shows them.
    report, _ = child
    assert report["carried"]
    assert report["secret_carried"] == []


def test_every_callable_has_a_valid_baseline_call(child):
    # Swept anyway; a baseline lets the sweep reach past argument parsing.
    report, _ = child
    assert report["no_baseline"] == [], "add these to BASELINE in tests/test_boundary.py"


def test_panic_becomes_internal_error_without_its_payload(child):
    report, stderr = child
    assert report["panic"] is not None and report["panic"][0] == "InternalError"
    assert "_check_panic_boundary" in report["panic"][1]
    assert not report["payload_in_messages"]
    assert "this payload must never be shown" not in stderr
    assert "internal error (Rust panic) at " in stderr
    assert report["after_panic_ok"]


def test_savers_and_loaders_pass_every_kind_of_tensor_as_a_buffer():
    # The savers hand the core each tensor's own memory as a buffer, so what
    # .numpy() refuses (requires_grad, lazy conjugate/negative views, dtypes
    # numpy lacks, 0-d) must still be saved by value, and load back equal.
    torch = pytest.importorskip("torch")
    import numpy as np

    import cryptotensors as ct
    import cryptotensors.numpy as cn
    import cryptotensors.torch as cpt

    c = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    tensors = {
        "bf16": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "grad": torch.nn.Parameter(torch.ones(2)),
        "conj": c.conj(),
        "neg": torch._neg_view(torch.arange(3.0)),
        "f8": torch.ones(3).to(torch.float8_e4m3fn),
    }
    key = ct.generate_key()
    for kwargs in ({}, {"encrypt_for": key}):
        got = cpt.load(cpt.save(tensors, **kwargs), keys=key)
        for name, t in tensors.items():
            want = t.detach().resolve_conj().resolve_neg()
            assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
    assert torch.equal(cpt.load(cpt.save({"conj": c.conj()}))["conj"], torch.tensor([1 - 2j, 3 + 4j]))
    arrays = {"b": np.array([True, False]), "z": np.array(7, np.int16), "c": np.ones(2, np.complex64)}
    for name, arr in cn.load(cn.save(arrays, encrypt_for=key), keys=key).items():
        np.testing.assert_array_equal(arr, arrays[name])
