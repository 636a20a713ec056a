"""Loading into a CUDA device through pinned staging buffers.

Tensor bytes are decrypted (or read) by the core, with the GIL released,
into one of a few page-locked host buffers, and copied to the device
asynchronously on side streams while the next buffer fills. Plaintext never
lands in pageable memory, and decryption overlaps the host-to-device copies.
Slices (`get_slice` on a CUDA handle) take the same path.

The pipeline runs across tensors, not only within one: a load returns once
its copies are queued, so the caller's next `get_tensor` decrypts into a
free staging buffer while the previous tensor's copies are still running.

Stream ordering, which the GPU does not check for us:

* the output tensor is allocated on the current stream, whose queued work
  may still use that memory (the caching allocator reuses a block as soon
  as it is freed on the same stream), so every side stream first waits for
  the current stream;
* a staging buffer is refilled only after the copy out of it is done (the
  host waits for that copy's event, and only for that one);
* a load returns with the current stream waiting for every copy of it, so
  any use of the output on the current stream, and any reuse of its memory
  after the caller frees it there, comes after the copies;
* a load that raises (an integrity error in a later chunk) first waits, on
  the host, for every copy in flight: otherwise a side stream could still be
  writing into an output that the caller's exception frees;
* slices take the simple path: the host waits for every copy before a slice
  returns (a slice may need a pinned buffer of its own, freed on return).
"""

from __future__ import annotations

import os
import threading

import torch

STAGING_BYTES = int(os.environ.get("CRYPTOTENSORS_STAGING_MB", "64")) << 20
BUFFERS = 3


class _Staging:
    """Pinned buffers, streams and events of one device, reused across loads."""

    def __init__(self, device: torch.device):
        self.device = device
        self.lock = threading.Lock()
        self.buffers = [torch.empty(STAGING_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(BUFFERS)]
        self.streams = [torch.cuda.Stream(device=device) for _ in range(BUFFERS)]
        self.events = [None] * BUFFERS
        self.next = 0  # the slot whose copy was queued longest ago

    def _start(self) -> None:
        """Side streams start after the work already queued on the current one."""
        current = torch.cuda.current_stream(self.device)
        for stream in self.streams:
            stream.wait_stream(current)

    def _copy(self, slot: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        with torch.cuda.stream(self.streams[slot]):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.streams[slot])
            self.events[slot] = event

    def _take(self) -> int:
        """The next slot in turn, once the copy out of it is done (lock held)."""
        slot = self.next
        self.next = (slot + 1) % BUFFERS
        if self.events[slot] is not None:
            self.events[slot].synchronize()
            self.events[slot] = None
        return slot

    def _publish(self) -> None:
        """The current stream waits for every copy in flight; the host does
        not (lock held). Events stay, so a refill still waits for its copy."""
        current = torch.cuda.current_stream(self.device)
        for event in self.events:
            if event is not None:
                current.wait_event(event)

    def _drain(self) -> None:
        """Every copy done: the current stream waits for them, and so does
        the host, before a failed load's output is freed or a slice returns
        (lock held)."""
        current = torch.cuda.current_stream(self.device)
        for event in self.events:
            if event is not None:
                current.wait_event(event)
                event.synchronize()
        self.events = [None] * BUFFERS

    def load(self, handle, name: str, out: torch.Tensor, nbytes: int) -> None:
        flat = out.reshape(-1).view(torch.uint8)
        with self.lock:
            self._start()
            try:
                for offset in range(0, nbytes, STAGING_BYTES):
                    slot = self._take()
                    n = min(STAGING_BYTES, nbytes - offset)
                    buf = self.buffers[slot]
                    handle.read_range_into(name, offset, buf[:n].numpy())
                    self._copy(slot, flat[offset : offset + n], buf[:n])
            except BaseException:
                self._drain()
                out.zero_()  # no verified plaintext left in memory the caller's error frees
                raise
            self._publish()

    def load_slice(self, handle, name: str, spec, out: torch.Tensor, nbytes: int) -> None:
        """A slice, read by the core into pinned memory, then copied: into a
        staging buffer when it fits, else into a pinned buffer of its own
        (from torch's pinned-memory cache)."""
        flat = out.reshape(-1).view(torch.uint8)
        with self.lock:
            self._drain()
            self._start()
            if nbytes <= STAGING_BYTES:
                buf = self.buffers[0][:nbytes]
            else:
                buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            try:
                handle.read_slice_into(name, spec, buf.numpy())
                self._copy(0, flat, buf)
            finally:
                self._drain()


_STAGING: dict = {}
_STAGING_LOCK = threading.Lock()


def staging(device: torch.device) -> _Staging:
    with _STAGING_LOCK:
        if device not in _STAGING:
            _STAGING[device] = _Staging(device)
        return _STAGING[device]


def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device(dev.type, torch.cuda.current_device())
    return dev


def load(handle, name: str, torch_dtype, torch_shape, nbytes: int, device: str) -> torch.Tensor:
    """One tensor, decrypted through pinned staging into a new device tensor."""
    dev = _device(device)
    out = torch.empty(torch_shape, dtype=torch_dtype, device=dev)
    if nbytes:
        staging(dev).load(handle, name, out, nbytes)
    return out


def load_slice(handle, name: str, spec, torch_dtype, torch_shape, nbytes: int, device: str) -> torch.Tensor:
    """One slice (`spec` in the core's form), through pinned memory into a
    new device tensor."""
    dev = _device(device)
    out = torch.empty(torch_shape, dtype=torch_dtype, device=dev)
    if out.untyped_storage().nbytes() != nbytes:
        from ._core import SafetensorError

        raise SafetensorError(f"slice of {name!r} does not fit its dtype")
    if nbytes:
        staging(dev).load_slice(handle, name, spec, out, nbytes)
    return out
