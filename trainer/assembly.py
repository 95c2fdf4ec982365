"""Batches of plans -> the contract's tensors, written in place into one flat buffer.

    layout, real = write_batch(plans, sampler, buffer_for)   # in the process that plans (a worker)
    batch = as_tensors(layout, torch.from_numpy(buffer))   # where the batch is used: no copy

    writer = BatchWriter(sampler); writer.add(plans_a); writer.add(plans_b)   # a worker's message
    layout, reals = writer.write(buffer_for)                 # both batches' rows as one block
    batch_a, batch_b = split_rows(layout, torch.from_numpy(buffer), writer.batch_rows)

Every array of a batch (trainer/data.py lists the keys) lives in one byte buffer: in a
DataLoader worker that is shared memory (trainer/ring.py), so the training process wraps
the arrays as tensors where they are instead of receiving or converting anything.
``write_batch`` (a ``BatchWriter`` of one batch) fills the buffer with one ``np.concatenate``
of every piece's slices per array (the units' int32 ids and int16 positions widen to int64
on the way) and a few whole-batch numpy calls for the masks; image frames are copied as stored, a memcpy each (cutting them into
16x16 patches, a strided copy at a third of memcpy's speed, is left to the model on its
device, like the pixel scaling). Every byte of the layout is written, so a buffer can be
reused without clearing it.
"""

from __future__ import annotations

import bisect
import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainer.patches import patch_intervals
from trainer.tokenizer import IMAGE_PLACEHOLDER, PAD, VECTOR_WIDTH, place_vectors


@dataclass(frozen=True)
class BatchLayout:
    """Where each array of a batch lives in one byte buffer: ``size`` sequences of ``length``
    tokens with ``patches`` image tokens cut from ``frames`` frames of ``frame_bytes`` pixels."""

    size: int
    length: int
    patches: int
    frames: int
    frame_bytes: int
    observation_targets: bool = False
    provenance: bool = False
    vectors: bool = False
    segments: bool = False

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def of(*key) -> BatchLayout:
        """The layout of ``key()`` (one object per key: its offsets are worked out once; a
        batch's layout and views cost ~20 us a batch on both sides when they were not)."""
        return BatchLayout(*key)

    @property
    def fields(self) -> dict[str, tuple[int, tuple[int, ...], np.dtype]]:
        return self._packed[0]

    @property
    def nbytes(self) -> int:
        return self._packed[1]

    def key(self) -> tuple:
        return (self.size, self.length, self.patches, self.frames, self.frame_bytes, self.observation_targets,
                self.provenance, self.vectors, self.segments)

    def views(self, buffer: np.ndarray) -> dict[str, np.ndarray]:
        """Numpy views of the arrays inside ``buffer`` (uint8, at least ``nbytes``; each view's
        base is ``buffer``, so the buffer lives as long as any of them)."""
        return {key: np.ndarray(shape, dtype, buffer, offset) for key, offset, shape, dtype in self._specs}

    @functools.cached_property
    def _packed(self) -> tuple[dict[str, tuple[int, tuple[int, ...], np.dtype]], int]:
        return _fields(*self.key())

    @functools.cached_property
    def _specs(self) -> tuple[tuple[str, int, tuple[int, ...], np.dtype], ...]:
        return tuple((key, offset, shape, dtype) for key, (offset, shape, dtype) in self.fields.items())

    @staticmethod
    def max_bytes(size: int, length: int, patches_per_sequence: int, frames_per_sequence: int,
                  frame_bytes_per_sequence: int, observation_targets: bool = False, provenance: bool = False,
                  vectors: bool = False, segments: bool = False) -> int:
        """The largest batch of these sizes (what shared memory must hold for it)."""
        return BatchLayout(size, length, size * patches_per_sequence, size * frames_per_sequence,
                           size * frame_bytes_per_sequence, observation_targets, provenance, vectors, segments).nbytes


def write_batch(plans: list, sampler, buffer_for: Callable[[int], np.ndarray],
                observation_targets: bool = False) -> tuple[BatchLayout, int]:
    """Write ``plans`` (trainer.sequences.Plan) as one batch into ``buffer_for(nbytes)``;
    returns its layout and its count of real (not padding) tokens."""
    writer = BatchWriter(sampler, observation_targets)
    writer.add(plans)
    layout, real = writer.write(buffer_for)
    return layout, sum(real)


