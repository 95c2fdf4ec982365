"""Gato's image tokens: non-overlapping 16x16 patches in raster order.

    from trainer.patches import image_to_patches
    patches, rows, cols = image_to_patches(frame)        # frame (H, W, C) uint8

Pixels are scaled to [-1, 1] and divided by sqrt(16) = 4, so a patch value lies in
[-0.25, 0.25]. Stacked frames (Atari's 84x84x4) are channels. An image whose height or
width is not a multiple of 16 is padded at the bottom and right with black pixels (value 0,
i.e. -0.25 after scaling) up to the next multiple; the row/column intervals are fractions of
the *padded* image, so the model sees one consistent geometry (84x84 -> 96x96, 6x6 patches).
"""

from __future__ import annotations

import numpy as np

PATCH_SIZE = 16
PIXEL_SCALE = np.float32(2.0 / 255.0 / 4.0)
PIXEL_SHIFT = np.float32(0.25)


def image_to_patches(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (H, W, C) uint8 -> patches (P, C, 16, 16) float32 in [-0.25, 0.25], and each
    patch's normalized [start, end) row and column interval, (P, 2) float32 each."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3:
        raise ValueError(f"image_to_patches expects an (H, W, C) image, got shape {frame.shape}")
    raw = frames_to_raw_patches(frame[None])[0]
    rows, cols = patch_intervals(frame.shape[:2])
    return scale_patches(raw), rows, cols


def frames_to_raw_patches(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) uint8 -> (T, P, C, 16, 16) uint8 in raster order (one copy, vectorized)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels, got dtype {frames.dtype}")
    if frames.ndim != 4:
        raise ValueError(f"expected frames of shape (T, H, W, C), got {frames.shape}")
    t, h, w, c = frames.shape
    padded_h, padded_w = padded_size(h), padded_size(w)
    if (padded_h, padded_w) != (h, w):  # black border; faster than np.pad
        padded = np.zeros((t, padded_h, padded_w, c), np.uint8)
        padded[:, :h, :w] = frames
        frames = padded
    grid_h, grid_w = padded_h // PATCH_SIZE, padded_w // PATCH_SIZE
    blocks = frames.reshape(t, grid_h, PATCH_SIZE, grid_w, PATCH_SIZE, c)
    # (T, gh, 16, gw, 16, C) -> (T, gh, gw, C, 16, 16): raster order, channels first.
    return np.ascontiguousarray(blocks.transpose(0, 1, 3, 5, 2, 4)).reshape(t, grid_h * grid_w, c, PATCH_SIZE, PATCH_SIZE)


def scale_patches(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] / 4, written into ``out`` if given."""
    if out is None:
        out = np.empty(raw.shape, dtype=np.float32)
    np.multiply(raw, PIXEL_SCALE, out=out, dtype=np.float32)
    out -= PIXEL_SHIFT
    return out


def normalize_patches(patches, channels=None, num_patches=None):
    """uint8 patches (..., P, C, 16, 16) from a loader with ``patch_dtype="uint8"`` -> the float32
    patches the contract describes: [-1, 1] / 4, with padded channels (>= ``channels``, shape
    (...,)) and padded patches (>= ``num_patches``) zero. Works on torch tensors (on any device)."""
    import torch

    out = patches.to(torch.float32) * float(PIXEL_SCALE) - float(PIXEL_SHIFT)
    if channels is not None:
        keep = torch.arange(patches.shape[-3], device=patches.device) < channels.unsqueeze(-1)  # (..., C)
        out = out * keep[..., None, :, None, None]
    if num_patches is not None:
        keep = torch.arange(patches.shape[-4], device=patches.device) < num_patches.unsqueeze(-1)  # (..., P)
        out = out * keep[..., None, None, None]
    return out


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
