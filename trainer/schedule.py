"""Learning rate: linear warmup, then cosine decay to a floor (Gato appendix C; nanoGPT's get_lr).

    from trainer.schedule import warmup_cosine
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup=100, total=10_000))
"""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.1) -> Callable[[int], float]:
    """A LambdaLR factor: 0 -> 1 over ``warmup`` steps, then cosine to ``min_ratio`` at ``total``."""
    if warmup < 0 or total < 1 or warmup > total:
        raise ValueError(f"schedule needs 0 <= warmup <= steps and steps >= 1, got warmup={warmup}, steps={total}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio={min_ratio} must be in [0, 1]")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step >= total:
            return min_ratio
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress))

    return factor
