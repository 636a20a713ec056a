"""Stream ordering and slice routing of _cuda, on a CPU-only machine.

MOCKS: no GPU here, so torch.cuda's stream API (Stream, Event, stream(),
current_stream) is replaced by a recorder, and pinned allocation by a plain
one that notes it was asked to pin. The copies themselves run on the CPU
(synchronously). These tests check only *ordering logic* (who waits for what,
before which return or raise) and which memory the core decrypts into; they
say nothing about real CUDA behaviour, which the device checks cover.
"""

import types

import numpy as np
import pytest
import torch

import cryptotensors as ct
import cryptotensors.torch as ctt
from cryptotensors import _cuda


class FakeCuda:
    """A recorder for torch.cuda's stream API (MOCK, see module docstring)."""

    def __init__(self):
        self.log = []
        self.pinned = []  # data_ptr of every buffer allocated with pin_memory=True
        fake = self

        class Event:
            n = 0

            def __init__(self):
                Event.n += 1
                self.id, self.done = Event.n, False

            def record(self, stream):
                fake.log.append(("record", self.id, stream.id))

            def synchronize(self):
                self.done = True
                fake.log.append(("sync", self.id))

        class Stream:
            n = 0

            def __init__(self, device=None):
                Stream.n += 1
                self.id = Stream.n

            def wait_stream(self, other):
                fake.log.append(("wait_stream", self.id, other.id))

            def wait_event(self, event):
                fake.log.append(("wait_event", self.id, event.id))

        self.current = types.SimpleNamespace(id=0)
        self.current.wait_event = lambda e: fake.log.append(("wait_event", 0, e.id))
        self.Stream, self.Event = Stream, Event
        self.events = []

    def stream(self, s):
        fake = self

        class Ctx:
            def __enter__(self):
                fake.log.append(("on", s.id))

            def __exit__(self, *a):
                fake.log.append(("off", s.id))

        return Ctx()

    def current_stream(self, device=None):
        return self.current

    def current_device(self):
        return 0


@pytest.fixture
def fake(monkeypatch):
    cuda = FakeCuda()
    real_empty = torch.empty

    def empty(*args, pin_memory=False, device=None, **kw):
        t = real_empty(*args, **kw)
        if pin_memory:
            cuda.pinned.append((t.data_ptr(), t.untyped_storage().nbytes()))
        return t

    proxy = types.SimpleNamespace(**{k: getattr(torch, k) for k in ("uint8", "device", "float32")})
    proxy.empty, proxy.cuda = empty, cuda
    monkeypatch.setattr(_cuda, "torch", proxy)
    monkeypatch.setattr(_cuda, "STAGING_BYTES", 4096)
    monkeypatch.setattr(_cuda, "_STAGING", {})
    return cuda


class Failing:
    """A handle whose `fail_at`-th chunk read fails as a tampered segment does."""

    def __init__(self, handle, fail_at):
        self.handle, self.fail_at, self.reads = handle, fail_at, []

    def read_range_into(self, name, offset, out):
        self.reads.append(out.ctypes.data)  # the address of the buffer read into
        if len(self.reads) == self.fail_at:
            raise ct.IntegrityError("Decryption failed: the key is wrong or the file was modified")
        return self.handle.read_range_into(name, offset, out)

    def read_slice_into(self, name, spec, out):
        self.reads.append(out.ctypes.data)
        return self.handle.read_slice_into(name, spec, out)

    def __getattr__(self, k):
        return getattr(self.handle, k)


@pytest.fixture
def enc(tmp_path):
    key = ct.generate_key("oct")
    w = torch.arange(5 * 1024 * 4, dtype=torch.float32).reshape(20, 1024)  # 80 KiB: 20 chunks of 4 KiB
    path = tmp_path / "m.safetensors"
    ctt.save_file({"w": w}, path, encrypt_for=key, segment_size=4096)
    return ct.safe_open(path, "pt", keys=key), w


def _syncs_before(log, pos):
    recorded = {e for op, e, *_ in log[:pos] if op == "record"}
    synced = {e for op, e, *_ in log[:pos] if op == "sync"}
    return recorded, synced


