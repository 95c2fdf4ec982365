"""Gato's image tokens: non-overlapping 16x16 patches in raster order.

    from trainer.patches import cut_patches, frames_to_patches, image_to_patches, normalize_patches
    pixels = cut_patches(frames)                          # (T, H, W, C) uint8 -> (T, P, 16, 16, C) uint8
    model_input = normalize_patches(torch.from_numpy(pixels.reshape(-1, 16, 16, C)))  # (N, 4, 16, 16) float32
    model_input = frames_to_patches(batch["frames"], batch["image_shapes"], batch["num_frames"],
                                    batch["frame_patches"])   # a loader batch, on its device
    patches, rows, cols = image_to_patches(frame)         # one (H, W, C) frame, model input + intervals

The loader ships frames as stored (uint8, a memcpy each); the model cuts them into patches
and scales them on its device (``frames_to_patches``); deployment cuts on the host
(``cut_patches``, channels last) and scales with the same ``normalize_patches``: to [-1, 1]
and divided by sqrt(16) = 4, so a value lies in [-0.25, 0.25], channels first and
zero-padded to MAX_CHANNELS. Stacked frames (Atari's 84x84x4) are channels. An image whose height or width
is not a multiple of 16 is padded at the bottom and right with black pixels (value 0, i.e.
-0.25 after scaling) up to the next multiple; the row/column intervals are fractions of the
*padded* image, so the model sees one consistent geometry (84x84 -> 96x96, 6x6 patches).
"""

from __future__ import annotations

import numpy as np

PATCH_SIZE = 16
MAX_CHANNELS = 4
PIXEL_SCALE = np.float32(2.0 / 255.0 / 4.0)
PIXEL_SHIFT = np.float32(0.25)


