"""One-off probe behind results/probe_sys_time.txt: wall, user and system time
and minor faults of single numpy encrypted loads (num_threads 1, 2, default)
and of single torch plain saves (safetensors vs ours), all in one process."""

import gc
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import llama_layout  # noqa: E402
import safetensors.torch  # noqa: E402

import cryptotensors  # noqa: E402
import cryptotensors.numpy  # noqa: E402
import cryptotensors.torch  # noqa: E402


def ru():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt)


def run(label, fn):
    gc.collect()
    os.sync()
    a = ru()
    x = fn()
    b = ru()
    del x
    print(
        f"{label:<34} wall {b[0] - a[0]:.3f} user {b[1] - a[1]:.3f} sys {b[2] - a[2]:.3f} minflt {b[3] - a[3]}",
        flush=True,
    )


def main():
    key = cryptotensors.generate_key("oct")
    d = tempfile.mkdtemp()
    p = os.path.join(d, "e")
    cryptotensors.numpy.save_file(
        llama_layout.make_numpy(llama_layout.choose_config(1, "f32"), "f32"), p, encrypt_for=[key]
    )

    def load(n):
        o = cryptotensors.numpy.load_file(p, keys=key, num_threads=n)
        for v in o.values():
            int(v.reshape(-1).view(np.uint8)[::4096].sum())
        return o

    for _ in range(3):
        for n, label in ((1, "threads=1"), (2, "threads=2"), (0, "threads=0 (default)")):
            run(f"numpy enc load {label}", lambda n=n: load(n))
    tt = llama_layout.make_torch(llama_layout.choose_config(1, "bf16"), "bf16")
    for _ in range(4):
        for name, mod in (("safetensors", safetensors.torch), ("ours", cryptotensors.torch)):
            q = os.path.join(d, name)
            if os.path.exists(q):
                os.unlink(q)
            run(f"torch plain save {name}", lambda m=mod, q=q: m.save_file(tt, q))
    shutil.rmtree(d)


if __name__ == "__main__":
    main()
