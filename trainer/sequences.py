"""Planning L-token sequences for one loader shard (a worker of a rank).

Each task has a stream per shard: every epoch the task's read units are permuted with a seed
all shards share and shard ``s`` of ``S`` takes every S-th unit, so no two shards serve the
same episode in an epoch. A sequence is cut from the stream at a timestep boundary and holds
exactly L tokens: when an episode ends the next one follows (packing), and the final timestep
may be cut at L, in which case the next sequence starts with that whole timestep again. So
padding only appears when a finite stream (``passes``) runs out.

With probability ``prompt_probability`` a sequence starts with a prompt: whole timesteps of
another episode of the same task and source (from the recently read units), half the time
the end of that episode and half the time from a uniformly drawn timestep. A prompt that
cannot be had now (no such episode in memory) is owed and given to a later sequence.

A ``Plan`` says which token ranges of which units make up a sequence; trainer/assembly.py
turns a batch of plans into tensors. Every random draw happens while planning, and planning
needs only where timesteps start, so replaying plans without reading pixels (``dry``)
reproduces the exact state: that is how loaders resume.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from trainer.catalog import Catalog, UnitTokens

log = logging.getLogger(__name__)

NO_PROMPT, END_PROMPT, UNIFORM_PROMPT = 0, 1, 2
MAX_PROMPT_DEBT = 8
READ_AHEAD_UNITS = 2
"""units of each stream hinted to the read-ahead past the current one: with one, the reader
sat idle while the sampler worked through units it had already loaded, then made it wait"""


@dataclass(frozen=True)
class SamplerSettings:
    sequence_length: int = 1024
    prompt_probability: float = 0.25
    prompt_end_probability: float = 0.5
    prompt_fraction: float = 0.25
    shuffle_buffer: int = 64
    seed: int = 0
    passes: int | None = None
    prompt_pool_units: int = 3
    provenance: bool = False
    memoryless: tuple[str, ...] = ()


@dataclass(slots=True)
class Piece:
    """Tokens [start, end) of one unit; ``tokens`` is the unit as loaded when planning (a dry
    load during a replay, which assembly swaps for a full one)."""

    task: str
    unit: int
    start: int
    end: int
    tokens: UnitTokens


@dataclass(slots=True)
class Plan:
    """The pieces that make up one sequence, prompt first."""

    task: str
    pieces: list[Piece]
    prompt_kind: int = NO_PROMPT
    prompt_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(p.end - p.start for p in self.pieces)


@dataclass
class TaskStream:
    """One task's endless (or ``passes``-long) stream of units on one shard."""

    task: str
    task_index: int
    units: list[np.ndarray]
    shard: int
    num_shards: int
    seed: int
    passes: int | None
    pool_size: int
    epoch: int = 0
    order: list[int] = field(default_factory=list)
    position: int = 0        # index into ``order`` of the current unit
    cursor: int = 0          # token offset inside the current unit
    done: bool = False
    pool: OrderedDict = field(default_factory=OrderedDict)  # unit index -> UnitTokens (recent units)
    pool_version: int = 0    # bumped whenever ``pool`` changes (keys or values)
    prompt_sources: dict = field(default_factory=dict)  # source -> (pool_version, candidates, count): see _prompt

    def __post_init__(self) -> None:
        self.order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        permutation = np.random.default_rng([self.seed, self.task_index, epoch]).permutation(len(self.units))
        return [int(u) for u in permutation[self.shard::self.num_shards]]

    def upcoming(self, count: int = READ_AHEAD_UNITS) -> list[int]:
        """The units this stream reads after the current one in this epoch (for read-ahead)."""
        return self.order[self.position + 1:self.position + 1 + count]


