"""The episodes of one or more dataset roots, grouped into read units and tokenized unit by unit.

    catalog = Catalog(["runs/quickstart", "s3://bucket/extra"], text_model)
    units = catalog.units("atari/pong", num_shards=4)   # lists of episode numbers
    unit = catalog.load_unit("atari/pong", units[0])      # UnitTokens: every step tokenized

A unit is the episodes whose first row lies in one row group of a step file, so reading a
unit reads one row group (plus the next when its last episode runs over): memory holds a
few row groups whatever the dataset's size. When a task has too few row groups to give every
loader shard two units, its row groups are cut into parts of consecutive episodes (a part
reads its row group, which the last few kept decoded row groups of its task usually already
hold).

Decoded frames and token arrays go into buffers that are reused once their unit is gone
(trainer/buffers.py), carved, in a DataLoader worker, from its store in the loader's shared
memory (``unit_store``, trainer/ring.py); image columns are decoded a few rows at a time
(``read_image_row_group``). Both keep a fresh worker off new pages, its main cost otherwise.

``start_read_ahead()`` adds background threads (READERS) that load units the sampler says it
will need next (``read_ahead(task, episodes)``), so Parquet decoding (which releases the GIL)
overlaps the planning and assembly of the sequences before them.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.format import OBS_IMAGE, OBS_TEXT
from shards.manifest import TaskSpec
from shards.reader import Dataset, ShardError, binary_to_frames, list_to_matrix, open_parquet
from trainer.buffers import BufferPool
from trainer.text_tokenizer import TextTokenizer
from trainer.tokenizer import StepLayout, StepTokens, text_cap, text_token_lengths, tokenize_steps

log = logging.getLogger(__name__)

OPEN_FILES = 16
CACHED_ROW_GROUPS = 8
"""decoded row groups kept at most per task (units that share a row group read it once)"""
CACHED_BYTES = 32 << 20
"""decoded row groups kept per task (for units that share one) up to this many bytes: a big row
group is its own unit, and keeping it would only grow the working set (fresh memory faults,
page by page). Per task, so that one task's big row groups do not push out another's small
shared one (Atari-like groups evicted a Meta-World-like group that its 8 units all read: it
was decoded 8 times a pass)"""
UNITS_PER_SHARD = 8
"""when row groups are too few for two units per loader shard, cut them into this many per shard"""
READERS = 2
"""threads that load hinted units ahead: with one, the sampler waited on a unit while the
reader was busy with another stream's (the bench's 1-worker pass, alternating runs of 3
passes: 0.262 of raw with one reader, 0.280 with two)"""
IMAGE_BATCH_ROWS = 64
"""rows of an image column decoded at a time (see ``read_image_row_group``)"""
UNIT_BUFFER_BYTES, UNIT_BUFFERS = 256 << 20, 64
"""free buffers of decoded frames and token arrays kept for reuse once their units are gone
(trainer/buffers.py): at most this many bytes and buffers"""
TOKEN_BYTES = 16
"""bytes a token takes while its unit is tokenized: int32 id, int16 position, bool loss, temporaries"""


@dataclass
class UnitTokens:
    """The tokenized steps of a unit's episodes, back to back. ``steps`` is None in a dry
    load, which only knows where each timestep starts (enough to plan sequences)."""

    task: str
    episodes: np.ndarray       # (E,) global episode numbers, in stream order
    token_starts: np.ndarray   # (E + 1,) where each episode starts in the unit's tokens
    step_offsets: np.ndarray   # (S + 1,) where each timestep starts
    steps: StepTokens | None
    sources: np.ndarray | None = None  # (E,) source code of each episode

    def __post_init__(self) -> None:
        self.num_tokens = int(self.step_offsets[-1])
        self._by_source: dict[int, list[int]] | None = None
        # Python lists for bisect: a numpy searchsorted on one scalar costs ~5 us, bisect ~0.3
        self.offsets = self.step_offsets.tolist()
        self.starts = self.token_starts.tolist()
        self.first_steps = np.searchsorted(self.step_offsets, self.token_starts).tolist()
        """the timestep each episode starts on (and the count of timesteps, last)"""
        widths = np.diff(self.step_offsets)
        self.step_width = int(widths[0]) if len(widths) and bool((widths == widths[0]).all()) else 0
        """tokens of every timestep when they all have as many (no text), else 0: the timestep
        holding token p is then p // step_width, where the sampler would bisect ``offsets``"""
        self.source_codes = self.sources.tolist() if self.sources is not None else None  # ints: cheap dict keys

    def episodes_of_source(self, source: int) -> list[int]:
        """Indices (into ``episodes``) of the episodes with this source code, ascending (a list:
        the sampler bisects it for one value, where a numpy searchsorted costs ~5-70 us)."""
        if self._by_source is None:
            self._by_source = {int(code): np.flatnonzero(self.sources == code).tolist() for code in np.unique(self.sources)}
        return self._by_source.get(int(source), [])

    def episode_at(self, position: int) -> int:
        """Index (into ``episodes``) of the episode holding token ``position``."""
        return bisect.bisect_right(self.starts, position) - 1

    def step_of(self, position: int) -> int:
        """Index of the timestep holding token ``position``."""
        return bisect.bisect_right(self.offsets, position) - 1


