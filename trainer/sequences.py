"""Planning and assembling L-token sequences for one loader shard (a worker of a rank).

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

Every random draw happens while planning (``Plan``), never while assembling, so replaying
plans without reading pixels reproduces the exact state: that is how loaders resume.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from trainer.catalog import Catalog, UnitTokens
from trainer.patches import PATCH_SIZE, patch_intervals
from trainer.tokenizer import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)

NO_PROMPT, END_PROMPT, UNIFORM_PROMPT = 0, 1, 2
MAX_PROMPT_DEBT = 8


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


@dataclass
class Plan:
    """Which token ranges make up a sequence: ``pieces`` are (task, unit, start, end)."""

    task: str
    pieces: list[tuple[str, int, int, int]]
    prompt_kind: int = NO_PROMPT
    prompt_tokens: int = 0


@dataclass
class Assembled:
    """A sequence before padding: compact dtypes (uint8 pixels) for a cheap shuffle buffer."""

    tokens: np.ndarray           # (n,) int32
    loss_mask: np.ndarray        # (n,) bool
    local_positions: np.ndarray  # (n,) int16
    raw_patches: np.ndarray      # (p, C, 16, 16) uint8
    patch_rows: np.ndarray       # (p, 2) float32
    patch_cols: np.ndarray       # (p, 2) float32
    token_episode: np.ndarray    # (n,) int64 global episode number
    token_offset: np.ndarray     # (n,) int64 offset inside that episode's tokens
    is_prompt: np.ndarray        # (n,) bool
    prompt_kind: int = NO_PROMPT


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

    def __post_init__(self) -> None:
        self.order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        permutation = np.random.default_rng([self.seed, self.task_index, epoch]).permutation(len(self.units))
        return [int(u) for u in permutation[self.shard::self.num_shards]]


class ShardSampler:
    """Plans sequences for one shard and assembles them (or, ``dry``, only plans them)."""

    def __init__(self, catalog: Catalog, weights: dict[str, float], settings: SamplerSettings,
                 shard: int, num_shards: int) -> None:
        self.catalog = catalog
        self.settings = settings
        self.shard, self.num_shards = shard, num_shards
        self.rng = np.random.default_rng([settings.seed, shard, num_shards, 1])
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
        self.weights = np.array([weights[t] for t in self.tasks], dtype=np.float64)
        self.active = np.ones(len(self.tasks), dtype=bool)
        self.prompt_debt = 0
        self.buffer: list[tuple[Plan, Assembled | None]] = []
        self.dry = False
        # units the plan being made pushed out of a pool: its pieces may still point into them
        # (a prompt from the oldest unit), so assembly finds them here instead of reading again
        self.evicted: dict[tuple[str, int], UnitTokens] = {}

    # -------------------------------------------------------------- generation

    def __iter__(self) -> Iterator[tuple[Plan, Assembled | None]]:
        size = max(1, self.settings.shuffle_buffer)
        while True:
            plan = self.next_plan()
            if plan is None:
                break
            item = (plan, None if self.dry else self.assemble(plan))
            self.evicted.clear()
            if len(self.buffer) < size:
                self.buffer.append(item)
                continue
            slot = int(self.rng.integers(len(self.buffer)))
            out, self.buffer[slot] = self.buffer[slot], item
            yield out
        while self.buffer:
            slot = int(self.rng.integers(len(self.buffer)))
            self.buffer[slot], self.buffer[-1] = self.buffer[-1], self.buffer[slot]
            yield self.buffer.pop()

    def fast_forward(self, iterator: Iterator, count: int) -> None:
        """Replay ``count`` sequences without reading pixels, then assemble what the shuffle
        buffer holds: the sampler is then exactly where it was after ``count`` sequences."""
        self.dry = True
        for _ in range(count):
            if next(iterator, None) is None:
                break
        self.dry = False
        self.buffer = [(plan, self.assemble(plan)) for plan, _ in self.buffer]

    def next_plan(self) -> Plan | None:
        """Choose a task by weight, maybe a prompt, then L tokens of the task's stream."""
        length = self.settings.sequence_length
        while self.active.any():
            cumulative = np.cumsum(self.weights * self.active)
            index = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
            index = min(index, len(self.tasks) - 1)
            stream = self.streams[self.tasks[index]]
            head = self._head(stream)
            if head is None:
                self.active[index] = False
                continue
            unit, position = head
            wants = self.rng.random() < self.settings.prompt_probability
            if wants:
                self.prompt_debt = min(self.prompt_debt + 1, MAX_PROMPT_DEBT)
            pieces: list[tuple[str, int, int, int]] = []
            kind = NO_PROMPT
            if self.prompt_debt:
                prompt = self._prompt(stream, unit, position, int(length * self.settings.prompt_fraction))
                if prompt is not None:
                    kind, piece = prompt
                    pieces.append(piece)
                    self.prompt_debt -= 1
            prompt_tokens = sum(e - s for _, _, s, e in pieces)
            pieces += self._take(stream, length - prompt_tokens)
            return Plan(stream.task, pieces, kind, prompt_tokens)
        return None

    # -------------------------------------------------------------- streams

    def _head(self, stream: TaskStream) -> tuple[int, int] | None:
        """(unit index, token offset) where the stream continues, loading units as needed."""
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

    def _take(self, stream: TaskStream, budget: int) -> list[tuple[str, int, int, int]]:
        pieces: list[tuple[str, int, int, int]] = []
        while budget > 0:
            head = self._head(stream)
            if head is None:
                break
            unit, start = head
            first_piece = not pieces
            tokens = self._unit(stream, unit)
            end = min(tokens.num_tokens, start + budget)
            pieces.append((stream.task, unit, start, end))
            budget -= end - start
            if end == tokens.num_tokens:
                stream.cursor = end
                continue
            # the timestep holding token ``end`` was cut: the next sequence starts with it whole
            step = int(np.searchsorted(tokens.step_offsets, end, side="right") - 1)
            restart = int(tokens.step_offsets[step])
            if restart <= start and first_piece:  # one timestep longer than the budget: skip the rest of it
                restart = int(tokens.step_offsets[step + 1])
            stream.cursor = restart
        return pieces

    def _unit(self, stream: TaskStream, unit: int) -> UnitTokens:
        tokens = stream.pool.get(unit)
        if tokens is None:
            tokens = self.catalog.load_unit(stream.task, stream.units[unit], full=not self.dry)
            stream.pool[unit] = tokens
            # keep at least two sequences' worth of tokens so a plan's pieces stay in memory
            floor = 2 * self.settings.sequence_length
            held = sum(t.num_tokens for t in stream.pool.values())
            while len(stream.pool) > stream.pool_size:
                oldest = next(iter(stream.pool.values()))
                if held - oldest.num_tokens < floor:
                    break
                held -= oldest.num_tokens
                gone, _ = stream.pool.popitem(last=False)
                if not self.dry:
                    self.evicted[(stream.task, gone)] = oldest
        return tokens

    def _prompt(self, stream: TaskStream, unit: int, position: int, budget: int) -> tuple[int, tuple] | None:
        """A prompt piece from another episode of the same task and source, or None."""
        current = stream.pool[unit]
        episode = int(current.episodes[current.episode_at(position)])
        source = self.catalog.episode_source[episode]
        matches = [(u, np.flatnonzero((self.catalog.episode_source[tokens.episodes] == source) & (tokens.episodes != episode)))
                   for u, tokens in stream.pool.items()]
        total = sum(len(m) for _, m in matches)
        if not total or budget <= 0:
            return None
        pick = int(self.rng.integers(total))
        for pool_unit, found in matches:
            if pick < len(found):
                index = int(found[pick])
                break
            pick -= len(found)
        tokens = stream.pool[pool_unit]
        first, last = int(tokens.token_starts[index]), int(tokens.token_starts[index + 1])
        offsets = tokens.step_offsets
        steps = offsets[np.searchsorted(offsets, first):np.searchsorted(offsets, last, side="right")]  # its step boundaries
        # the end prompt: the most final timesteps that fit the budget (at least one)
        fits = np.flatnonzero(last - steps <= budget)
        end_start = int(fits[0]) if len(fits) and fits[0] < len(steps) - 1 else len(steps) - 2
        kind = END_PROMPT if self.rng.random() < self.settings.prompt_end_probability else UNIFORM_PROMPT
        if kind == END_PROMPT:
            start = end_start
        else:
            start = int(self.rng.integers(end_start + 1))
        stop = int(np.searchsorted(steps, steps[start] + budget, side="right") - 1)
        stop = max(stop, start + 1)
        prompt = (stream.task, pool_unit, int(steps[start]), int(steps[stop]))
        if prompt[3] - prompt[2] > self.settings.sequence_length // 2:
            return None
        return kind, prompt

    # -------------------------------------------------------------- assembly

    def assemble(self, plan: Plan) -> Assembled:
        """Slice the plan's token ranges out of their units; pixels become uint8 patches."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tokens", "loss", "local", "patches", "rows", "cols",
                                                                "episode", "offset", "prompt")}
        prompt_left = plan.prompt_tokens
        for task, unit, start, end in plan.pieces:
            stream = self.streams[task]
            tokens = stream.pool.get(unit) or self.evicted.get((task, unit))
            if tokens is None or tokens.steps is None:
                tokens = self.catalog.load_unit(task, stream.units[unit], full=True)
                if unit in stream.pool:
                    stream.pool[unit] = tokens
            steps = tokens.steps
            window = slice(start, end)
            ids = steps.tokens[window]
            parts["tokens"].append(ids)
            parts["loss"].append(steps.loss_mask[window])
            parts["local"].append(steps.local_positions[window])
            size = end - start
            if self.settings.provenance:
                positions = np.arange(start, end)
                owner = np.searchsorted(tokens.token_starts, positions, side="right") - 1
                parts["episode"].append(tokens.episodes[owner])
                parts["offset"].append(positions - tokens.token_starts[owner])
                parts["prompt"].append(np.full(size, prompt_left > 0))
            prompt_left -= size
            image_positions = np.flatnonzero(ids == IMAGE_PLACEHOLDER) + start
            if len(image_positions):
                layout = steps.layout
                step = np.searchsorted(steps.step_offsets, image_positions, side="right") - 1
                patch = image_positions - steps.step_offsets[step] - layout.image_start
                # a piece's patches are consecutive in (step, patch) order: one slice, a view
                # (a copy would write every pixel once more); the shuffle buffer then keeps the
                # units its sequences come from alive: a few recent units per task
                flat = steps.patches.reshape(-1, *steps.patches.shape[2:])
                first = int(step[0]) * layout.patches + int(patch[0])
                parts["patches"].append(flat[first:first + len(image_positions)])
                rows, cols = _intervals(tuple(layout.image_shape[:2]))
                parts["rows"].append(rows[patch])
                parts["cols"].append(cols[patch])
        channels = max((p.shape[1] for p in parts["patches"]), default=1)
        patches = [p if p.shape[1] == channels else _pad_channels(p, channels) for p in parts["patches"]]
        return Assembled(
            tokens=np.concatenate(parts["tokens"]) if parts["tokens"] else np.zeros(0, np.int32),
            loss_mask=np.concatenate(parts["loss"]) if parts["loss"] else np.zeros(0, bool),
            local_positions=np.concatenate(parts["local"]) if parts["local"] else np.zeros(0, np.int16),
            raw_patches=(np.concatenate(patches) if len(patches) > 1 else patches[0] if patches
                         else np.zeros((0, 1, PATCH_SIZE, PATCH_SIZE), np.uint8)),
            patch_rows=np.concatenate(parts["rows"]) if parts["rows"] else np.zeros((0, 2), np.float32),
            patch_cols=np.concatenate(parts["cols"]) if parts["cols"] else np.zeros((0, 2), np.float32),
            token_episode=np.concatenate(parts["episode"]) if parts["episode"] else np.zeros(0, np.int64),
            token_offset=np.concatenate(parts["offset"]) if parts["offset"] else np.zeros(0, np.int64),
            is_prompt=np.concatenate(parts["prompt"]) if parts["prompt"] else np.zeros(0, bool),
            prompt_kind=plan.prompt_kind,
        )


def max_patches_per_sequence(catalog: Catalog, sequence_length: int) -> int:
    """An upper bound on image patches in one sequence: whole timesteps carry P of their s
    tokens as patches, and only the final (cut) timestep can carry more than its share."""
    bound = 0
    for layout in catalog.layouts.values():
        if layout.patches:
            bound = max(bound, sequence_length * layout.patches // layout.min_step_tokens + layout.patches)
    return min(bound, sequence_length) if bound else 1


@functools.lru_cache(maxsize=64)
def _intervals(image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return patch_intervals(image_hw)


def _pad_channels(patches: np.ndarray, channels: int) -> np.ndarray:
    out = np.zeros((patches.shape[0], channels, PATCH_SIZE, PATCH_SIZE), np.uint8)
    out[:, :patches.shape[1]] = patches
    return out

