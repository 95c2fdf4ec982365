"""A step-file writer on its own thread, so Parquet encoding stays off the stepping loop.

    writer = BackgroundWriter(root, "babyai/GoToLocal", "rollout-0000", modalities)
    writer.put(episode)           # returns at once unless `max_queue` episodes are waiting
    rows = writer.close()         # joins the thread; the step file appears atomically

The queue is bounded so a slow disk throttles the workers instead of filling memory. pyarrow
releases the GIL while it compresses and writes, so the two threads overlap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any

from shards.episode import Episode
from shards.storage import Root
from shards.writer import StepFileWriter

_STOP = object()


class BackgroundWriter:
    """Feeds episodes to a shards.StepFileWriter from a background thread."""

    def __init__(self, root: str | Root, task: str, name: str, modalities: Sequence[str],
                 max_queue: int = 64) -> None:
        self._writer = StepFileWriter(root, task, name, modalities)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self.episodes = 0
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=f"writer-{task}-{name}", daemon=True)
        self._thread.start()

    @property
    def file(self) -> str:
        return self._writer.file

    def put(self, episode: Episode) -> None:
        """Queue one episode (blocks only while the queue is full)."""
        if self._error is not None:
            raise RuntimeError(f"step-file writer for {self._writer.file} failed") from self._error
        self.episodes += 1
        self.steps += episode.length
        self._queue.put(episode)

    def close(self) -> list[dict[str, Any]]:
        """Finish writing; returns the index rows. With no episodes no file is written."""
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            self._writer.abort()
            raise RuntimeError(f"step-file writer for {self._writer.file} failed") from self._error
        if not self._writer.index_rows:
            self._writer.abort()
            return []
        return self._writer.close()

    def abort(self) -> None:
        """Stop and drop everything written so far (the final file never appears)."""
        self._error = self._error or RuntimeError("aborted")
        while True:  # unblock the thread if it is waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(_STOP)
        self._thread.join()
        self._writer.abort()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue
            try:
                self._writer.add(item)
            except BaseException as error:  # noqa: BLE001 - handed to the caller in close()
                self._error = error