def cut_patches(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(T, H, W, C) uint8 -> (T, P, 16, 16, C_out) uint8 patches in raster order, channels last.

    ``out`` (any contents; C_out >= C, extra channels come out zero) receives them in place, so
    a batch's patches are cut straight into the memory that ships them. Padding is black."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels, got dtype {frames.dtype}")
    if frames.ndim != 4:
        raise ValueError(f"expected frames of shape (T, H, W, C), got {frames.shape}")
    t, h, w, c = frames.shape
    grid_h, grid_w = padded_size(h) // PATCH_SIZE, padded_size(w) // PATCH_SIZE
    if out is None:
        out = np.empty((t, grid_h * grid_w, PATCH_SIZE, PATCH_SIZE, c), np.uint8)
    if out.shape[:4] != (t, grid_h * grid_w, PATCH_SIZE, PATCH_SIZE) or out.shape[4] < c:
        raise ValueError(f"out has shape {out.shape}; {t} frames of {h}x{w}x{c} need ({t}, {grid_h * grid_w}, 16, 16, >={c})")
    grid = out.reshape(t, grid_h, grid_w, PATCH_SIZE, PATCH_SIZE, out.shape[4])
    full_h, rest_h = divmod(h, PATCH_SIZE)
    full_w, rest_w = divmod(w, PATCH_SIZE)
    if out.shape[4] > c:
        grid[..., c:] = 0
    pixels = grid[..., :c]
    for row in range(full_h):  # one patch row at a time: (T, 16, gw, 16, C) -> (T, gw, 16, 16, C), 16 * C bytes a move
        band = frames[:, row * PATCH_SIZE:(row + 1) * PATCH_SIZE]
        pixels[:, row, :full_w] = band[:, :, :full_w * PATCH_SIZE].reshape(
            t, PATCH_SIZE, full_w, PATCH_SIZE, c).transpose(0, 2, 1, 3, 4)
    if rest_w:  # the last patch column is cut: its real columns, then black
        edge = pixels[:, :, full_w]  # (T, gh, 16, 16, C)
        edge[:, :full_h, :, :rest_w] = frames[:, :full_h * PATCH_SIZE, full_w * PATCH_SIZE:].reshape(
            t, full_h, PATCH_SIZE, rest_w, c)
        edge[:, :, :, rest_w:] = 0
    if rest_h:  # the last patch row is cut
        edge = pixels[:, full_h]  # (T, gw, 16, 16, C)
        edge[:, :full_w, :rest_h] = frames[:, full_h * PATCH_SIZE:, :full_w * PATCH_SIZE].reshape(
            t, rest_h, full_w, PATCH_SIZE, c).transpose(0, 2, 1, 3, 4)
        edge[:, :, rest_h:] = 0
        if rest_w:
            edge[:, full_w, :rest_h, :rest_w] = frames[:, full_h * PATCH_SIZE:, full_w * PATCH_SIZE:]
    return out


def normalize_patches(pixels, channels=None):
    """uint8 patches (N, 16, 16, C) channels last -> the model's input, float32 (N, MAX_CHANNELS,
    16, 16) in [-1, 1] / 4, channels first, zero in channels beyond C and beyond each patch's
    ``channels`` (N,) when given. Takes torch tensors (any device, the result stays there) or
    numpy arrays (the result is numpy): the loader, deployment and the model all use this one."""
    import torch

    as_numpy = isinstance(pixels, np.ndarray)
    x = torch.from_numpy(pixels) if as_numpy else pixels
    if x.dim() != 4 or x.shape[1:3] != (PATCH_SIZE, PATCH_SIZE) or x.shape[3] > MAX_CHANNELS:
        raise ValueError(f"expected uint8 patches (N, 16, 16, C <= {MAX_CHANNELS}), got shape {tuple(x.shape)}")
    out = torch.zeros((x.shape[0], MAX_CHANNELS, PATCH_SIZE, PATCH_SIZE), dtype=torch.float32, device=x.device)
    real = out[:, :x.shape[3]]
    real.copy_(x.permute(0, 3, 1, 2))
    real.mul_(float(PIXEL_SCALE)).sub_(float(PIXEL_SHIFT))
    if channels is not None:
        keep = torch.arange(MAX_CHANNELS, device=x.device) < torch.as_tensor(channels, device=x.device).reshape(-1, 1)
        out.mul_(keep[:, :, None, None])
    return out.numpy() if as_numpy else out


def frames_to_patches(frames, image_shapes, num_frames, frame_patches):
    """A loader batch's frames -> the model's input for its N image tokens, float32 (N,
    MAX_CHANNELS, 16, 16) in is_image order, on the frames' device: each sequence's frames
    (``num_frames`` (B,) of shape ``image_shapes`` (B, 3), back to back in the flat uint8
    ``frames``) cut into patches in raster order, of which the first ``frame_patches`` (F,)
    of each frame are tokens (all of them but in a sequence's last, cut timestep), scaled by
    ``normalize_patches``. The same pixels as ``cut_patches`` gives on the host."""
    import torch

    pieces, offset, first = [], 0, 0
    for (h, w, c), count in zip(image_shapes.tolist(), num_frames.tolist()):
        if not count:
            continue
        pixels = frames[offset:offset + count * h * w * c].view(count, h, w, c)
        offset += count * h * w * c
        grid_h, grid_w = padded_size(h) // PATCH_SIZE, padded_size(w) // PATCH_SIZE
        if (grid_h * PATCH_SIZE, grid_w * PATCH_SIZE) != (h, w):  # black border, bottom and right
            pixels = torch.nn.functional.pad(pixels, (0, 0, 0, grid_w * PATCH_SIZE - w, 0, grid_h * PATCH_SIZE - h))
        patches = pixels.reshape(count, grid_h, PATCH_SIZE, grid_w, PATCH_SIZE, c).permute(0, 1, 3, 2, 4, 5)
        keep = torch.arange(grid_h * grid_w, device=frames.device) < frame_patches[first:first + count, None]
        pieces.append(normalize_patches(patches.reshape(count, grid_h * grid_w, PATCH_SIZE, PATCH_SIZE, c)[keep]))
        first += count
    if not pieces:
        return torch.zeros((0, MAX_CHANNELS, PATCH_SIZE, PATCH_SIZE), dtype=torch.float32, device=frames.device)
    return torch.cat(pieces)


def image_to_patches(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (H, W, C) uint8 -> patches (P, C, 16, 16) float32 in [-0.25, 0.25] (the model's
    input, channels not padded), and each patch's normalized [start, end) row and column
    interval, (P, 2) float32 each."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3:
        raise ValueError(f"image_to_patches expects an (H, W, C) image, got shape {frame.shape}")
    pixels = cut_patches(frame[None])[0]
    rows, cols = patch_intervals(frame.shape[:2])
    return normalize_patches(pixels)[:, :frame.shape[2]], rows, cols


def patch_intervals(image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalized [start, end) row and column intervals of each patch, (P, 2) float32 each."""
    grid_h, grid_w = padded_size(image_hw[0]) // PATCH_SIZE, padded_size(image_hw[1]) // PATCH_SIZE
    row_edges = np.arange(grid_h + 1, dtype=np.float32) / grid_h
    col_edges = np.arange(grid_w + 1, dtype=np.float32) / grid_w
    rows = np.stack([row_edges[:-1], row_edges[1:]], axis=1)
    cols = np.stack([col_edges[:-1], col_edges[1:]], axis=1)
    # raster order: patch p = r * grid_w + c
    return np.repeat(rows, grid_w, axis=0), np.tile(cols, (grid_h, 1))


def patches_per_image(image_shape: tuple[int, ...]) -> int:
    """Number of patches one (H, W, C) image becomes."""
    return (padded_size(image_shape[0]) // PATCH_SIZE) * (padded_size(image_shape[1]) // PATCH_SIZE)


def padded_size(pixels: int) -> int:
    return -(-pixels // PATCH_SIZE) * PATCH_SIZE
