"""Shared-memory slots that DataLoader workers write compact batches into.

    ring = BatchRing(workers=2, slots=4, slot_bytes=CompactLayout.max_bytes(...))  # before the workers fork
    slot, buffer = ring.acquire(worker)       # in worker ``worker``: waits for a free slot
    ...write the batch into buffer, send (worker, slot) to the main process...
    ring.view(worker, slot); ring.release(worker, slot)   # in the main process, after copying out

Why: torch sends every tensor a worker yields as a fresh shared-memory segment whose file
descriptor travels through a socket; here that costs ~2 ms per MB of batch, more than
building the batch. The ring is one anonymous shared mapping made before the DataLoader
forks its workers, so a batch crosses as a few bytes of slot number and its pages stay
warm from lap to lap. A slot is free again once the main process has copied the batch out
(a flag byte per slot in the same mapping), so a consumer that keeps batches is safe.
Needs the fork start method (workers inherit the mapping); otherwise the loader falls back
to torch's own transport.
"""

from __future__ import annotations

import mmap
import time

import numpy as np

HEADER = 4096
FREE, FULL = 0, 1


class BatchRing:
    """``slots`` buffers of ``slot_bytes`` for each of ``workers`` workers, plus their flags."""

    def __init__(self, workers: int, slots: int, slot_bytes: int) -> None:
        if workers * slots > HEADER:
            raise ValueError(f"{workers} workers x {slots} slots: at most {HEADER} slots")
        self.workers, self.slots = workers, slots
        self.slot_bytes = -(-slot_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
        self._map = mmap.mmap(-1, HEADER + workers * slots * self.slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self.memory = np.frombuffer(self._map, np.uint8)
        self.flags = self.memory[:workers * slots].reshape(workers, slots)
        self._next = [0] * workers

    def acquire(self, worker: int, timeout: float | None = None) -> tuple[int, np.ndarray]:
        """The next slot of ``worker`` once the main process has released it."""
        slot = self._next[worker]
        self._next[worker] = (slot + 1) % self.slots
        waited, pause = 0.0, 1e-5
        while self.flags[worker, slot] != FREE:
            if timeout is not None and waited > timeout:
                raise TimeoutError(f"slot {slot} of worker {worker} was not released within {timeout} s")
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, 1e-3)
        self.flags[worker, slot] = FULL
        return slot, self.view(worker, slot)

    def view(self, worker: int, slot: int) -> np.ndarray:
        start = HEADER + (worker * self.slots + slot) * self.slot_bytes
        return self.memory[start:start + self.slot_bytes]

    def release(self, worker: int, slot: int) -> None:
        self.flags[worker, slot] = FREE

    def close(self) -> None:
        """Unmap (every view must be gone; numpy views keep the mapping alive otherwise)."""
        self.flags = self.memory = None
        try:
            self._map.close()
        except BufferError:  # a view still exists: the mapping goes when it does
            pass

    def __getstate__(self) -> dict:
        raise TypeError("a BatchRing is inherited by forked workers, never pickled")