class BatchWriter:
    """Several batches' plans written as one block of rows: a DataLoader worker sends a
    message of up to 16 batches, and writing them together costs one layout, one buffer and
    one ``np.concatenate`` per array for the message instead of per batch (at 8 rows a batch
    those fixed costs were about half of writing). ``split_rows`` cuts the block back into
    the batches where they are used."""

    def __init__(self, sampler, observation_targets: bool = False) -> None:
        self.sampler = sampler
        self.observation_targets = observation_targets
        self.length = sampler.settings.sequence_length
        self.provenance = sampler.settings.provenance
        self.vectors = any(layout.vector_values + layout.vector_codes for layout in sampler.catalog.layouts.values())
        self.memoryless = frozenset(t for t in sampler.catalog.task_names if is_memoryless(t, sampler.settings.memoryless))
        self.segments = bool(self.memoryless)
        self.segment_pieces: list[tuple] = []  # (row, column, unit, start, end) of memoryless tasks' non-prompt pieces
        self.plans: list = []
        self.batch_rows: list[int] = []
        # the slices of every piece's ids, local positions and loss mask (and a short row's
        # padding), concatenated straight into the block by ``write``
        self.ids: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []
        self.losses: list[np.ndarray] = []
        self.images: list[tuple] = []  # (row, unit, step layout, start, end, first step, last step) of pieces with patches
        self.jobs: list[tuple] = []  # (row, column, piece, unit) of every piece, for provenance
        self.vector_pieces: list[tuple] = []  # (row, column, unit, start, end) of pieces with vector observations
        self.short: list[tuple[int, int]] = []  # (row, real tokens) of rows a finite stream left part-filled
        self.image_bytes = 0  # at least the bytes of the image pieces' frames and patch arrays

    def add(self, plans: list) -> None:
        """Append one batch of plans (its rows follow the batches added before)."""
        layouts = self.sampler.catalog.layouts
        full_unit = self.sampler.full_unit
        length, provenance = self.length, self.provenance
        ids, positions, losses, images, jobs = self.ids, self.positions, self.losses, self.images, self.jobs
        row = len(self.plans)
        for plan in plans:
            column = 0
            layout = layouts[plan.task]  # a prompt is of the same task
            for piece in plan.pieces:
                unit = piece.tokens
                steps = unit.steps
                if steps is None:
                    unit = full_unit(piece)
                    steps = unit.steps
                start, end = piece.start, piece.end
                ids.append(steps.tokens[start:end])
                positions.append(steps.local_positions[start:end])
                losses.append(steps.loss_mask[start:end])
                if layout.patches:
                    first, last = unit.step_of(start), unit.step_of(end)  # pieces start on a timestep; ``end``'s step
                    images.append((row, unit, layout, start, end, first, last))
                    self.image_bytes += (last - first + 1) * (unit.steps.frames[0].size + 8) + 16 * (end - start)
                if layout.vector_values + layout.vector_codes:
                    self.vector_pieces.append((row, column, unit, start, end))
                if provenance:
                    jobs.append((row, column, piece, unit))
                if plan.task in self.memoryless and column >= plan.prompt_tokens:
                    self.segment_pieces.append((row, column, unit, start, end))
                column += end - start
            if column < length:
                pad = _padding(length)
                ids.append(pad[0][:length - column])
                positions.append(pad[1][:length - column])
                losses.append(pad[2][:length - column])
                self.short.append((row, column))
            row += 1
        self.plans += plans
        self.batch_rows.append(len(plans))

    @property
    def nbytes(self) -> int:
        """The bytes ``write`` will take, give or take the arrays' alignment: images are counted
        high (a frame a piece and a patch a token), so a bundle capped by it stays under its cap."""
        rows = len(self.plans)
        return (BatchLayout.of(rows, self.length, 0, 0, 0, self.observation_targets, self.provenance, self.vectors,
                               self.segments).nbytes
                + self.image_bytes)

    def write(self, buffer_for: Callable[[int], np.ndarray]) -> tuple[BatchLayout, list[int]]:
        """Write every added row into ``buffer_for(nbytes)``: returns the block's layout and the
        real (not padding) tokens of each added batch."""
        plans, length, size = self.plans, self.length, len(self.plans)
        counts = row_frames = shapes = None
        per_frame: list[int] = []  # patches of each frame that are tokens
        frame_bytes = 0
        cuts = []  # (unit, layout, first step, whole steps, patches of the cut step) of pieces with patches
        if self.images:
            counts, row_frames, shapes = [0] * size, [0] * size, [(0, 0, 0)] * size  # per sequence
            for row, unit, layout, start, end, first, last in self.images:
                whole = last - first
                cut = min(max(end - unit.offsets[last] - layout.image_start, 0), layout.patches)
                taken = whole + (cut > 0)
                if taken:
                    per_frame += [layout.patches] * whole + ([cut] if cut else [])
                    frame_bytes += taken * unit.steps.frames[0].size
                    counts[row] += whole * layout.patches + cut
                    row_frames[row] += taken
                    shapes[row] = layout.image_shape
                    cuts.append((unit, layout, first, whole, cut))
        batch = BatchLayout.of(size, length, sum(counts) if counts else 0, len(per_frame), frame_bytes,
                               self.observation_targets, self.provenance, self.vectors, self.segments)
        out = batch.views(buffer_for(batch.nbytes))
        tokens, local, loss = out["tokens"], out["local_positions"], out["loss_mask"]
        if counts is None:  # no image tokens: the per-image arrays are empty
            out["num_patches"].fill(0)
            out["num_frames"].fill(0)
            out["image_shapes"].fill(0)
        else:
            out["num_patches"][:] = counts
            out["num_frames"][:] = row_frames
            out["image_shapes"][:] = shapes
            out["frame_patches"][:] = per_frame
        # one np.concatenate per array for the whole block (widening int32/int16 to int64), not
        # three slice copies per piece: small rows (BabyAI-like, a few timesteps per sequence)
        # spent most of their writing time on the per-copy overhead
        np.concatenate(self.ids, out=tokens.reshape(-1))
        np.concatenate(self.positions, out=local.reshape(-1))
        np.concatenate(self.losses, out=loss.reshape(-1))
        if cuts:
            _write_images(cuts, out)
        if self.vectors:
            _write_vectors(self.vector_pieces, out["obs_vectors"], out["obs_codes"])
        if self.segments:
            _write_segments(self.segment_pieces, out["segments"])
        attention = out["attention_mask"]
        attention.fill(True)
        real = [rows * length for rows in self.batch_rows]
        ends = np.cumsum(self.batch_rows).tolist()
        for row, n in self.short:  # rows are full but where a finite stream ran out
            attention[row, n:] = False
            real[bisect.bisect_right(ends, row)] -= length - n
        if cuts:
            np.equal(tokens, IMAGE_PLACEHOLDER, out=out["is_image"])
        else:  # only image patches carry that id
            out["is_image"].fill(False)
        if self.observation_targets:
            out["obs_targets"][...] = tokens
            target = out["obs_target_mask"]
            np.greater_equal(local, 0, out=target)
            target &= ~loss  # observation tokens that are not text
            target[:, 0] = False
        if self.provenance:
            out["prompt_kind"][:] = [plan.prompt_kind for plan in plans]
            _write_provenance(plans, self.jobs, out)
        return batch, real


