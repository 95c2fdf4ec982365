"""Batches of plans -> one flat compact buffer -> the contract's tensors.

    layout = write_batch(plans, sampler, buffer_for)   # in the process that plans (a worker)
    batch = expand(layout.views(buffer), observation_targets=False)   # where the batch is used

The compact form is what crosses from a DataLoader worker to the training process: every
array of a batch in one byte buffer (shared memory, see trainer/ring.py), in the smallest
dtypes (int32 ids, int16 positions) and without what can be derived (attention and image
masks). ``write_batch`` fills it with one slice copy per piece of a plan and array; image
frames are copied as stored (a memcpy each: cutting them into 16x16 patches, a strided copy
at a third of memcpy's speed, is left to the model on its device, like the pixel scaling).
``expand`` widens it to the contract's dtypes (trainer/data.py lists the keys) with a few
whole-batch numpy calls. Every byte of the layout is written, so a buffer can be reused
without clearing it.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainer.patches import patch_intervals
from trainer.tokenizer import IMAGE_PLACEHOLDER, PAD

@dataclass(frozen=True)
class CompactLayout:
    """Where each array of a compact batch lives in one byte buffer: ``size`` sequences of
    ``length`` tokens with ``patches`` image tokens cut from ``frames`` frames of
    ``frame_bytes`` pixels in all."""

    size: int
    length: int
    patches: int
    frames: int
    frame_bytes: int
    provenance: bool = False

    @property
    def fields(self) -> dict[str, tuple[int, tuple[int, ...], np.dtype]]:
        return _compact_fields(self.size, self.length, self.patches, self.frames, self.frame_bytes, self.provenance)[0]

    @property
    def nbytes(self) -> int:
        return _compact_fields(self.size, self.length, self.patches, self.frames, self.frame_bytes, self.provenance)[1]

    def views(self, buffer: np.ndarray) -> dict[str, np.ndarray]:
        """Numpy views of the arrays inside ``buffer`` (uint8, at least ``nbytes``)."""
        return _views(self.fields, buffer)

    @staticmethod
    def max_bytes(size: int, length: int, patches_per_sequence: int, frames_per_sequence: int,
                  frame_bytes_per_sequence: int, provenance: bool = False) -> int:
        """The largest compact batch of these sizes (what shared memory must hold for it)."""
        return CompactLayout(size, length, size * patches_per_sequence, size * frames_per_sequence,
                             size * frame_bytes_per_sequence, provenance).nbytes


def write_batch(plans: list, sampler, buffer_for: Callable[[int], np.ndarray]) -> CompactLayout:
    """Write ``plans`` (trainer.sequences.Plan) as one compact batch into ``buffer_for(nbytes)``."""
    catalog = sampler.catalog
    length = sampler.settings.sequence_length
    jobs = []  # (row, column, piece, unit, step layout, first step, whole steps, patches of the cut step)
    patches = frames = frame_bytes = 0
    for row, plan in enumerate(plans):
        column = 0
        for piece in plan.pieces:
            unit = sampler.full_unit(piece)
            layout = catalog.layouts[piece.task]
            whole = cut = first = 0
            if layout.patches:
                offsets = unit.step_offsets
                first = int(offsets.searchsorted(piece.start))
                last = int(offsets.searchsorted(piece.end, side="right")) - 1  # the step holding ``end``
                whole = last - first
                cut = min(max(piece.end - int(offsets[last]) - layout.image_start, 0), layout.patches)
                count = whole + (cut > 0)
                frames += count
                frame_bytes += count * unit.steps.frames[0].size
            jobs.append((row, column, piece, unit, layout, first, whole, cut))
            column += piece.end - piece.start
            patches += whole * layout.patches + cut
    compact = CompactLayout(len(plans), length, patches, frames, frame_bytes, sampler.settings.provenance)
    out = compact.views(buffer_for(compact.nbytes))
    tokens, local, loss = out["tokens"], out["local_positions"], out["loss_mask"]
    pixels, frame_patches, rows, cols = out["frames"], out["frame_patches"], out["patch_rows"], out["patch_cols"]
    lengths, counts, shapes, row_frames = out["lengths"], out["num_patches"], out["image_shapes"], out["num_frames"]
    counts[:] = 0
    shapes[:] = 0
    row_frames[:] = 0
    at = frame = byte = 0
    for row, column, piece, unit, layout, first, whole, cut in jobs:
        steps, start, end = unit.steps, piece.start, piece.end
        span = slice(column, column + end - start)
        tokens[row, span] = steps.tokens[start:end]
        local[row, span] = steps.local_positions[start:end]
        loss[row, span] = steps.loss_mask[start:end]
        count = whole * layout.patches + cut
        if not count:
            continue
        taken = steps.frames[first:first + whole + (cut > 0)]  # the frames as stored: the model cuts them
        pixels[byte:byte + taken.size] = taken.reshape(-1)
        byte += taken.size
        frame_patches[frame:frame + whole] = layout.patches
        if cut:
            frame_patches[frame + whole] = cut
        frame += len(taken)
        shapes[row] = layout.image_shape
        row_frames[row] += len(taken)
        grid_rows, grid_cols = _tiled_intervals(tuple(layout.image_shape[:2]), count)
        rows[at:at + count] = grid_rows
        cols[at:at + count] = grid_cols
        counts[row] += count
        at += count
    for row, plan in enumerate(plans):
        n = plan.num_tokens
        lengths[row] = n
        if n < length:
            tokens[row, n:] = PAD
            local[row, n:] = -1
            loss[row, n:] = False
        out["prompt_kind"][row] = plan.prompt_kind
    if compact.provenance:
        _write_provenance(plans, jobs, out)
    return compact


def expand(compact: dict[str, np.ndarray], observation_targets: bool = False,
           copy_frames: bool = True, shared: bool = False) -> dict[str, torch.Tensor]:
    """A compact batch's views -> the contract's tensors, all in one fresh or recycled host
    buffer (``shared``: one torch shared-memory segment, for a worker to send). With
    ``copy_frames=False`` the frames alias the compact buffer (when that is not reused)."""
    size, length = compact["tokens"].shape
    patches, frames = len(compact["patch_rows"]), len(compact["frame_patches"])
    specs = [("tokens", (size, length), np.int64), ("local_positions", (size, length), np.int64),
             ("num_patches", (size,), np.int64), ("image_shapes", (size, 3), np.int64), ("num_frames", (size,), np.int64),
             ("frame_patches", (frames,), np.int64), ("loss_mask", (size, length), np.bool_),
             ("attention_mask", (size, length), np.bool_), ("is_image", (size, length), np.bool_),
             ("patch_rows", (patches, 2), np.float32), ("patch_cols", (patches, 2), np.float32)]
    if copy_frames:
        specs.append(("frames", compact["frames"].shape, np.uint8))
    if observation_targets:
        specs += [("obs_targets", (size, length), np.int64), ("obs_target_mask", (size, length), np.bool_)]
    if "token_episode" in compact:
        specs += [("token_episode", (size, length), np.int64), ("token_offset", (size, length), np.int64),
                  ("is_prompt", (size, length), np.bool_), ("prompt_kind", (size,), np.int64)]
    fields, nbytes = _pack(tuple(specs))
    if shared:
        storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
        tensors = {key: torch.empty((0,), dtype=_TORCH[np.dtype(d)]).set_(storage, o // np.dtype(d).itemsize, s)
                   for key, (o, s, d) in fields.items()}
        out = {key: tensor.numpy() for key, tensor in tensors.items()}
    else:
        out = _views(fields, host_buffer(nbytes))
    for key in ("tokens", "local_positions", "num_patches", "image_shapes", "num_frames", "frame_patches", "loss_mask",
                "patch_rows", "patch_cols", "frames", "token_episode", "token_offset", "is_prompt", "prompt_kind"):
        if key in out:
            out[key][...] = compact[key]
    np.less(np.arange(length), compact["lengths"][:, None], out=out["attention_mask"])
    np.equal(compact["tokens"], IMAGE_PLACEHOLDER, out=out["is_image"])
    if observation_targets:
        out["obs_targets"][...] = out["tokens"]
        target = out["obs_target_mask"]
        np.greater_equal(compact["local_positions"], 0, out=target)
        target &= ~compact["loss_mask"]  # observation tokens that are not text
        target[:, 0] = False
    batch = tensors if shared else {key: torch.from_numpy(value) for key, value in out.items()}
    if not copy_frames:
        batch["frames"] = torch.from_numpy(compact["frames"])
    return batch


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
_TORCH = {np.dtype(np.int64): torch.int64, np.dtype(np.bool_): torch.bool, np.dtype(np.float32): torch.float32,
          np.dtype(np.uint8): torch.uint8}


@functools.lru_cache(maxsize=1024)
def _pack(specs: tuple) -> tuple[dict[str, tuple[int, tuple[int, ...], np.dtype]], int]:
    """64-byte aligned offsets for the arrays of ``specs`` in one buffer, and its size."""
    fields, total = {}, 0
    for key, shape, dtype in specs:
        total = -(-total // 64) * 64
        fields[key] = (total, tuple(shape), np.dtype(dtype))
        total += math.prod(shape) * np.dtype(dtype).itemsize
    return fields, total


def _compact_fields(size: int, length: int, patches: int, frames: int, frame_bytes: int, provenance: bool):
    b, l = size, length
    specs = (("tokens", (b, l), np.int32), ("local_positions", (b, l), np.int16), ("loss_mask", (b, l), np.bool_),
             ("lengths", (b,), np.int32), ("num_patches", (b,), np.int32), ("prompt_kind", (b,), np.int8),
             ("image_shapes", (b, 3), np.int32), ("num_frames", (b,), np.int32), ("frame_patches", (frames,), np.int32),
             ("patch_rows", (patches, 2), np.float32), ("patch_cols", (patches, 2), np.float32),
             ("frames", (frame_bytes,), np.uint8))
    if provenance:
        specs += (("token_episode", (b, l), np.int64), ("token_offset", (b, l), np.int64), ("is_prompt", (b, l), np.bool_))
    return _pack(specs)


def _views(fields: dict, buffer: np.ndarray) -> dict[str, np.ndarray]:
    return {key: np.ndarray(shape, dtype, buffer, offset) for key, (offset, shape, dtype) in fields.items()}


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
