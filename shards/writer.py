"""Writing step files and the episode index, each file appearing atomically.

    with StepFileWriter(root, "babyai/GoToLocal", "rollout-00000", modalities) as writer:
        for episode in episodes:
            writer.add(episode)
    rows = writer.index_rows          # one dict per episode, INDEX_SCHEMA's columns
    write_index(root, index_table(rows))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.episode import Episode
from shards.format import (
    INDEX_FILE,
    INDEX_SCHEMA,
    OBS_IMAGE,
    OBS_TEXT,
    TARGET_ROW_GROUP_BYTES,
    step_file_path,
    step_schema,
)
from shards.manifest import Manifest, write_manifest
from shards.storage import Root, atomic_write

COMPRESSION = "zstd"


class StepFileWriter:
    """Appends episodes of one task to ``data/<task>/<name>.parquet``.

    Rows are buffered and flushed in row groups of about ``row_group_bytes`` into a temporary
    file that is renamed into place on ``close()``; if the writer dies or ``abort()`` is
    called, no file appears under the final name.
    """

    def __init__(self, root: str | Root, task: str, name: str, modalities: Sequence[str],
                 row_group_bytes: int = TARGET_ROW_GROUP_BYTES) -> None:
        self.root = Root.of(root)
        self.task = task
        self.file = step_file_path(task, name)
        self.schema = step_schema(list(modalities))
        self.row_group_bytes = row_group_bytes
        self.index_rows: list[dict[str, Any]] = []
        self._pending: list[pa.RecordBatch] = []
        self._pending_bytes = 0
        self._rows_written = 0
        self._stack = contextlib.ExitStack()
        sink = self._stack.enter_context(atomic_write(self.root, self.file))
        self._parquet = pq.ParquetWriter(sink, self.schema, compression=COMPRESSION)
        self._closed = False

    def add(self, episode: Episode) -> dict[str, Any]:
        """Buffer one episode; returns its index row."""
        if episode.task != self.task:
            raise ValueError(f"episode of task {episode.task!r} added to a step file of task {self.task!r}")
        batch = episode_to_batch(episode, self.schema)
        row = index_row(episode, self.file, self._rows_written + sum(b.num_rows for b in self._pending))
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        self.index_rows.append(row)
        if self._pending_bytes >= self.row_group_bytes:
            self._flush()
        return row

    def close(self) -> list[dict[str, Any]]:
        """Write what is buffered and make the file appear; returns the index rows."""
        if not self._closed:
            self._flush()
            self._parquet.close()
            self._closed = True
            self._stack.close()
        return self.index_rows

    def abort(self) -> None:
        """Drop everything: the final file never appears."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._parquet.close()
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> StepFileWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, self.schema)
        self._parquet.write_table(table, row_group_size=max(1, table.num_rows))
        self._rows_written += table.num_rows
        self._pending, self._pending_bytes = [], 0


def write_index(root: str | Root, table: pa.Table, relative: str = INDEX_FILE) -> None:
    """Write an episode index (or an index fragment) atomically.

    String columns may be dictionary-encoded (as ``read_index(dictionary=True)`` returns
    them): they are written without decoding and read back as plain strings.
    """
    encoded = [f.name for f in INDEX_SCHEMA if pa.types.is_string(f.type) and f.name in table.column_names
               and pa.types.is_dictionary(table.schema.field(f.name).type)
               and table.schema.field(f.name).type.value_type.equals(f.type)]
    if encoded and table.column_names == INDEX_SCHEMA.names:
        table = pa.table([table[f.name] if f.name in encoded else table[f.name].cast(f.type) for f in INDEX_SCHEMA],
                         names=INDEX_SCHEMA.names)
    else:
        encoded = []
        table = table.cast(INDEX_SCHEMA)
    with atomic_write(Root.of(root), relative) as sink:
        # Without the Arrow schema in the file, readers see the encoded columns as strings.
        pq.write_table(table, sink, compression=COMPRESSION, store_schema=not encoded)


def index_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=INDEX_SCHEMA)


def write_dataset(root: str | Root, episodes: Iterable[Episode], manifest: Manifest,
                  file_name: str = "part-00000") -> pa.Table:
    """Write a whole dataset in one go: one step file per task, the index, the manifest.

    For small datasets and tests; collectors write step files and index fragments per work
    unit instead.
    """
    table = index_table(write_step_files(root, episodes, manifest, file_name))
    write_index(root, table)
    write_manifest(root, manifest)
    return table


def write_step_files(root: str | Root, episodes: Iterable[Episode], manifest: Manifest,
                     file_name: str = "part-00000") -> list[dict[str, Any]]:
    """Write episodes into one step file per task (all appear, or none on error); returns
    their index rows, task by task in order of first appearance."""
    root = Root.of(root)
    writers: dict[str, StepFileWriter] = {}
    try:
        for episode in episodes:
            if episode.task not in manifest.tasks:
                raise ValueError(f"episode task {episode.task!r} is not in the manifest's tasks {list(manifest.tasks)}")
            writer = writers.get(episode.task)
            if writer is None:
                writer = StepFileWriter(root, episode.task, file_name, manifest.tasks[episode.task].modalities)
                writers[episode.task] = writer
            writer.add(episode)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return [row for writer in writers.values() for row in writer.close()]


def episode_to_batch(episode: Episode, schema: pa.Schema) -> pa.RecordBatch:
    """Convert an episode's arrays to one Arrow record batch of ``schema`` (no Python loops
    over steps except for text)."""
    n = episode.length
    missing = [f.name for f in schema if f.name.startswith(("obs_", "act_")) and f.name not in episode.steps]
    extra = [k for k in episode.steps if k not in schema.names]
    if missing or extra:
        raise ValueError(
            f"episode {episode.episode_id} of {episode.task}: columns do not match the task's spec "
            f"(missing {missing}, unexpected {extra})"
        )
    arrays: list[pa.Array] = [
        pa.array(np.full(n, episode.episode_id, dtype=np.int64)),
        pa.array(np.arange(n, dtype=np.int32)),
    ]
    for f in schema:
        if f.name in episode.steps:
            arrays.append(_column(f.name, episode.steps[f.name], f.type, n))
    arrays += [
        pa.array(np.asarray(episode.rewards, dtype=np.float32)),
        pa.array(np.asarray(episode.terminated, dtype=bool)),
        pa.array(np.asarray(episode.truncated, dtype=bool)),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def index_row(episode: Episode, file: str, row_offset: int) -> dict[str, Any]:
    return {
        "episode_id": episode.episode_id, "task": episode.task, "domain": episode.domain,
        "run_id": episode.run_id, "run_index": episode.run_index, "source": episode.source,
        "policy_steps": episode.policy_steps, "seed": episode.seed, "return": episode.episode_return,
        "length": episode.length, "success": episode.success, "success_step": episode.success_step,
        "file": file, "row_offset": row_offset,
    }


def _column(name: str, values, arrow_type: pa.DataType, n: int) -> pa.Array:
    if name == OBS_TEXT:
        return pa.array(list(values), pa.string())
    if name == OBS_IMAGE:
        frames = np.ascontiguousarray(values, dtype=np.uint8).reshape(n, -1)
        width = frames.shape[1]
        offsets = pa.py_buffer(np.arange(0, (n + 1) * width, width, dtype=np.int32))
        return pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(frames.tobytes())])
    dtype = np.float32 if pa.types.is_floating(arrow_type.value_type) else np.int32
    matrix = np.ascontiguousarray(values, dtype=dtype).reshape(n, -1)
    width = matrix.shape[1]
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
