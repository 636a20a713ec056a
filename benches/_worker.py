"""One benchmark measurement, run in a fresh process by bench.py.

Reads a JSON request on stdin and prints one ``RESULT {json}`` line. The same
file runs under the test venv (safetensors, ours) and under the reference venv
(cryptotensors 0.2.3), so it imports nothing but numpy (and torch lazily) at
module level. Every API difference between the implementations lives in the
``Backend`` adapters below; the measurement functions are shared.

Request fields: impl ("safetensors" | "ours" | "ref"), op ("probe" | "save" |
"load_file" | "safe_open" | "slice"), framework ("numpy" | "torch"), enc
(bool), path, size_gib, dtype ("bf16" | "f32"), keys (from the probe), touch
("page" | "full", loads), reps (slice only), backend (optional, ours' loads:
"mmap" | "pread").

Peak memory: after setup (imports, building the tensors) the worker resets the
kernel's high-water mark (write "5" to /proc/self/clear_refs), so ``rss_peak``
is the peak of the measured operation alone and ``rss_base`` what was
resident before it.
"""

from __future__ import annotations

import base64
import gc
import importlib
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_layout

PAGE = 4096
FW_NAME = {"numpy": "numpy", "torch": "pt"}  # safe_open's framework= value


class Unsupported(Exception):
    """The implementation lacks what this measurement needs."""


# --------------------------------------------------------------------------
# Adapters: the only place that knows each implementation's API.
# --------------------------------------------------------------------------


class Backend:
    package = "safetensors"

    def __init__(self, keys=None):
        self.keys = keys
        self.load_opts: dict = {}  # e.g. {"backend": "pread"} (ours only)
        self.pkg = importlib.import_module(self.package)

    def version(self) -> str:
        return str(getattr(self.pkg, "__version__", "?"))

    def fw(self, framework: str):
        return importlib.import_module(f"{self.package}.{framework}")

    def make_keys(self):
        raise Unsupported(f"{self.package}: no encryption")

    def prepare_load(self, enc: bool) -> None:
        """Untimed setup before a load (e.g. registering keys)."""
        if enc:
            raise Unsupported(f"{self.package}: no encryption")

    def save_file(self, framework, tensors, path, enc):
        if enc:
            raise Unsupported(f"{self.package}: no encryption")
        self.fw(framework).save_file(tensors, path)

    def load_file(self, framework, path, enc):
        return self.fw(framework).load_file(path)

    def safe_open(self, framework, path, enc):
        return self.pkg.safe_open(path, framework=FW_NAME[framework])


class Ours(Backend):
    """This repository's cryptotensors: generate_key / encrypt_for= / keys=."""

    package = "cryptotensors"

    def __init__(self, keys=None):
        super().__init__(keys)
        if not hasattr(self.pkg, "safe_open"):
            where = getattr(self.pkg, "__file__", None) or list(getattr(self.pkg, "__path__", []))
            raise Unsupported(f"cryptotensors at {where} has no safe_open")

    def make_keys(self):
        if not hasattr(self.pkg, "generate_key"):
            raise Unsupported("cryptotensors has no generate_key")
        return self.pkg.generate_key("oct")

    def prepare_load(self, enc):
        pass

    def save_file(self, framework, tensors, path, enc):
        kw = {"encrypt_for": [self.keys]} if enc else {}
        self.fw(framework).save_file(tensors, path, **kw)

    def load_file(self, framework, path, enc):
        kw = {"keys": self.keys} if enc else {}
        return self.fw(framework).load_file(path, **kw, **self.load_opts)

    def safe_open(self, framework, path, enc):
        kw = {"keys": self.keys} if enc else {}
        kw.update(self.load_opts)
        return self.pkg.safe_open(path, framework=FW_NAME[framework], **kw)


