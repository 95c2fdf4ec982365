"""Reading a dataset: the manifest, the episode index, and episodes streamed from step files.

    ds = Dataset("runs/quickstart")
    ds.index                                  # pyarrow.Table, one row per episode
    ep = ds.episode(ds.index["episode_id"][0].as_py())
    for ep in ds.iter_episodes(tasks=["babyai/GoToLocal"]):
        ...

A row's ``file`` is relative to the root, or an absolute path / URI: curated views point at
their source's step files that way instead of copying them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shards.episode import Episode
from shards.format import (INDEX_FILE, INDEX_SCHEMA, MODALITY_TYPES, OBS_IMAGE, OBS_TEXT, OPTIONAL_INDEX_COLUMNS,
                           with_optional_columns)
from shards.manifest import Manifest, read_manifest
from shards.storage import Root


class ShardError(ValueError):
    """A dataset file is missing, unreadable, or does not match the index."""


class Dataset:
    """A GatoForge dataset root (local path or URI), read lazily."""

    def __init__(self, root: str | os.PathLike | Root) -> None:
        self.root = Root.of(root)

    @cached_property
    def manifest(self) -> Manifest:
        return read_manifest(self.root)

    @cached_property
    def index(self) -> pa.Table:
        return read_index(self.root)

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest.tasks)

    def __len__(self) -> int:
        return self.index.num_rows

    def __repr__(self) -> str:
        return f"Dataset({self.root.uri!r}, episodes={len(self)}, tasks={len(self.manifest.tasks)})"

    def episode(self, episode_id: int) -> Episode:
        """Read one episode by id, touching only the row groups that hold it."""
        matches = self.index.filter(pc.equal(self.index["episode_id"], episode_id))
        if matches.num_rows == 0:
            raise KeyError(f"episode_id {episode_id} is not in {self.root.path(INDEX_FILE)}")
        row = matches.slice(0, 1).to_pylist()[0]
        fs, path = self.resolve(row["file"])
        table = read_rows(fs, path, row["row_offset"], row["length"])
        return self._to_episode(row, table)

    def iter_episodes(self, tasks: Iterable[str] | None = None,
                      episode_ids: Iterable[int] | None = None) -> Iterator[Episode]:
        """Stream episodes file by file, row group by row group (memory stays flat)."""
        index = self.index
        if tasks is not None:
            index = index.filter(pc.is_in(index["task"], pa.array(list(tasks), pa.string())))
        if episode_ids is not None:
            index = index.filter(pc.is_in(index["episode_id"], pa.array(list(episode_ids), pa.int64())))
        rows = index.to_pylist()
        by_file: dict[str, list[dict]] = {}
        for row in rows:
            by_file.setdefault(row["file"], []).append(row)
        for file, file_rows in by_file.items():
            file_rows.sort(key=lambda r: r["row_offset"])
            fs, path = self.resolve(file)
            for row, table in iter_file_slices(fs, path, [(r["row_offset"], r["length"]) for r in file_rows], file_rows):
                yield self._to_episode(row, table)

    def resolve(self, file: str) -> tuple[pafs.FileSystem, str]:
        """Filesystem and path of an index row's ``file``."""
        if "://" in file:
            return pafs.FileSystem.from_uri(file)
        if file.startswith("/"):
            return (self.root.fs if self.root.is_local else pafs.LocalFileSystem()), file
        return self.root.fs, self.root.path(file)

    def _to_episode(self, row: dict, table: pa.Table) -> Episode:
        spec = self.manifest.tasks.get(row["task"])
        if spec is None:
            raise ShardError(f"episode {row['episode_id']}: task {row['task']!r} is not in {self.root.path('dataset.json')}")
        return table_to_episode(table, row, spec.image_shape)


