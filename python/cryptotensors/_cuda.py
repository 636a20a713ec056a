"""Loading into a CUDA device through pinned staging buffers.

Tensor bytes are decrypted (or read) by the core, with the GIL released,
into one of a few page-locked host buffers, and copied to the device
asynchronously on side streams while the next buffer fills. Plaintext never
lands in pageable memory, and decryption overlaps the host-to-device copies.
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

    def load(self, handle, name: str, out: torch.Tensor, nbytes: int) -> None:
        flat = out.reshape(-1).view(torch.uint8)
        with self.lock:
            for i, offset in enumerate(range(0, nbytes, STAGING_BYTES)):
                slot = i % BUFFERS
                if self.events[slot] is not None:
                    self.events[slot].synchronize()  # the copy out of this buffer is done
                n = min(STAGING_BYTES, nbytes - offset)
                buf = self.buffers[slot]
                handle.read_range_into(name, offset, buf[:n].numpy())
                with torch.cuda.stream(self.streams[slot]):
                    flat[offset : offset + n].copy_(buf[:n], non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(self.streams[slot])
                    self.events[slot] = event
            for event in self.events:
                if event is not None:
                    torch.cuda.current_stream(self.device).wait_event(event)
                    event.synchronize()
            self.events = [None] * BUFFERS


_STAGING: dict = {}
_STAGING_LOCK = threading.Lock()


def staging(device: torch.device) -> _Staging:
    with _STAGING_LOCK:
        if device not in _STAGING:
            _STAGING[device] = _Staging(device)
        return _STAGING[device]


def load(handle, name: str, torch_dtype, torch_shape, nbytes: int, device: str) -> torch.Tensor:
    """One tensor, decrypted through pinned staging into a new device tensor."""
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device(dev.type, torch.cuda.current_device())
    out = torch.empty(torch_shape, dtype=torch_dtype, device=dev)
    if nbytes:
        staging(dev).load(handle, name, out, nbytes)
    return out
