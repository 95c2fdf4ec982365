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
"""

from __future__ import annotations

import sys

import numpy as np


class BufferPool:
    """Recycles uint8 buffers: ``take(n)`` gives the smallest free one of at least ``n`` bytes,
    or a new one; free buffers beyond ``keep_bytes`` are dropped (oldest first)."""

    def __init__(self, keep_bytes: int, most_buffers: int = 16) -> None:
        self.keep_bytes = keep_bytes
        self.most_buffers = most_buffers
        self._buffers: list[np.ndarray] = []  # most recently taken last

    def take(self, nbytes: int) -> np.ndarray:
        """``nbytes`` bytes (contents undefined), as a view of a buffer the pool keeps."""
        free = [i for i in self._free() if self._buffers[i].nbytes >= nbytes]
        if free:
            buffer = self._buffers.pop(min(free, key=lambda i: self._buffers[i].nbytes))
        else:
            buffer = np.empty(max(nbytes, 1), np.uint8)
            self._trim(buffer.nbytes)
        self._buffers.append(buffer)
        return buffer[:nbytes]

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
            del self._buffers[i]