def read_index(root: str | Root, dictionary: bool = False) -> pa.Table:
    """The episode index. With ``dictionary`` its string columns come back dictionary-encoded:
    the same values, about twice as fast to read and far cheaper to take rows from
    (curation reads million-row indexes this way; write_index writes such tables as is)."""
    root = Root.of(root)
    path = root.path(INDEX_FILE)
    if not root.exists(INDEX_FILE):
        raise ShardError(f"{path}: not found (is {root.uri} a GatoForge dataset root?)")
    encoded = [f.name for f in INDEX_SCHEMA if pa.types.is_string(f.type)] if dictionary else None
    try:
        with root.fs.open_input_file(path) as handle:
            table = pq.read_table(handle, read_dictionary=encoded)
    except (pa.ArrowInvalid, OSError) as error:
        raise ShardError(f"{path}: unreadable Parquet ({error})") from None
    missing = [n for n in INDEX_SCHEMA.names if n not in table.column_names and n not in OPTIONAL_INDEX_COLUMNS]
    if missing:
        raise ShardError(f"{path}: missing index column(s) {missing}")
    return with_optional_columns(table).select(INDEX_SCHEMA.names)


def open_parquet(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    """Open a step file, turning pyarrow's errors into one line that names the file."""
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except FileNotFoundError:
        raise ShardError(f"{path}: step file not found") from None
    except (pa.ArrowInvalid, OSError) as error:
        raise ShardError(f"{path}: unreadable Parquet ({error})") from None


def read_rows(fs: pafs.FileSystem, path: str, offset: int, length: int) -> pa.Table:
    """Rows [offset, offset + length) of a step file, reading only the row groups needed."""
    return next(iter_file_slices(fs, path, [(offset, length)], [None]))[1]


def iter_file_slices(fs: pafs.FileSystem, path: str, spans: list[tuple[int, int]],
                     tags: list) -> Iterator[tuple[object, pa.Table]]:
    """Yield (tag, rows) for each (offset, length) span, in ascending offset order,
    holding at most one row group plus one episode in memory."""
    parquet = open_parquet(fs, path)
    meta = parquet.metadata
    starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    cache: dict[int, pa.Table] = {}
    for (offset, length), tag in zip(spans, tags):
        end = offset + length
        if end > starts[-1] or offset < 0:
            raise ShardError(f"{path}: rows [{offset}, {end}) requested but the file has {starts[-1]} rows")
        first = int(np.searchsorted(starts, offset, side="right") - 1)
        last = int(np.searchsorted(starts, end - 1, side="right") - 1) if length else first
        for stale in [g for g in cache if g < first]:
            del cache[stale]
        pieces = []
        for group in range(first, last + 1):
            if group not in cache:
                try:
                    cache[group] = parquet.read_row_group(group)
                except (pa.ArrowInvalid, OSError) as error:
                    raise ShardError(f"{path}: row group {group} unreadable ({error})") from None
            pieces.append(cache[group])
        table = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
        yield tag, table.slice(offset - int(starts[first]), length)


def table_to_episode(table: pa.Table, row: dict, image_shape: tuple[int, ...] | None) -> Episode:
    """Step rows of one episode plus its index row -> Episode."""
    n = table.num_rows
    steps: dict[str, np.ndarray | list[str]] = {}
    for name in MODALITY_TYPES:
        if name not in table.column_names:
            continue
        column = table[name].combine_chunks()
        if name == OBS_TEXT:
            steps[name] = column.to_pylist()
        elif name == OBS_IMAGE:
            if image_shape is None:
                raise ShardError(f"{row['file']}: obs_image present but the manifest gives no image shape")
            steps[name] = binary_to_frames(column, image_shape)
        else:
            steps[name] = list_to_matrix(column, n)
    return Episode(
        task=row["task"], steps=steps,
        rewards=table["reward"].to_numpy(), terminated=table["terminated"].to_numpy(),
        truncated=table["truncated"].to_numpy(), run_id=row["run_id"], run_index=row["run_index"],
        source=row["source"], policy_steps=row["policy_steps"], seed=row["seed"],
        success=row["success"], success_step=row.get("success_step"), episode_id=row["episode_id"],
    )


def list_to_matrix(column: pa.Array, n: int) -> np.ndarray:
    """A list<> column with equal-length rows -> (n, width) numpy array, zero-copy when possible."""
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(n, -1)


def binary_to_frames(column: pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    n = len(column)
    if n == 0:
        return np.zeros((0, *shape), dtype=np.uint8)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=n + 1, offset=column.offset * 4)
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)
    return data[offsets[0]:offsets[-1]].reshape(n, *shape)
