"""Checkpoints that resume a run exactly: model, optimizer, scheduler, loader position, RNGs.

    from trainer.checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint
    path = latest_checkpoint("runs/tiny")             # runs/tiny/checkpoints/step-000200.pt or None
    state = load_checkpoint(path)                      # a dict; state["model"], state["config"], ...

Layout of a run directory:

    runs/NAME/
      checkpoints/step-000100.pt    torch.save'd dict (format below), written to a temp file
      checkpoints/step-000200.pt    in the same folder and renamed, so a crash never leaves
      checkpoints/latest            a torn file; ``latest`` names the newest complete one
      metrics.csv, tensorboard/, config.yaml

A checkpoint dict holds: ``format`` (CHECKPOINT_FORMAT), ``step``, ``model`` (state dict),
``model_config`` (GatoConfig as a dict), ``train_config`` (dict), ``data_roots``,
``optimizer``, ``scheduler``, and ``ranks``: one entry per process with its loader state and
RNG states (python, numpy, torch, cuda), since every rank draws different data.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"

log = logging.getLogger(__name__)


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as checkpoints/step-NNNNNN.pt atomically, point ``latest`` at it, prune old ones."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.pt"
    _atomic(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, "step": step, **state}, f))
    _atomic(folder / LATEST, lambda f: f.write(path.name.encode()))
    if keep > 0:
        for old in sorted(folder.glob("step-*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None if it has none."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    pointer = folder / LATEST
    if pointer.exists():
        path = folder / pointer.read_text().strip()
        if path.exists():
            return path
    found = sorted(folder.glob("step-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict; a run directory resolves to its latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ValueError(f"{path}: no checkpoint in {path / CHECKPOINT_DIR} (expected step-NNNNNN.pt files)")
        path = found
    if not path.exists():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False, mmap=True)  # paged in lazily
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format') if isinstance(state, dict) else '?'!r}, "
                         f"expected {CHECKPOINT_FORMAT}")
    state["path"] = str(path)
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic(path: Path, write) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