def split_rows(layout: BatchLayout, block: torch.Tensor | np.ndarray,
               batch_rows: list[int]) -> list[dict[str, torch.Tensor]]:
    """A block ``BatchWriter`` wrote (``layout`` over ``block``, as in ``as_tensors``) -> one
    batch of the contract's tensors per entry of ``batch_rows``, each over its own part of
    the block (no copy; the block lives as long as any of them)."""
    if len(batch_rows) == 1:
        return [as_tensors(layout, block)]
    whole = as_tensors(layout, block)
    starts = np.cumsum([0] + batch_rows[:-1])
    frames = whole["num_frames"].numpy()
    sizes = {"patch_rows": np.add.reduceat(whole["num_patches"].numpy(), starts).tolist(),
             "frame_patches": np.add.reduceat(frames, starts).tolist(),
             "frames": np.add.reduceat(frames * whole["image_shapes"].numpy().prod(1), starts).tolist()}
    sizes["patch_cols"] = sizes["patch_rows"]
    count = len(batch_rows)
    even = all(rows == batch_rows[0] for rows in batch_rows)
    parts = []
    for key, tensor in whole.items():
        split = sizes.get(key)
        if split is not None and not any(split):  # no images in the block: one empty tensor serves all
            parts.append([tensor] * count)
        elif split is None and even:  # one view op a key (~13 us for 16 batches, ~20 for a split)
            parts.append(tensor.view(count, batch_rows[0], *tensor.shape[1:]).unbind(0))
        else:
            parts.append(tensor.split(split or batch_rows))
    return [dict(zip(whole, views)) for views in zip(*parts)]


