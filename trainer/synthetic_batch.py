"""In-memory batches in the loader's layout (notes: trainer-contract.md), for benchmarks and tests.

    from trainer.synthetic_batch import SyntheticBatchConfig, synthetic_batch
    batch = synthetic_batch(SyntheticBatchConfig(batch_size=8, seq_len=256, image_patches=4))

Each sequence is a run of timesteps: [image patches][observation values] | [action values],
so the model sees the structure it sees in real data (and the benchmark can compare a
step on real loader batches with a step on these, which cost nothing to produce).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.tokenizer import CONTINUOUS_OFFSET, IMAGE_PLACEHOLDER, MAX_CHANNELS, PAD, SEPARATOR


@dataclass
class SyntheticBatchConfig:
    batch_size: int = 8
    seq_len: int = 256
    image_patches: int = 0
    """patches per observation (0 = no images)"""
    observation_values: int = 12
    action_values: int = 2
    continuous: bool = True
    """continuous (mu-law bins) values or discrete ones"""
    padding: int = 0
    """PAD tokens at the end of every sequence"""
    seed: int = 0


def synthetic_batch(config: SyntheticBatchConfig) -> dict[str, torch.Tensor]:
    """A random batch with the contract's keys, dtypes and shapes."""
    g = torch.Generator().manual_seed(config.seed)
    B, L = config.batch_size, config.seq_len
    per_step = config.image_patches + config.observation_values + 1 + config.action_values
    low, high = (CONTINUOUS_OFFSET, CONTINUOUS_OFFSET + 1024) if config.continuous else (0, 1024)
    real = L - config.padding
    kind = torch.empty(per_step, dtype=torch.long)  # 0 image, 1 obs value, 2 separator, 3 action
    kind[: config.image_patches] = 0
    kind[config.image_patches: per_step - config.action_values - 1] = 1
    kind[per_step - config.action_values - 1] = 2
    kind[per_step - config.action_values:] = 3
    local = torch.full((per_step,), -1, dtype=torch.long)
    n_obs = config.image_patches + config.observation_values
    local[:n_obs] = torch.arange(n_obs)
    reps = -(-L // per_step)
    kinds = kind.repeat(reps)[:L].expand(B, L).clone()
    tokens = torch.randint(low, high, (B, L), generator=g)
    tokens[kinds == 0] = IMAGE_PLACEHOLDER
    tokens[kinds == 2] = SEPARATOR
    local_positions = local.repeat(reps)[:L].expand(B, L).clone()
    attention_mask = torch.zeros(B, L, dtype=torch.bool)
    attention_mask[:, :real] = True
    tokens[~attention_mask] = PAD
    local_positions[~attention_mask] = -1
    is_image = (kinds == 0) & attention_mask
    loss_mask = (kinds == 3) & attention_mask
    n_patches = int(is_image[0].sum())
    # every timestep's patches come from one frame of 16 x 16n pixels (one row of n patches);
    # the sequence's last timestep may be cut inside its image
    n = max(1, config.image_patches)
    frames_per_row = -(-n_patches // n)
    frame_patches = torch.full((frames_per_row,), n, dtype=torch.long)
    if frames_per_row:
        frame_patches[-1] = n_patches - n * (frames_per_row - 1)
    frames = torch.randint(0, 256, (B * frames_per_row * 16 * 16 * n * MAX_CHANNELS,), generator=g, dtype=torch.uint8)
    idx = torch.arange(n_patches).repeat(B) % n
    rows = torch.tensor([[0.0, 1.0]]).expand(B * n_patches, 2).clone()
    cols = torch.stack((idx / n, (idx + 1) / n), -1).float()
    return {
        "tokens": tokens, "loss_mask": loss_mask, "attention_mask": attention_mask,
        "local_positions": local_positions, "is_image": is_image, "frames": frames,
        "image_shapes": torch.tensor([[16, 16 * n, MAX_CHANNELS] if n_patches else [0, 0, 0]] * B, dtype=torch.long),
        "num_frames": torch.full((B,), frames_per_row, dtype=torch.long), "frame_patches": frame_patches.repeat(B),
        "patch_rows": rows, "patch_cols": cols, "num_patches": torch.full((B,), n_patches, dtype=torch.long),
    }
