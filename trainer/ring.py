"""Shared memory that DataLoader workers write batches into, and keep their decoded units in.

    ring = BatchRing.claim(workers=2, arena_bytes=64 << 20, store_bytes=256 << 20)   # before the fork
    ring.map_arena(worker)                                    # in worker ``worker``, first
    ticket, offset, buffer = ring.acquire(worker, nbytes)     # in worker ``worker``; None when full
    ...write the batch into buffer, send (worker, ticket, offset) to the main process...
    region = ring.view(worker, offset, nbytes); ring.lend(region, worker, ticket)   # main process
    ring.unclaim()                                            # after the pass

Why: torch sends every tensor a worker yields as a fresh shared-memory segment whose file
descriptor travels through a socket; here that costs ~2 ms per MB of batch, more than
building the batch, and every fresh page faults on both sides. The ring is one anonymous
shared mapping made before the DataLoader forks, with an arena per worker that batches are
written into back to back, wrapping around: a batch crosses as a few numbers, and the
arena's pages are touched once and reused lap after lap (so it is kept small: a few
batches), also by later passes and loaders of the process (``claim`` reuses a ring no pass
is using). The main process hands the batch's tensors out in place (``lend``): its bytes
are free again once its tensors are garbage. Which bytes each outstanding ticket holds is
in the mapping too, so a worker of a later pass never writes over a batch still in use. A
worker that finds no room for a while (a consumer keeps many batches) sends that batch
another way, so holding batches is safe; a held batch is stepped over (the next free bytes
after it are used), so holding one does not slow the batches after it. Needs the fork start
method (workers inherit the mapping); otherwise the loader uses torch's own transport.

Each worker also has a store (``store``): memory its decoded frames and token arrays are
carved from (trainer/buffers.py). A fresh worker's own memory is new pages, a fault and a
zeroing per 4 KB (on the benchmark VM up to ~18 us a page when the host has to back it); the
store's pages stay with the ring between passes, so the next pass's worker only maps them,
in one call (``map_arena``, up to the extent earlier passes used).
"""

from __future__ import annotations

import mmap
import os
import sys
import time
import weakref

import numpy as np

TICKETS = 256
"""batches of one worker that can be out (written, not yet released) at once"""
ALIGN = 4096
FREE, FULL = 0, 1
KEPT_RINGS = 2