class Draws:
    """Uniform draws in [0, 1) from a seeded generator, fetched in blocks: one numpy call per
    draw would cost more than everything else a plan does. ``random`` is the C-level
    ``__next__`` of an iterator over the blocks (a Python method call per draw cost ~0.5 us,
    and a plan makes three or four)."""

    BLOCK = 1024

    def __init__(self, seed: list[int]) -> None:
        self.rng = np.random.default_rng(seed)
        self.random = itertools.chain.from_iterable(self._blocks()).__next__

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        return min(int(self.random() * n), n - 1)

    def _blocks(self) -> Iterator[list[float]]:
        while True:
            yield self.rng.random(self.BLOCK).tolist()


class ShardSampler:
    """Plans sequences for one shard and shuffles them through a buffer."""

    def __init__(self, catalog: Catalog, weights: dict[str, float], settings: SamplerSettings,
                 shard: int, num_shards: int) -> None:
        self.catalog = catalog
        self.settings = settings
        self.shard, self.num_shards = shard, num_shards
        self.draws = Draws([settings.seed, shard, num_shards, 2])
        self.streams: dict[str, TaskStream] = {}
        for task, weight in weights.items():
            if weight <= 0:
                continue
            units = catalog.units(task, num_shards)
            stream = TaskStream(task, catalog.task_names.index(task), units, shard, num_shards, settings.seed,
                                settings.passes, max(1, settings.prompt_pool_units))
            if len(units) > shard:  # each epoch gives this shard units[shard::num_shards]
                self.streams[task] = stream
            else:
                log.warning("task %s has %d read unit(s): shard %d of %d gets none of it", task, len(units), shard, num_shards)
        if not self.streams:
            raise ValueError(f"loader shard {shard} of {num_shards} gets no episodes: the datasets are too small "
                             f"for {num_shards} shards (ranks x workers)")
        self.tasks = list(self.streams)
        self._task_streams = list(self.streams.values())  # in ``tasks`` order
        self.weights = [weights[t] for t in self.tasks]
        self.active = [True] * len(self.tasks)
        # Python floats (the same float64 values): bisecting a list of numpy scalars, and
        # multiplying by one, cost several times more per plan
        self._cumulative = np.cumsum(self.weights).tolist()
        self.prompt_debt = 0
        self.buffer: list[Plan] = []
        self.dry = False
        self.read_ahead = None  # callable(task, unit_episodes): a hint that a unit will be loaded soon

    # -------------------------------------------------------------- generation

    def __iter__(self) -> Iterator[Plan]:
        size = max(1, self.settings.shuffle_buffer)
        buffer, next_plan, random = self.buffer, self.next_plan, self.draws.random
        while True:
            plan = next_plan()
            if plan is None:
                break
            held = len(buffer)
            if held < size:
                buffer.append(plan)
                continue
            slot = int(random() * held)  # Draws.below, inline: a call cost more than the rest of a swap
            if slot >= held:
                slot = held - 1
            out, buffer[slot] = buffer[slot], plan
            yield out
        while self.buffer:
            slot = self.draws.below(len(self.buffer))
            self.buffer[slot], self.buffer[-1] = self.buffer[-1], self.buffer[slot]
            yield self.buffer.pop()

    def fast_forward(self, iterator: Iterator[Plan], count: int) -> None:
        """Replay ``count`` sequences without reading pixels: the sampler is then exactly where
        it was after ``count`` sequences (the buffered plans get full units when assembled)."""
        self.dry = True
        for _ in range(count):
            if next(iterator, None) is None:
                break
        self.dry = False

    def read_first_units(self) -> None:
        """Hint every stream's next unit to the read-ahead, so the first ones load side by side."""
        if self.read_ahead is None:
            return
        for stream in self.streams.values():
            if not stream.done and stream.position < len(stream.order):
                unit = stream.order[stream.position]
                if unit not in stream.pool:
                    self.read_ahead(stream.task, stream.units[unit])

    def full_unit(self, piece: Piece) -> UnitTokens:
        """The piece's unit with its tokens (loaded again when the plan was made dry)."""
        if piece.tokens.steps is not None:
            return piece.tokens
        stream = self.streams[piece.task]
        pooled = stream.pool.get(piece.unit)
        if pooled is None or pooled.steps is None:
            pooled = self.catalog.load_unit(piece.task, stream.units[piece.unit], full=True)
            if piece.unit in stream.pool:
                stream.pool[piece.unit] = pooled
                stream.pool_version += 1
        piece.tokens = pooled
        return pooled

    def next_plan(self) -> Plan | None:
        """Choose a task by weight, maybe a prompt, then L tokens of the task's stream."""
        settings = self.settings
        length = settings.sequence_length
        random = self.draws.random
        while self._cumulative[-1] > 0:
            cumulative = self._cumulative
            index = bisect.bisect_right(cumulative, random() * cumulative[-1])
            if index >= len(cumulative):
                index = len(cumulative) - 1
            stream = self._task_streams[index]
            head = self._head(stream)
            if head is None:
                self.active[index] = False
                self._cumulative = np.cumsum([w if a else 0.0 for w, a in zip(self.weights, self.active)]).tolist()
                continue
            if random() < settings.prompt_probability:
                self.prompt_debt = min(self.prompt_debt + 1, MAX_PROMPT_DEBT)
            pieces: list[Piece] = []
            kind = NO_PROMPT
            prompt_tokens = 0
            if self.prompt_debt:
                prompt = self._prompt(stream, head[0], head[1], int(length * settings.prompt_fraction))
                if prompt is not None:
                    kind, piece = prompt
                    pieces.append(piece)
                    prompt_tokens = piece.end - piece.start
                    self.prompt_debt -= 1
            self._take(stream, length - prompt_tokens, pieces, head)
            return Plan(stream.task, pieces, kind, prompt_tokens)
        return None

    # -------------------------------------------------------------- streams

    def _head(self, stream: TaskStream) -> tuple[int, int] | None:
        """(unit index, token offset) where the stream continues, loading units as needed."""
        if stream.position < len(stream.order):  # the usual case: inside a unit in the pool
            tokens = stream.pool.get(stream.order[stream.position])
            if tokens is not None and stream.cursor < tokens.num_tokens:
                return stream.order[stream.position], stream.cursor
        while not stream.done:
            if stream.position < len(stream.order):
                unit = stream.order[stream.position]
                tokens = self._unit(stream, unit)
                if stream.cursor < tokens.num_tokens:
                    return unit, stream.cursor
                stream.position += 1
                stream.cursor = 0
                continue
            stream.epoch += 1
            if stream.passes is not None and stream.epoch >= stream.passes:
                stream.done = True
                break
            stream.order = stream._epoch_order(stream.epoch)
            stream.position = 0
            if not stream.order:
                stream.done = True
        return None

    def _take(self, stream: TaskStream, budget: int, pieces: list[Piece], head: tuple[int, int] | None) -> None:
        """Append pieces of ``budget`` tokens of the stream to ``pieces``, starting at ``head``
        (where the stream continues now, as ``_head`` just said)."""
        first = True
        while budget > 0:
            if head is None:
                head = self._head(stream)
                if head is None:
                    break
            unit, start = head
            head = None
            tokens = stream.pool[unit]
            end = start + budget
            if end >= tokens.num_tokens:  # the rest of the unit; the stream goes on in the next one
                end = stream.cursor = tokens.num_tokens
                pieces.append(Piece(stream.task, unit, start, end, tokens))
                budget -= end - start
                first = False
                continue
            pieces.append(Piece(stream.task, unit, start, end, tokens))
            # the timestep holding token ``end`` was cut: the next sequence starts with it whole
            offsets = tokens.offsets
            width = tokens.step_width
            step = end // width if width else bisect.bisect_right(offsets, end) - 1  # tokens.step_of(end), without the call
            restart = offsets[step]
            if restart <= start and first:  # one timestep longer than the budget: skip the rest of it
                restart = offsets[step + 1]
            stream.cursor = restart
            return

    def _unit(self, stream: TaskStream, unit: int) -> UnitTokens:
        tokens = stream.pool.get(unit)
        if tokens is None:
            tokens = self.catalog.load_unit(stream.task, stream.units[unit], full=not self.dry)
            stream.pool[unit] = tokens
            stream.pool_version += 1
            if self.read_ahead is not None and not self.dry:
                for upcoming in stream.upcoming():
                    self.read_ahead(stream.task, stream.units[upcoming])
            # keep at least two sequences' worth of tokens so a plan's pieces stay in memory
            floor = 2 * self.settings.sequence_length
            held = sum(t.num_tokens for t in stream.pool.values())
            while len(stream.pool) > stream.pool_size:
                oldest = next(iter(stream.pool.values()))
                if held - oldest.num_tokens < floor:
                    break
                held -= oldest.num_tokens
                stream.pool.popitem(last=False)  # plans holding its pieces keep it alive
                stream.pool_version += 1
        return tokens

    def _prompt(self, stream: TaskStream, unit: int, position: int, budget: int) -> tuple[int, Piece] | None:
        """A prompt piece from another episode of the same task and source, or None."""
        if budget <= 0:
            return None
        current = stream.pool[unit]
        own = bisect.bisect_right(current.starts, position) - 1  # current.episode_at(position), without the call
        source = current.source_codes[own]
        # the pool's episodes of that source, kept until the pool changes (most prompts draw from the same pool)
        cached = stream.prompt_sources.get(source)
        if cached is None or cached[0] != stream.pool_version:
            candidates = [(u, tokens, tokens.episodes_of_source(source)) for u, tokens in stream.pool.items()]
            cached = stream.prompt_sources[source] = (stream.pool_version, candidates,
                                                      sum(len(found) for _, _, found in candidates))
        candidates = cached[1]
        total = cached[2] - 1  # every pool episode of that source but its own
        if total <= 0:
            return None
        pick = self.draws.below(total)
        for pool_unit, tokens, found in candidates:
            count = len(found) - (tokens is current)
            if pick < count:
                if tokens is current and pick >= bisect.bisect_left(found, own):
                    pick += 1  # step over its own episode
                index = found[pick]
                break
            pick -= count
        last = tokens.starts[index + 1]
        offsets = tokens.offsets
        lo, hi = tokens.first_steps[index], tokens.first_steps[index + 1] + 1  # its step boundaries
        steps = hi - lo
        # the end prompt: the most final timesteps that fit the budget (at least one)
        end_start = bisect.bisect_left(offsets, last - budget, lo, hi) - lo
        if end_start >= steps - 1:
            end_start = steps - 2
        draws = self.draws
        kind = END_PROMPT if draws.random() < self.settings.prompt_end_probability else UNIFORM_PROMPT
        start = end_start if kind == END_PROMPT else draws.below(end_start + 1)
        begin = offsets[lo + start]
        stop = max(bisect.bisect_right(offsets, begin + budget, lo, hi) - 1 - lo, start + 1)
        piece = Piece(stream.task, pool_unit, begin, offsets[lo + stop], tokens)
        if piece.end - piece.start > self.settings.sequence_length // 2:
            return None
        return kind, piece


def max_patches_per_sequence(catalog: Catalog, sequence_length: int) -> int:
    """An upper bound on image patches in one sequence: whole timesteps carry P of their s
    tokens as patches, and only the final (cut) timestep can carry more than its share."""
    bound = 0
    for layout in catalog.layouts.values():
        if layout.patches:
            bound = max(bound, sequence_length * layout.patches // layout.min_step_tokens + layout.patches)
    return min(bound, sequence_length)


def max_frames_per_sequence(catalog: Catalog, sequence_length: int) -> tuple[int, int]:
    """Upper bounds on the frames one sequence draws patches from and on their bytes: whole
    timesteps of s tokens, plus the cut final one and a prompt's own boundary."""
    frames = frame_bytes = 0
    for layout in catalog.layouts.values():
        if layout.patches:
            count = min(sequence_length // layout.min_step_tokens + 2, sequence_length)
            frames = max(frames, count)
            frame_bytes = max(frame_bytes, count * int(np.prod(layout.image_shape)))
    return frames, frame_bytes