class Reference(Backend):
    """cryptotensors 0.2.3 from PyPI (its own venv).

    Encrypting needs a config dict with a symmetric JWK (standard base64 "k")
    and an Ed25519 signing JWK ("okp": "d" private, "x" public); every
    encrypted file is signed. safe_open takes config=; load_file takes no key
    argument and looks keys up in a process-global registry.
    """

    package = "cryptotensors"

    def make_keys(self):
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (
            Ed25519PrivateKey,
        )

        def b64(b: bytes) -> str:
            return base64.b64encode(b).decode()

        sk = Ed25519PrivateKey.generate()
        d = sk.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
        x = sk.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        enc = {"kty": "oct", "alg": "aes256gcm", "kid": "bench-enc"}
        sign = {"kty": "okp", "alg": "ed25519", "kid": "bench-sign"}
        return {
            "enc": dict(enc, k=b64(os.urandom(32))),
            "sign": dict(sign, d=b64(d), x=b64(x)),
        }

    def _load_config(self):
        verify = {k: v for k, v in self.keys["sign"].items() if k != "d"}
        return {"enc_key": self.keys["enc"], "sign_key": verify}

    def prepare_load(self, enc):
        if enc:
            self.pkg.register_direct_key_provider(keys=[self.keys["enc"], self._load_config()["sign_key"]])

    def save_file(self, framework, tensors, path, enc):
        kw = {}
        if enc:
            kw["config"] = {"enc_key": self.keys["enc"], "sign_key": self.keys["sign"]}
        self.fw(framework).save_file(tensors, path, **kw)

    def load_file(self, framework, path, enc):
        return self.fw(framework).load_file(path)  # keys from prepare_load

    def safe_open(self, framework, path, enc):
        kw = {"config": self._load_config()} if enc else {}
        return self.pkg.safe_open(path, framework=FW_NAME[framework], **kw)


BACKENDS = {"safetensors": Backend, "ours": Ours, "ref": Reference}


