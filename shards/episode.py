"""One episode in memory: per-step arrays for each modality plus where it came from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from shards.format import MODALITY_TYPES, OBS_IMAGE, OBS_TEXT, SOURCES, domain_of, episode_id_for


@dataclass(frozen=True, repr=False)
class Episode:
    """An episode of T steps.

    ``steps`` maps modality column names (see shards.format) to arrays with T rows:
    ``obs_continuous`` (T, d) float32, ``obs_discrete`` (T, k) int32, ``obs_image``
    (T, H, W, C) uint8, ``obs_text`` a length-T list of str, ``act_continuous`` (T, a)
    float32, ``act_discrete`` (T, b) int32. Step t holds the observation the agent saw and
    the action it took in response, then the reward it got.
    """

    task: str
    steps: dict[str, np.ndarray | list[str]]
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    run_id: str = "run0"
    run_index: int = 0
    source: str = "rollout"
    policy_steps: int = -1
    seed: int = -1
    success: bool | None = None
    success_step: int | None = None
    """first step whose info reported success (None: never, or the task defines no success);
    lets a trainer skip the idle tail of fixed-horizon tasks"""
    episode_id: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"Episode.source={self.source!r}; expected one of {SOURCES}")
        unknown = [k for k in self.steps if k not in MODALITY_TYPES]
        if unknown:
            raise ValueError(f"Episode.steps has unknown column(s) {unknown}; expected {list(MODALITY_TYPES)}")
        n = len(self.rewards)
        for name, values in self.steps.items():
            if len(values) != n:
                raise ValueError(f"Episode.steps[{name!r}] has {len(values)} rows, rewards has {n}")
        for name in ("terminated", "truncated"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Episode.{name} has {len(getattr(self, name))} rows, rewards has {n}")
        if self.success_step is not None and not 0 <= self.success_step < n:
            raise ValueError(f"Episode.success_step={self.success_step}; expected a step in [0, {n})")
        if self.episode_id < 0:
            object.__setattr__(self, "episode_id", episode_id_for(self.task, self.run_id, self.run_index))

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def domain(self) -> str:
        return domain_of(self.task)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    def replace(self, **changes) -> Episode:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{k}={_shape_of(v)}" for k, v in self.steps.items()
        )
        return (
            f"Episode(task={self.task!r}, id={self.episode_id}, source={self.source}, run={self.run_id}"
            f"#{self.run_index}, length={self.length}, return={self.episode_return:.3f}, {shapes})"
        )


def _shape_of(values) -> str:
    if isinstance(values, np.ndarray):
        return f"{values.dtype}{list(values.shape)}"
    return f"str[{len(values)}]"


def image_shape(episode: Episode) -> tuple[int, ...] | None:
    """Per-frame image shape (H, W, C), or None if the episode has no images."""
    images = episode.steps.get(OBS_IMAGE)
    return None if images is None else tuple(np.asarray(images).shape[1:])


def has_text(episode: Episode) -> bool:
    return OBS_TEXT in episode.steps
