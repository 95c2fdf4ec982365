"""Shared memory that DataLoader workers write compact batches into.

    ring = BatchRing(workers=2, arena_bytes=64 << 20)   # before the DataLoader forks its workers
    ticket, offset, buffer = ring.acquire(worker, nbytes)  # in worker ``worker``; None when full
    ...write the batch into buffer, send (worker, ticket, offset, nbytes) to the main process...
    ring.view(worker, offset, nbytes); ring.release(worker, ticket)   # in the main process

Why: torch sends every tensor a worker yields as a fresh shared-memory segment whose file
descriptor travels through a socket; here that costs ~2 ms per MB of batch, more than
building the batch, and every fresh page faults on both sides. The ring is one anonymous
shared mapping made before the DataLoader forks, with an arena per worker that batches are
written into back to back, wrapping around: a batch crosses as a few numbers, and the
arena's pages are touched once and reused lap after lap (so it is kept small: a few
batches). The main process hands the batch's tensors out in place (``lend``): its bytes are
free again (a flag byte per ticket in the same mapping) once its tensors are garbage. A worker that finds no room for a while (a consumer keeps many
batches) sends that batch another way, so holding batches is safe. Needs the fork start
method (workers inherit the mapping); otherwise the loader uses torch's own transport.
"""

from __future__ import annotations

import mmap
import time
import weakref

import numpy as np

TICKETS = 256
"""batches of one worker that can be out (written, not yet released) at once"""
ALIGN = 4096
FREE, FULL = 0, 1


class BatchRing:
    """An arena of ``arena_bytes`` per worker, plus each worker's ticket flags."""

    def __init__(self, workers: int, arena_bytes: int) -> None:
        self.workers = workers
        self.arena_bytes = -(-arena_bytes // ALIGN) * ALIGN
        header = -(-workers * TICKETS // ALIGN) * ALIGN
        self._map = mmap.mmap(-1, header + workers * self.arena_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self.memory = np.frombuffer(self._map, np.uint8)
        self.flags = self.memory[:workers * TICKETS].reshape(workers, TICKETS)
        self.arenas = self.memory[header:].reshape(workers, self.arena_bytes)
        self._head = [0] * workers
        self._out: list[dict[int, tuple[int, int]]] = [{} for _ in range(workers)]  # worker side: ticket -> (start, end)
        self._tickets = [0] * workers

    def acquire(self, worker: int, nbytes: int, timeout: float = 0.05) -> tuple[int, int, np.ndarray] | None:
        """Room for ``nbytes`` in ``worker``'s arena: (ticket, offset, buffer), or None when the
        batch cannot fit or no room frees up within ``timeout`` seconds."""
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        if size > self.arena_bytes:
            return None
        start = self._head[worker] if self._head[worker] + size <= self.arena_bytes else 0
        waited, pause = 0.0, 1e-5
        while True:
            out = self._out[worker]
            for ticket in [t for t in out if self.flags[worker, t] == FREE]:
                del out[ticket]
            busy = any(lo < start + size and start < hi for lo, hi in out.values())
            if not busy and len(out) < TICKETS:
                break
            if waited > timeout:
                return None
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, 1e-3)
        ticket = self._tickets[worker]
        while ticket in out:
            ticket = (ticket + 1) % TICKETS
        self._tickets[worker] = (ticket + 1) % TICKETS
        out[ticket] = (start, start + size)
        self.flags[worker, ticket] = FULL
        self._head[worker] = start + size
        return ticket, start, self.arenas[worker, start:start + nbytes]

    def view(self, worker: int, offset: int, nbytes: int) -> np.ndarray:
        return self.arenas[worker, offset:offset + nbytes]

    def release(self, worker: int, ticket: int) -> None:
        self.flags[worker, ticket] = FREE

    def lend(self, region: np.ndarray, worker: int, ticket: int) -> None:
        """Release the ticket once ``region`` (the view of its bytes that a batch's arrays are
        views of, and its tensors wrap) is gone: the main process hands the batch out in place."""
        weakref.finalize(region, self.release, worker, ticket)

    def __getstate__(self) -> dict:
        raise TypeError("a BatchRing is inherited by forked workers, never pickled")
