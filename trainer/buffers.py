"""Byte buffers handed out again once nothing uses them, instead of fresh memory.

    pool = BufferPool(keep_bytes=256 << 20)
    frames = pool.take(22_579_200)      # uint8, contents undefined
    ...                                 # views of ``frames`` keep its buffer taken
    del frames                          # the next take() of a size that fits may return it

Why: a buffer of a few MB comes from the kernel as fresh pages and goes back when freed, so
every new one costs a page fault (and the zeroing) per 4 KB: on the benchmark machine
~2.7-8 us a page, ~15-50 ms for one Atari row group's frames, paid again for every row group
a loader worker decodes. A buffer that was used before is already mapped.

A buffer is free again when nothing but the pool refers to it: every numpy view of it
(``take`` returns one) and every Arrow buffer over such a view holds a reference.

With a ``backing`` (a DataLoader worker's store in the loader's shared memory,
trainer/ring.py) new buffers are carved from it rather than allocated: the loader's process
keeps that memory between passes, so the next pass's fresh worker finds the pages there
instead of faulting in new ones; what does not fit is allocated as usual.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

import numpy as np

PAGE = 4096
KEPT_HEAP_BLOCK = 32 << 20
"""blocks up to this size come from glibc's heap, not from their own mapping (glibc's ceiling)"""


class BufferPool:
    """Recycles uint8 buffers: ``take(n)`` gives the smallest free one of at least ``n`` bytes,
    or a new one; free buffers beyond ``keep_bytes`` are dropped (oldest first)."""

    def __init__(self, keep_bytes: int, most_buffers: int = 16, backing: np.ndarray | None = None,
                 high_water: np.ndarray | None = None) -> None:
        self.keep_bytes = keep_bytes
        self.most_buffers = most_buffers
        self.backing = backing
        self.high_water = high_water
        """an int64 array of one: raised to the end of the furthest buffer carved from ``backing``"""
        self._buffers: list[np.ndarray] = []  # most recently taken last
        self._carved: dict[int, int] = {}  # id of a buffer carved from ``backing`` -> its offset
        self._lock = threading.Lock()  # the loader's read-ahead threads and its sampler take buffers at once

    def take(self, nbytes: int) -> np.ndarray:
        """``nbytes`` bytes (contents undefined), as a view of a buffer the pool keeps (thread-safe:
        two threads must never be handed the same free buffer)."""
        with self._lock:
            free = [i for i in self._free() if self._buffers[i].nbytes >= nbytes]
            if free:
                buffer = self._buffers.pop(min(free, key=lambda i: self._buffers[i].nbytes))
            else:
                self._trim(nbytes)
                buffer = self._carve(nbytes)
                if buffer is None:
                    buffer = np.empty(max(nbytes, 1), np.uint8)
            self._buffers.append(buffer)
            return buffer[:nbytes]

    def _carve(self, nbytes: int) -> np.ndarray | None:
        """A new buffer from the first gap of ``backing`` that holds ``nbytes`` (page-aligned),
        dropping free carved buffers when no gap does; None when even that leaves no room."""
        if self.backing is None:
            return None
        size = -(-max(nbytes, 1) // PAGE) * PAGE
        start = self._gap(size)
        if start is None:
            for i in reversed(self._free()):
                if id(self._buffers[i]) in self._carved:
                    del self._carved[id(self._buffers.pop(i))]
            start = self._gap(size)
            if start is None:
                return None
        # its own array over a memoryview (not a view of ``backing``): views of it count as its references
        buffer = np.frombuffer(memoryview(self.backing)[start:start + size], np.uint8)
        self._carved[id(buffer)] = start
        if self.high_water is not None:
            self.high_water[0] = max(int(self.high_water[0]), start + size)
        return buffer

    def _gap(self, size: int) -> int | None:
        spans = sorted((self._carved[id(b)], self._carved[id(b)] + b.nbytes) for b in self._buffers if id(b) in self._carved)
        at = 0
        for start, end in spans:
            if start - at >= size:
                return at
            at = max(at, end)
        return at if len(self.backing) - at >= size else None

    @property
    def held_bytes(self) -> int:
        """Bytes of every buffer the pool keeps, taken or free."""
        return sum(buffer.nbytes for buffer in self._buffers)

    def _free(self) -> list[int]:
        """Indices of the buffers nothing else refers to."""
        # a free buffer has 2 references: the list's and getrefcount's argument; a live view
        # (or an Arrow buffer over one) holds one more
        return [i for i in range(len(self._buffers)) if sys.getrefcount(self._buffers[i]) == 2]

    def _trim(self, incoming: int) -> None:
        """Drop free buffers (oldest first) so that free bytes plus ``incoming`` stay within
        ``keep_bytes`` and the pool tracks fewer than ``most_buffers``; taken ones stay."""
        free = self._free()
        free_bytes = sum(self._buffers[i].nbytes for i in free)
        count = len(self._buffers)
        drop = []
        for i in free:
            if free_bytes + incoming <= self.keep_bytes and count < self.most_buffers:
                break
            drop.append(i)
            free_bytes -= self._buffers[i].nbytes
            count -= 1
        for i in reversed(drop):
            self._carved.pop(id(self._buffers.pop(i)), None)


def keep_freed_heap() -> bool:
    """Let this process's C heap keep what it frees for reuse (glibc only; False elsewhere).

    Why: numpy's temporaries of a few MB (mu-law's float64 scratch, casts) are mapped fresh and
    unmapped on free by glibc's defaults, so each one costs a page fault per 4 KB again. Called
    in DataLoader workers, whose heap then grows to its peak and stays (memory stays flat).
    Measured on the loader bench: a worker's page faults per pass 30k -> 20k."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, KEPT_HEAP_BLOCK)) and bool(mallopt(m_trim_threshold, 1 << 30))