class Catalog:
    """Episode index of several roots as numpy columns, plus unit reading."""

    def __init__(self, roots: list[str], text_model: TextTokenizer | None = None, max_text_tokens: int = 128,
                 success_tail: int | None = None, vector_observations: bool = False,
                 token_observations: tuple[str, ...] = ()) -> None:
        if not roots:
            raise ValueError("no dataset roots given")
        self.roots = [str(r) for r in roots]
        self.text_model = text_model
        self.max_text_tokens = max_text_tokens
        self.datasets = [Dataset(r) for r in self.roots]
        self.specs: dict[str, TaskSpec] = {}
        columns: dict[str, list[np.ndarray]] = {
            k: [] for k in ("root", "episode_id", "task", "source", "file", "offset", "length", "success_step")}
        self.files: list[tuple[int, str]] = []
        file_codes: dict[tuple[int, str], int] = {}
        self.sources: list[str] = []
        source_codes: dict[str, int] = {}
        for root_index, dataset in enumerate(self.datasets):
            for task, spec in dataset.manifest.tasks.items():
                known = self.specs.get(task)
                if known is not None and (known.observation != spec.observation or known.action != spec.action):
                    raise ValueError(f"task {task!r} has different observation/action specs in {self.roots[0]} "
                                     f"and {self.roots[root_index]}")
                self.specs.setdefault(task, spec)
            index = dataset.index
            if index.num_rows == 0:
                continue
            tasks = index["task"].to_pylist()
            missing = sorted(set(tasks) - set(dataset.manifest.tasks))
            if missing:
                raise ShardError(f"{self.roots[root_index]}: episodes of task(s) {missing} are not in dataset.json")
            files = index["file"].to_pylist()
            sources = index["source"].to_pylist()
            columns["root"].append(np.full(index.num_rows, root_index, np.int64))
            columns["episode_id"].append(index["episode_id"].to_numpy())
            columns["task"].append(np.array(tasks, dtype=object))
            columns["source"].append(np.array([source_codes.setdefault(s, len(source_codes)) for s in sources], np.int64))
            columns["file"].append(np.array([file_codes.setdefault((root_index, f), len(file_codes)) for f in files], np.int64))
            columns["offset"].append(index["row_offset"].to_numpy())
            columns["length"].append(index["length"].to_numpy())
            columns["success_step"].append(index["success_step"].fill_null(-1).to_numpy())
        self.files = list(file_codes)
        self.sources = list(source_codes)
        if not columns["root"]:
            raise ValueError(f"the dataset roots {self.roots} hold no episodes")
        self.episode_root = np.concatenate(columns["root"])
        self.episode_id = np.concatenate(columns["episode_id"])
        task_objects = np.concatenate(columns["task"])
        self.task_names = sorted(set(task_objects.tolist()))
        codes = {t: i for i, t in enumerate(self.task_names)}
        self.episode_task = np.fromiter((codes[t] for t in task_objects), np.int64, count=len(task_objects))
        self.episode_source = np.concatenate(columns["source"])
        self.episode_file = np.concatenate(columns["file"])
        self.episode_offset = np.concatenate(columns["offset"])
        self.episode_length = np.concatenate(columns["length"])
        if success_tail is not None:
            self.episode_length = trim_after_success(self.episode_length, np.concatenate(columns["success_step"]),
                                                     success_tail)
        empty = self.episode_length <= 0
        if empty.any():
            log.warning("skipping %d episode(s) of length 0", int(empty.sum()))
        self.layouts = {task: _layout(task, self.specs[task], StepLayout.vector_for(
            task, self.specs[task], vector_observations, token_observations)) for task in self.task_names}
        self._footers: dict[int, np.ndarray] = {}
        self._open: OrderedDict[int, pq.ParquetFile] = OrderedDict()
        self._groups: dict[int, OrderedDict[tuple, pa.Table]] = {}  # task code -> (file, group, columns) -> table
        self._file_task = dict(zip(self.episode_file.tolist(), self.episode_task.tolist()))
        self._lock = threading.RLock()
        self._reader: ThreadPoolExecutor | None = None
        self._reader_pid = 0
        self._ahead: dict[tuple[str, int], Future] = {}
        self._pool: tuple[int, BufferPool] | None = None  # (pid, pool): a forked worker starts its own
        self.unit_store: tuple[np.ndarray, np.ndarray] | None = None
        """(memory, its high-water mark) that a worker carves unit buffers from (BatchRing.store)"""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_open=OrderedDict(), _groups={}, _lock=None, _reader=None, _ahead={}, _pool=None,
                     unit_store=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def start_read_ahead(self) -> None:
        """Load hinted units in one background thread (see ``read_ahead``) until ``stop_read_ahead``."""
        self.stop_read_ahead()
        self._lock = threading.RLock()  # fresh: a forked worker may have inherited a held one
        self._reader = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="gato-read-ahead")
        self._reader_pid = os.getpid()

    def stop_read_ahead(self) -> None:
        if self._reader is not None and self._reader_pid == os.getpid():  # a forked copy has no thread to stop
            self._reader.shutdown(wait=True, cancel_futures=True)
        self._reader = None
        self._ahead = {}

    def read_ahead(self, task: str, episodes: np.ndarray) -> None:
        """A hint: ``load_unit(task, episodes)`` will be asked for soon."""
        key = (task, int(episodes[0]))
        if self._reader is not None and key not in self._ahead:
            self._ahead[key] = self._reader.submit(self._load_full, task, episodes)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_id)

    def domain_of(self, task: str) -> str:
        return self.specs[task].domain

    def episodes_of(self, task: str) -> np.ndarray:
        """Episode numbers of ``task`` in file order (file, then row offset)."""
        selected = np.flatnonzero((self.episode_task == self.task_names.index(task)) & (self.episode_length > 0))
        order = np.lexsort((self.episode_offset[selected], self.episode_file[selected]))
        return selected[order]

    def units(self, task: str, num_shards: int = 1) -> list[np.ndarray]:
        """The task's read units (arrays of episode numbers), the same on every shard."""
        episodes = self.episodes_of(task)
        if len(episodes) == 0:
            return []
        groups = np.empty(len(episodes), np.int64)
        for file in np.unique(self.episode_file[episodes]):
            mask = self.episode_file[episodes] == file
            starts = self._row_group_starts(int(file))
            groups[mask] = np.searchsorted(starts, self.episode_offset[episodes[mask]], side="right") - 1
        keys = self.episode_file[episodes] * (1 << 32) + groups
        boundaries = np.flatnonzero(np.diff(keys)) + 1
        units = np.split(episodes, boundaries)
        if len(units) < 2 * num_shards:  # too few row groups for every shard: cut them into parts
            parts = -(-UNITS_PER_SHARD * num_shards // len(units))
            units = [part for unit in units for part in np.array_split(unit, min(parts, len(unit))) if len(part)]
        return units

    def load_unit(self, task: str, episodes: np.ndarray, full: bool = True) -> UnitTokens:
        """Tokenize a unit's episodes (``full``), or only work out where its timesteps start."""
        if full:
            ahead = self._ahead.pop((task, int(episodes[0])), None)
            if ahead is not None and not ahead.cancel():  # not started yet: load it here, beside the reader
                return ahead.result()
            return self._load_full(task, episodes)
        return self._load(task, episodes, full=False)

    def _load_full(self, task: str, episodes: np.ndarray) -> UnitTokens:
        return self._load(task, episodes, full=True)

    def _load(self, task: str, episodes: np.ndarray, full: bool) -> UnitTokens:
        layout = self.layouts[task]
        spec = self.specs[task]
        lengths = self.episode_length[episodes]
        step_starts = np.zeros(len(episodes) + 1, np.int64)
        np.cumsum(lengths, out=step_starts[1:])
        if full:
            table = self._read_rows(episodes, list(spec.observation) + list(spec.action))
            try:
                steps = tokenize_steps(table_to_steps(table, spec, self._buffers().take), spec, self.text_model,
                                       max_text_tokens=self.max_text_tokens, layout=layout, buffer_for=self._buffers().take)
            except ValueError as error:
                where = self.describe_episode(int(episodes[0]))
                more = f" (or one of the {len(episodes) - 1} episode(s) after it)" if len(episodes) > 1 else ""
                raise ShardError(f"task {task}, {where}{more}: {error}") from None
            offsets = steps.step_offsets
        else:
            steps = None
            step_lengths = np.full(int(step_starts[-1]), layout.min_step_tokens, np.int64)
            if layout.has_text:
                texts = self._read_rows(episodes, [OBS_TEXT])[OBS_TEXT]
                step_lengths += text_token_lengths(texts, self.text_model, layout, self.max_text_tokens)
            offsets = np.zeros(len(step_lengths) + 1, np.int64)
            np.cumsum(step_lengths, out=offsets[1:])
        return UnitTokens(task=task, episodes=episodes, token_starts=offsets[step_starts], step_offsets=offsets, steps=steps,
                          sources=self.episode_source[episodes])

    def describe_episode(self, number: int) -> str:
        root, file = self.files[int(self.episode_file[number])]
        return f"episode {int(self.episode_id[number])} ({self.roots[root]}/{file} rows {int(self.episode_offset[number])}+)"

    # ------------------------------------------------------------------ reading

    def _parquet(self, file: int) -> pq.ParquetFile:
        """An open reader of ``file`` for the calling thread (readers are not shared by threads,
        nor by a forked worker and its parent)."""
        key = (file, os.getpid(), threading.get_ident())
        with self._lock:
            handle = self._open.get(key)
            if handle is not None:
                self._open.move_to_end(key)
                return handle
        root, name = self.files[file]
        fs, path = self.datasets[root].resolve(name)
        handle = open_parquet(fs, path)
        with self._lock:
            self._open[key] = handle
            while len(self._open) > OPEN_FILES:
                self._open.popitem(last=False)
        return handle

    def _buffers(self) -> BufferPool:
        """This process's pool of buffers for decoded frames and tokenized units (a forked
        worker's writes into its parent's buffers would be copy-on-write faults, dearer than
        fresh pages); in a DataLoader worker they are carved from its store (``unit_store``)."""
        with self._lock:
            if self._pool is None or self._pool[0] != os.getpid():
                backing, high_water = self.unit_store or (None, None)
                self._pool = (os.getpid(), BufferPool(UNIT_BUFFER_BYTES, most_buffers=UNIT_BUFFERS, backing=backing,
                                                      high_water=high_water))
            return self._pool[1]

    def bytes_held(self, units_per_task: int) -> int:
        """About what a worker's units of ``units_per_task`` row groups per task take, decoded
        frames and token arrays with their temporaries (its tasks' prompt pools and the units
        in flight): the size of a worker's unit store."""
        total = 0
        for task in self.task_names:
            layout = self.layouts[task]
            files = np.unique(self.episode_file[self.episodes_of(task)])
            rows = max((int(np.diff(self._row_group_starts(int(f))).max(initial=0)) for f in files), default=0)
            step_tokens = layout.min_step_tokens + (text_cap(layout, self.max_text_tokens) if layout.has_text else 0)
            frame = int(np.prod(layout.image_shape)) if layout.patches else 0
            total += units_per_task * rows * (frame + TOKEN_BYTES * step_tokens)
        return total

    def _row_group_starts(self, file: int) -> np.ndarray:
        starts = self._footers.get(file)
        if starts is None:
            meta = self._parquet(file).metadata
            starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
            self._footers[file] = starts
        return starts

    def _row_group(self, file: int, group: int, columns: list[str]) -> pa.Table:
        """One decoded row group; the last few are kept, since small units share them. Threads
        decode side by side (pyarrow releases the GIL); only the cache is locked."""
        key = (file, group, tuple(columns))
        with self._lock:
            cache = self._groups.setdefault(self._file_task[file], OrderedDict())
            table = cache.get(key)
            if table is not None:
                cache.move_to_end(key)
                return table
        try:
            parquet = self._parquet(file)
            if OBS_IMAGE in columns:
                table = read_image_row_group(parquet, group, columns, self._buffers().take)
            else:
                table = parquet.read_row_group(group, columns=columns, use_threads=False)
        except (pa.ArrowInvalid, OSError, KeyError) as error:
            root, name = self.files[file]
            raise ShardError(f"{self.roots[root]}/{name}: row group {group} unreadable ({error})") from None
        with self._lock:
            cache[key] = table
            held = sum(t.nbytes for t in cache.values())
            while len(cache) > 1 and (len(cache) > CACHED_ROW_GROUPS or held > CACHED_BYTES):
                held -= cache.popitem(last=False)[1].nbytes
        return table

    def _read_rows(self, episodes: np.ndarray, columns: list[str]) -> pa.Table:
        """The rows of ``episodes`` (one file, ascending offsets), reading only the row groups
        and columns needed; a single slice when the episodes are contiguous."""
        files = np.unique(self.episode_file[episodes])
        if len(files) != 1:
            raise AssertionError("a unit spans several files")
        file = int(files[0])
        starts = self._row_group_starts(file)
        offsets = self.episode_offset[episodes]
        ends = offsets + self.episode_length[episodes]
        lo, hi = int(offsets.min()), int(ends.max())
        root, name = self.files[file]
        if hi > starts[-1]:
            raise ShardError(f"{self.roots[root]}/{name}: rows [{lo}, {hi}) requested but the file has {starts[-1]} rows")
        first = int(np.searchsorted(starts, lo, side="right") - 1)
        last = int(np.searchsorted(starts, hi - 1, side="right") - 1)
        pieces = [self._row_group(file, group, columns) for group in range(first, last + 1)]
        table = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
        base = int(starts[first])
        if len(episodes) == 1 or np.array_equal(offsets[1:], ends[:-1]):
            return table.slice(lo - base, hi - lo)
        return pa.concat_tables([table.slice(int(o) - base, int(e - o)) for o, e in zip(offsets, ends)])


def read_image_row_group(parquet: pq.ParquetFile, group: int, columns: list[str],
                         buffer_for: Callable[[int], np.ndarray] | None = None) -> pa.Table:
    """``parquet.read_row_group(group, columns)`` for a group with an ``obs_image`` column,
    decoded IMAGE_BATCH_ROWS rows at a time with the frames copied into one buffer
    (``buffer_for(nbytes)``, default fresh memory).

    Why: Arrow decodes a binary column into a builder that grows by doubling, so reading a
    22 MB column of frames in one go takes ~70 MB from the allocator; a fresh DataLoader
    worker gets that as new pages (a kernel fault and zeroing per page, the dominant cost of
    a worker's first passes over image data on the benchmark machine). Batch by batch the
    decoder reuses the same few MB, and the frames land in one buffer of their final size.
    Falls back to the plain read for frames of unequal sizes or with nulls."""
    rows = parquet.metadata.row_group(group).num_rows
    image = columns.index(OBS_IMAGE)
    frames: np.ndarray | None = None
    parts: list[list[pa.Array]] = [[] for _ in columns]
    at = width = 0
    for batch in parquet.iter_batches(batch_size=IMAGE_BATCH_ROWS, row_groups=[group], columns=columns, use_threads=False):
        column = batch.column(image)
        if column.type != pa.binary() or column.null_count:
            return parquet.read_row_group(group, columns=columns, use_threads=False)
        offsets = np.frombuffer(column.buffers()[1], np.int32, len(column) + 1, column.offset * 4)
        if frames is None:
            width = int(offsets[1] - offsets[0]) if len(column) else 0
            frames = buffer_for(rows * width) if buffer_for is not None else np.empty(rows * width, np.uint8)
        if int(offsets[-1] - offsets[0]) != width * len(column) or at + len(column) > rows:
            return parquet.read_row_group(group, columns=columns, use_threads=False)
        frames[at * width:(at + len(column)) * width] = np.frombuffer(column.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
        at += len(column)
        for index, part in enumerate(parts):
            if index != image:
                part.append(batch.column(index))
    if frames is None or at != rows:
        return parquet.read_row_group(group, columns=columns, use_threads=False)
    ends = np.arange(0, (rows + 1) * width, width, dtype=np.int64)
    if ends[-1] >= 1 << 31:
        return parquet.read_row_group(group, columns=columns, use_threads=False)
    arrays = [pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(ends.astype(np.int32)), pa.py_buffer(frames)])
              if index == image else pa.concat_arrays(part) for index, part in enumerate(parts)]
    return pa.Table.from_arrays(arrays, names=columns)