@functools.lru_cache(maxsize=8)
def _padding(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a row holds after its last real token: PAD ids, local position -1, no loss."""
    return np.full(length, PAD, np.int32), np.full(length, -1, np.int16), np.zeros(length, np.bool_)


def _write_images(cuts: list, out: dict[str, np.ndarray]) -> None:
    """The frames (as stored: the model cuts them) and patch intervals of the pieces with patches."""
    pixels, rows, cols = out["frames"], out["patch_rows"], out["patch_cols"]
    at = byte = 0
    for unit, layout, first, whole, cut in cuts:
        count = whole * layout.patches + cut
        taken = unit.steps.frames[first:first + whole + (cut > 0)]
        pixels[byte:byte + taken.size] = taken.reshape(-1)
        byte += taken.size
        grid_rows, grid_cols = _tiled_intervals(tuple(layout.image_shape[:2]), count)
        rows[at:at + count] = grid_rows
        cols[at:at + count] = grid_cols
        at += count


def as_tensors(layout: BatchLayout, block: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """The batch's tensors over ``block`` (uint8, the buffer it was written into), no copy:
    each is ``torch.from_numpy`` of a numpy view over it. Give a tensor (or an array that owns
    its memory) when its lifetime matters: numpy points a view of a view at the memory's
    owner, so the tensors keep ``block`` itself alive only through a tensor's own reference.
    (A numpy view and ``from_numpy`` cost ~2 us a key; slicing and viewing a torch tensor ~7,
    which the training process paid on every batch.)"""
    buffer = block.numpy() if isinstance(block, torch.Tensor) else block
    return {key: torch.from_numpy(view) for key, view in layout.views(buffer).items()}


def shared_buffer(nbytes: int) -> tuple[torch.Tensor, np.ndarray]:
    """A fresh torch shared-memory segment as a uint8 tensor, and a numpy view to write into."""
    block = torch.empty((0,), dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(nbytes, 1)))
    return block, block.numpy()


def host_buffer(size: int) -> np.ndarray:
    """A byte buffer for a batch (contents undefined): one of the last few batches' buffers when
    no tensor uses it any more (the consumer dropped that batch), else fresh memory. Fresh
    pages cost a page fault each (~0.5 ms/MB here); warm memory costs nothing extra."""
    # a free buffer has 2 references: the list's and getrefcount's argument; a live tensor or
    # view over its memory holds one more (torch.from_numpy keeps its array alive)
    free = [i for i in range(len(_RECENT_BUFFERS))
            if _RECENT_BUFFERS[i].nbytes >= size and sys.getrefcount(_RECENT_BUFFERS[i]) == 2]
    if free:
        index = min(free, key=lambda i: _RECENT_BUFFERS[i].nbytes)
        buffer = _RECENT_BUFFERS.pop(index)
        _RECENT_BUFFERS.append(buffer)
        return buffer[:size]
    buffer = np.empty(max(size, 1), np.uint8)
    _RECENT_BUFFERS.append(buffer)
    if len(_RECENT_BUFFERS) > RECENT_BUFFERS:
        del _RECENT_BUFFERS[0]
    return buffer[:size]


_RECENT_BUFFERS: list[np.ndarray] = []
RECENT_BUFFERS = 6


@functools.lru_cache(maxsize=1024)
def _pack(specs: tuple) -> tuple[dict[str, tuple[int, tuple[int, ...], np.dtype]], int]:
    """64-byte aligned offsets for the arrays of ``specs`` in one buffer, and its size."""
    fields, total = {}, 0
    for key, shape, dtype in specs:
        total = -(-total // 64) * 64
        fields[key] = (total, tuple(shape), np.dtype(dtype))
        total += math.prod(shape) * np.dtype(dtype).itemsize
    return fields, total


@functools.lru_cache(maxsize=1024)
def _fields(size: int, length: int, patches: int, frames: int, frame_bytes: int, observation_targets: bool,
            provenance: bool, vectors: bool, segments: bool):
    b, l = size, length
    specs = (("tokens", (b, l), np.int64), ("local_positions", (b, l), np.int64), ("num_patches", (b,), np.int64),
             ("image_shapes", (b, 3), np.int64), ("num_frames", (b,), np.int64), ("frame_patches", (frames,), np.int64),
             ("patch_rows", (patches, 2), np.float32), ("patch_cols", (patches, 2), np.float32),
             ("loss_mask", (b, l), np.bool_), ("attention_mask", (b, l), np.bool_), ("is_image", (b, l), np.bool_),
             ("frames", (frame_bytes,), np.uint8))
    if observation_targets:
        specs += (("obs_targets", (b, l), np.int64), ("obs_target_mask", (b, l), np.bool_))
    if provenance:
        specs += (("token_episode", (b, l), np.int64), ("token_offset", (b, l), np.int64), ("is_prompt", (b, l), np.bool_),
                  ("prompt_kind", (b,), np.int64))
    if vectors:
        specs += (("obs_vectors", (b, l, VECTOR_WIDTH), np.float32), ("obs_codes", (b, l, VECTOR_WIDTH), np.int16))
    if segments:
        specs += (("segments", (b, l), np.int32),)
    return _pack(specs)


def is_memoryless(task: str, names) -> bool:
    """Whether ``task`` (an id ``domain/name``) or its domain is among ``names``."""
    return task in names or task.split("/", 1)[0] in names


def _write_segments(pieces: list, segments: np.ndarray) -> None:
    """Number each timestep of a memoryless task's pieces 1, 2, ... along its row (a piece's
    timesteps continue its row's count); prompts and other tasks' tokens stay 0. The model lets
    a token attend to earlier tokens of its own segment and of segment 0 only."""
    segments.fill(0)
    counts: dict[int, int] = {}
    for row, column, unit, start, end in pieces:
        if end <= start:
            continue
        positions = np.arange(start, end)
        steps = np.searchsorted(unit.step_offsets, positions, side="right") - 1
        first = counts.get(row, 0) + 1
        segments[row, column:column + end - start] = steps - steps[0] + first
        counts[row] = first + int(steps[-1] - steps[0])


def _write_vectors(pieces: list, values: np.ndarray, codes: np.ndarray) -> None:
    """Each piece's vector observations at their VECTOR_OBSERVATION tokens (the first token of
    a timestep); zeros and -1 everywhere else."""
    values.fill(0)
    codes.fill(-1)
    for row, column, unit, start, end in pieces:
        span = slice(column, column + end - start)
        place_vectors(unit.steps, start, end, values[row, span], codes[row, span])


def _write_provenance(plans: list, jobs: list, out: dict[str, np.ndarray]) -> None:
    episode, offset, prompt = out["token_episode"], out["token_offset"], out["is_prompt"]
    episode.fill(-1)
    offset.fill(-1)
    prompt.fill(False)
    for row, column, piece, unit, *_ in jobs:
        positions = np.arange(piece.start, piece.end)
        owner = unit.token_starts.searchsorted(positions, side="right") - 1
        span = slice(column, column + piece.end - piece.start)
        episode[row, span] = unit.episodes[owner]
        offset[row, span] = positions - unit.token_starts[owner]
    for row, plan in enumerate(plans):
        prompt[row, :plan.prompt_tokens] = plan.prompt_tokens > 0


@functools.lru_cache(maxsize=64)
def _grid_intervals(image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return patch_intervals(image_hw)


_TILED: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _tiled_intervals(image_hw: tuple[int, int], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column intervals of ``count`` patches of consecutive images, starting at patch 0."""
    rows, cols = _TILED.get(image_hw, (np.zeros((0, 2), np.float32), None))
    if len(rows) < count:
        grid_rows, grid_cols = _grid_intervals(image_hw)
        repeats = -(-max(count, 2 * len(rows)) // len(grid_rows))
        rows, cols = np.tile(grid_rows, (repeats, 1)), np.tile(grid_cols, (repeats, 1))
        _TILED[image_hw] = (rows, cols)
    return rows[:count], cols[:count]