def test_integrity_error_waits_for_copies_in_flight(fake, enc):
    """MOCK ordering test: a load failing at its 5th chunk synchronizes every
    copy already queued before it raises (the output is then freed)."""
    f, w = enc
    h = Failing(f._handle, fail_at=5)
    with pytest.raises(ct.IntegrityError):
        _cuda.load(h, "w", torch.float32, (20, 1024), w.numel() * 4, "cuda:0")
    recorded, synced = _syncs_before(fake.log, len(fake.log))
    assert len(recorded) == 4 and recorded <= synced, fake.log
    # Side streams wait for the current stream before writing the output.
    first_copy = fake.log.index(next(e for e in fake.log if e[0] == "on"))
    assert {e[1] for e in fake.log[:first_copy] if e[0] == "wait_stream"} == {1, 2, 3}
    # The staging state is clean for the next load, which then succeeds.
    assert _cuda._STAGING[torch.device("cuda:0")].events == [None] * _cuda.BUFFERS
    out = _cuda.load(f._handle, "w", torch.float32, (20, 1024), w.numel() * 4, "cuda:0")
    assert torch.equal(out, w)


def _reads_and_syncs(log):
    """Per host-side read (an ("on", stream) entry starts each copy), the
    events synchronized before it."""
    out, synced = [], set()
    for op, *rest in log:
        if op == "sync":
            synced.add(rest[0])
        elif op == "on":
            out.append(set(synced))
    return out


def test_success_reuses_a_buffer_only_after_its_copy(fake, enc):
    """MOCK ordering test: with 3 buffers, chunk i + 3 is copied only after
    the copy of chunk i is synchronized; on return the current stream (not
    the host) waits for the copies still in flight."""
    f, w = enc
    h = Failing(f._handle, fail_at=0)
    out = _cuda.load(h, "w", torch.float32, (20, 1024), w.numel() * 4, "cuda:0")
    assert torch.equal(out, w)
    records = [e for op, e, *_ in fake.log if op == "record"]
    assert len(records) == 20
    for i, synced in enumerate(_reads_and_syncs(fake.log)):
        assert set(records[: max(0, i - 2)]) <= synced, (i, fake.log)
    in_flight = set(records[-3:])
    host_synced = {e for op, e, *_ in fake.log if op == "sync"}
    assert host_synced == set(records[:17]), "the host waits only to refill a buffer"
    last_record = max(i for i, e in enumerate(fake.log) if e[0] == "record")
    waited = {e[2] for e in fake.log[last_record:] if e[0] == "wait_event" and e[1] == 0}
    assert in_flight <= waited, "the current stream waits for every copy before return"
    pinned = {p for p, _ in fake.pinned}
    assert set(h.reads) <= pinned, "every chunk decrypts into pinned staging"


def test_next_tensor_decrypts_while_previous_copies_run(fake, enc):
    """MOCK ordering test: a second load starts decrypting without waiting
    for the first load's last copies, except the one whose buffer it refills,
    and the buffers keep their round-robin order across loads."""
    f, w = enc
    nbytes = w.numel() * 4
    _cuda.load(f._handle, "w", torch.float32, (20, 1024), nbytes, "cuda:0")
    first = [e for op, e, *_ in fake.log if op == "record"]
    mark = len(fake.log)
    h = Failing(f._handle, fail_at=0)
    out = _cuda.load(h, "w", torch.float32, (20, 1024), nbytes, "cuda:0")
    assert torch.equal(out, w)
    second_log = fake.log[mark:]
    first_on = next(i for i, e in enumerate(second_log) if e[0] == "on")
    synced_before = {e[1] for e in second_log[:first_on] if e[0] == "sync"}
    # 20 chunks over 3 slots: the first load's last copy used slot 1, so the
    # second load starts on slot 2, whose copy (chunk 17) is the only wait.
    assert synced_before == {first[17]}, second_log[:first_on]
    assert second_log[first_on] == ("on", 3)  # stream of slot 2


def test_cuda_slices_go_through_pinned_memory(fake, enc):
    """MOCK routing test: get_slice on a CUDA handle decrypts into pinned
    memory (a staging buffer when it fits, else a pinned buffer of its own),
    never into a pageable tensor, and returns the right values."""
    f, w = enc
    s = f.get_slice("w")
    s._device = "cuda:0"  # what safe_open(device="cuda:0") gives; no GPU to open one here
    s._handle = h = Failing(s._handle, fail_at=0)
    for index, want in [((slice(2, 3), slice(None)), w[2:3]),  # 4 KiB: fits a staging buffer
                        (slice(1, 9), w[1:9]),  # 32 KiB: a pinned buffer of its own
                        ((slice(None), 7), w[:, 7])]:
        got = s[index]
        assert torch.equal(got, want), index
        ptr = h.reads[-1]
        assert any(p <= ptr < p + n for p, n in fake.pinned), index
    recorded, synced = _syncs_before(fake.log, len(fake.log))
    assert recorded and recorded == synced
    np.testing.assert_array_equal(f.get_slice("w")[0:2].numpy(), w[0:2].numpy())  # the CPU path is unchanged