def _layout(task: str, spec: TaskSpec, vector_observations: bool) -> StepLayout:
    try:
        return StepLayout.of(spec, vector_observations)
    except ValueError as error:
        raise ValueError(f"task {task}: {error}") from None


def table_to_steps(table: pa.Table, spec: TaskSpec, buffer_for: Callable[[int], np.ndarray] | None = None) -> dict:
    """Step rows -> the column arrays tokenize_steps takes: zero-copy views of a column in one
    chunk; a column in several (a unit running into the next row group) is copied into one
    array from ``buffer_for(nbytes)`` (default fresh memory) rather than by Arrow's
    combine_chunks, which takes fresh pages from Arrow's allocator."""
    n = table.num_rows
    steps: dict = {}
    for column in table.column_names:
        data = table[column]
        if column == OBS_TEXT:
            steps[column] = data.chunk(0) if data.num_chunks == 1 else data.combine_chunks()  # tokenize_steps encodes the strings
            continue
        if column == OBS_IMAGE:
            parts = [binary_to_frames(chunk, spec.image_shape) for chunk in data.chunks]
        else:
            parts = [list_to_matrix(chunk, len(chunk)) for chunk in data.chunks]
        if len(parts) == 1:
            steps[column] = parts[0]
            continue
        parts = [part for part in parts if len(part)] or parts[:1]
        shape, dtype = (n, *parts[0].shape[1:]), parts[0].dtype
        out = (np.ndarray(shape, dtype, buffer_for(int(np.prod(shape)) * dtype.itemsize)) if buffer_for is not None
               else np.empty(shape, dtype))
        steps[column] = np.concatenate(parts, out=out)
    return steps


def trim_after_success(lengths: np.ndarray, success_step: np.ndarray, tail: int) -> np.ndarray:
    """Episode lengths cut ``tail`` steps after each episode's first success (``success_step``
    -1: none recorded, length kept). The steps kept are a prefix, so offsets stay valid."""
    if tail < 0:
        raise ValueError(f"success_tail={tail}: expected an integer >= 0 or None")
    cut = np.where(success_step >= 0, success_step + 1 + tail, lengths)
    return np.minimum(lengths, cut)