# --------------------------------------------------------------------------
# Shared measurement code.
# --------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu() -> float:
    """CPU seconds used by this process so far, all threads (user + system).
    getrusage has microsecond resolution (os.times: clock ticks, 10 ms)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _mem(reset_ok: bool) -> dict:
    peak = _status_kib("VmHWM")
    if peak is None or not reset_ok:
        import resource  # ru_maxrss: process lifetime peak, KiB on Linux

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_peak": peak * 1024, "hwm_reset": reset_ok}


def _as_bytes(t) -> np.ndarray:
    """Flat uint8 numpy view of a numpy array or CPU torch tensor (no copy)."""
    if isinstance(t, np.ndarray):
        return t.reshape(-1).view(np.uint8)
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


TOUCH = "page"  # set from the request: "page" or "full"


def _touch(tensors: dict) -> int:
    """Make lazily mapped data real: read one byte per 4 KiB page ("page",
    the default: faults every page in at little cost) or every byte ("full":
    adds a memory-bandwidth-bound pass to every implementation alike)."""
    acc = 0
    for t in tensors.values():
        b = _as_bytes(t)
        if TOUCH == "full":
            n = b.size // 8 * 8
            acc ^= int(np.bitwise_xor.reduce(b[:n].view(np.uint64), initial=0))
            acc += int(b[n:].sum())
        else:
            acc += int(b[::PAGE].sum())
    return acc


def _make(framework, cfg, dtype, names=None):
    if framework == "torch":
        return llama_layout.make_torch(cfg, dtype, names=names)
    return llama_layout.make_numpy(cfg, dtype, names=names)


def _verify(tensors: dict, cfg, dtype) -> None:
    specs = llama_layout.tensor_specs(cfg)
    names = {specs[1][0], specs[3][0], specs[-3][0], specs[-2][0]}
    if set(tensors) != {n for n, _ in specs}:
        raise AssertionError("loaded tensor names differ from the saved ones")
    expect = llama_layout.make_numpy(cfg, dtype, names=names)
    for n in names:
        got = _as_bytes(tensors[n])
        if not np.array_equal(got, _as_bytes(expect[n])):
            raise AssertionError(f"loaded {n} differs from what was saved")


def _get_all(f) -> dict:
    """The safe_open + get_tensor loop."""
    names = f.keys()
    return {k: f.get_tensor(k) for k in names}


def op_probe(be, req):
    """Tiny round trip (plain, and encrypted when possible); returns keys."""
    out = {"version": be.version()}
    cfg = llama_layout.LlamaConfig(64, 32, 64, 4, 2, layers=1)
    path = req["path"]
    try:
        keys = be.make_keys()
    except Unsupported as e:
        keys = None
        out["enc_error"] = str(e)
    except Exception as e:  # noqa: BLE001 - report whatever the API raised
        keys = None
        out["enc_error"] = f"key generation failed: {type(e).__name__}: {e}"
    be.keys = keys
    out["keys"] = keys
    for enc in (False, True):
        if enc and keys is None:
            continue
        try:
            for framework in req.get("frameworks", ["numpy", "torch"]):
                t = _make(framework, cfg, "f32")
                be.save_file(framework, t, path, enc)
                be.prepare_load(enc)
                _verify(be.load_file(framework, path, enc), cfg, "f32")
                with be.safe_open(framework, path, enc) as f:
                    _verify(_get_all(f), cfg, "f32")
            out["enc_ok" if enc else "plain_ok"] = True
        except Exception as e:  # noqa: BLE001
            out["enc_error" if enc else "plain_error"] = f"{type(e).__name__}: {e}"
        finally:
            if os.path.exists(path):
                os.unlink(path)
    return out


def op_save(be, req, cfg):
    path = req["path"]
    if os.path.exists(path):
        os.unlink(path)
    tensors = _make(req["framework"], cfg, req["dtype"])
    reset = _reset_peak()
    base = _status_kib("VmRSS")
    c0, t0 = _cpu(), time.perf_counter()
    be.save_file(req["framework"], tensors, path, req["enc"])
    t1, c1 = time.perf_counter(), _cpu()
    out = {"seconds": t1 - t0, "cpu_seconds": c1 - c0, **_mem(reset)}
    out["rss_base"] = (base or 0) * 1024
    out["file_bytes"] = os.path.getsize(path)
    return out


def _load(be, req, cfg, fn):
    be.prepare_load(req["enc"])
    reset = _reset_peak()
    base = _status_kib("VmRSS")
    c0, t0 = _cpu(), time.perf_counter()
    tensors = fn()
    t1 = time.perf_counter()
    _touch(tensors)
    t2, c2 = time.perf_counter(), _cpu()
    out = {
        "seconds": t2 - t0,
        "call_seconds": t1 - t0,
        "cpu_seconds": c2 - c0,
        **_mem(reset),
    }
    out["rss_base"] = (base or 0) * 1024
    _verify(tensors, cfg, req["dtype"])
    return out


def op_load_file(be, req, cfg):
    fw, path, enc = req["framework"], req["path"], req["enc"]
    return _load(be, req, cfg, lambda: be.load_file(fw, path, enc))


def op_safe_open(be, req, cfg):
    fw, path, enc = req["framework"], req["path"], req["enc"]

    def run():
        with be.safe_open(fw, path, enc) as f:
            return _get_all(f)

    return _load(be, req, cfg, run)


def op_slice(be, req, cfg):
    """First 1/8 of the rows of the largest tensor vs the whole tensor.

    Each read gets a fresh safe_open handle (an implementation may cache
    decrypted buffers per handle); opening is timed separately.
    """
    fw, path, enc = req["framework"], req["path"], req["enc"]
    name = llama_layout.largest_tensor(cfg)
    rows = dict(llama_layout.tensor_specs(cfg))[name][0] // 8
    be.prepare_load(enc)

    def timed(read):
        t0 = time.perf_counter()
        with be.safe_open(fw, path, enc) as f:
            t1 = time.perf_counter()
            out = read(f)
            _touch({"t": out})
            t2 = time.perf_counter()
        return out, t1 - t0, t2 - t1

    opens, part_s, full_s = [], [], []
    for _ in range(int(req.get("reps", 5))):
        part, o, p = timed(lambda f: f.get_slice(name)[:rows])
        full, o2, s = timed(lambda f: f.get_tensor(name))
        opens += [o, o2]
        part_s.append(p)
        full_s.append(s)
    if not np.array_equal(_as_bytes(part), _as_bytes(full[:rows])):
        raise AssertionError("slice differs from the full tensor's rows")
    nbytes = _as_bytes(full).size
    return {
        "tensor": name,
        "open_seconds": statistics.median(opens),
        "slice_seconds": statistics.median(part_s),
        "full_seconds": statistics.median(full_s),
        "slice_bytes": _as_bytes(part).size,
        "full_bytes": nbytes,
    }


OPS = {
    "save": op_save,
    "load_file": op_load_file,
    "safe_open": op_safe_open,
    "slice": op_slice,
}


def main() -> None:
    global TOUCH
    req = json.loads(sys.stdin.read())
    TOUCH = req.get("touch", TOUCH)
    try:
        be = BACKENDS[req["impl"]](req.get("keys"))
    except (ImportError, Unsupported) as e:
        res = {"unavailable": f"{type(e).__name__}: {e}"}
    else:
        if req.get("backend"):
            if req["impl"] != "ours":
                raise SystemExit(f"backend= is only wired for ours, not {req['impl']}")
            be.load_opts["backend"] = req["backend"]
        if req["op"] == "probe":
            res = op_probe(be, req)
        else:
            if req["framework"] == "torch":
                import torch  # noqa: F401 - keep the import out of timed regions
            cfg = llama_layout.choose_config(req["size_gib"], req["dtype"])
            res = OPS[req["op"]](be, req, cfg)
    sys.stdout.write("RESULT " + json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