class BatchRing:
    """An arena of ``arena_bytes`` per worker, plus each worker's ticket flags and regions."""

    _kept: list[BatchRing] = []

    def __init__(self, workers: int, arena_bytes: int, store_bytes: int = 0) -> None:
        self.workers = workers
        self.arena_bytes = -(-arena_bytes // ALIGN) * ALIGN
        self.store_bytes = -(-store_bytes // ALIGN) * ALIGN
        header = -(-workers * (TICKETS * 17 + 8) // ALIGN) * ALIGN
        stores = header + workers * self.arena_bytes
        self._map = mmap.mmap(-1, stores + workers * self.store_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self.memory = np.frombuffer(self._map, np.uint8)
        self.flags = self.memory[:workers * TICKETS].reshape(workers, TICKETS)
        self.regions = self.memory[workers * TICKETS:workers * TICKETS * 17].view(np.int64).reshape(workers, TICKETS, 2)
        self.store_used = self.memory[workers * TICKETS * 17:workers * (TICKETS * 17 + 8)].view(np.int64)
        """how many bytes of each worker's store a worker of any pass has used (its high-water mark)"""
        self.arenas = self.memory[header:stores].reshape(workers, self.arena_bytes)
        self.stores = self.memory[stores:].reshape(workers, self.store_bytes)
        self._head = [0] * workers
        self._ticket = [0] * workers
        self._out: dict[int, list[tuple[int, int, int]]] = {}  # see _outstanding
        self._out_pid = 0
        self._flag_bytes = memoryview(self.memory[:workers * TICKETS])
        self.claimed = False

    @classmethod
    def claim(cls, workers: int, arena_bytes: int, store_bytes: int = 0) -> BatchRing:
        """A ring of this shape that no pass is using (one kept from an earlier pass: its pages
        are warm), or a new one; ``unclaim`` it after the pass."""
        for ring in cls._kept:
            if (not ring.claimed and ring.workers == workers and ring.arena_bytes >= arena_bytes
                    and ring.store_bytes >= store_bytes):
                break
        else:
            ring = cls(workers, arena_bytes, store_bytes)
            idle = [r for r in cls._kept if not r.claimed]
            if len(cls._kept) >= KEPT_RINGS and idle:
                cls._kept.remove(idle[0])  # the mapping goes once no batch uses it
            cls._kept.append(ring)
        ring.claimed = True
        ring._head = [0] * workers
        ring._out_pid = 0  # read the outstanding batches from the flags again
        return ring

    def store(self, worker: int) -> np.ndarray:
        """``worker``'s store: memory for what the worker decodes (trainer/buffers.py carves
        it), kept with the ring, so a later pass's worker finds its pages already there."""
        return self.stores[worker]

    def unclaim(self) -> None:
        self.claimed = False

    def map_arena(self, worker: int) -> None:
        """Map ``worker``'s arena, and the part of its store earlier passes used, into this
        process's page tables in one call each, where touching them would take a page fault
        per 4 KB: a forked worker inherits the mapping but not its page-table entries.
        Measured here: 32 MB in ~3.5 ms this way, ~18 ms by faults. Only a hint
        (MADV_POPULATE_READ, Linux >= 5.14); elsewhere the faults happen as before."""
        advice = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)
        if advice is None:
            return
        base = self.memory.ctypes.data
        spans = [(self.arenas[worker].ctypes.data - base, self.arena_bytes)]
        used = -(-int(self.store_used[worker]) // ALIGN) * ALIGN
        if used:
            spans.append((self.stores[worker].ctypes.data - base, min(used, self.store_bytes)))
        for start, length in spans:
            try:
                self._map.madvise(advice, start, length)
            except (OSError, ValueError):
                return

    def acquire(self, worker: int, nbytes: int, timeout: float = 0.05) -> tuple[int, int, np.ndarray] | None:
        """Room for ``nbytes`` in ``worker``'s arena: (ticket, offset, buffer), or None when the
        batch cannot fit or no room frees up within ``timeout`` seconds."""
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        if size > self.arena_bytes:
            return None
        flags, regions = self.flags[worker], self.regions[worker]
        waited, pause = 0.0, 1e-5
        while True:
            start = self._free_start(worker, size)
            if start is not None:
                break
            if waited > timeout:
                return None
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, 1e-3)
        ticket = self._ticket[worker]
        while flags[ticket] == FULL:
            ticket = (ticket + 1) % TICKETS
        self._ticket[worker] = (ticket + 1) % TICKETS
        regions[ticket] = (start, start + size)
        flags[ticket] = FULL
        self._out[worker].append((ticket, start, start + size))
        self._head[worker] = start + size
        return ticket, start, self.arenas[worker, start:start + nbytes]

    def _free_start(self, worker: int, size: int) -> int | None:
        """The first offset, going round from the head, where ``size`` bytes overlap no batch
        still out: a batch the consumer holds is stepped over, not waited for (waiting on it
        stalled every later batch of the pass), so only a full arena makes a worker wait."""
        out = self._outstanding(worker)
        if len(out) >= TICKETS:
            return None
        head = self._head[worker]
        head = head if head + size <= self.arena_bytes else 0
        if not any(start < head + size and head < end for _, start, end in out):
            return head  # the usual case: the bytes after the last batch are free
        spans = np.array([(start, end) for _, start, end in out], np.int64)
        ends = np.sort(spans[:, 1])
        candidates = np.concatenate([[head], ends[ends >= head], [0], ends[ends < head]])
        candidates = candidates[candidates + size <= self.arena_bytes]
        clear = ~((spans[None, :, 0] < candidates[:, None] + size) & (candidates[:, None] < spans[None, :, 1])).any(1)
        candidates = candidates[clear]
        return int(candidates[0]) if len(candidates) else None

    def _outstanding(self, worker: int) -> list[tuple[int, int, int]]:
        """(ticket, start, end) of every batch of ``worker``'s arena still out. Kept as a list
        in the worker (a few entries; numpy calls on the 256 flags cost ~80 us an acquire):
        read from the flags at a process's first acquire (batches of earlier passes may still
        be held), then appended to on acquire and pruned as the consumer frees them."""
        if self._out_pid != os.getpid():
            self._out_pid = os.getpid()
            self._out = {}
        out = self._out.get(worker)
        if out is None:
            regions = self.regions[worker]
            out = self._out[worker] = [(int(t), int(regions[t, 0]), int(regions[t, 1]))
                                       for t in np.flatnonzero(self.flags[worker] == FULL)]
        else:
            flags, base = self._flag_bytes, worker * TICKETS  # a memoryview: an int per read, no numpy scalar
            out[:] = [entry for entry in out if flags[base + entry[0]] == FULL]
        return out

    def view(self, worker: int, offset: int, nbytes: int) -> np.ndarray:
        return self.arenas[worker, offset:offset + nbytes]

    def release(self, worker: int, ticket: int) -> None:
        self.flags[worker, ticket] = FREE

    def lend(self, region: np.ndarray, worker: int, ticket: int) -> None:
        """Release the ticket once ``region`` (the view of its bytes) is gone: the main process
        hands the batch out in place. Wrap ``region`` in a tensor and build the arrays from
        that: numpy points a view of ``region`` at the whole mapping, not at ``region``, so
        numpy views alone would let the ticket go while they are in use."""
        weakref.finalize(region, self.release, worker, ticket)

    def __getstate__(self) -> dict:
        raise TypeError("a BatchRing is inherited by forked workers, never pickled")
