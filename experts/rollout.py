"""The batched stepping loop collectors and evaluation share.

    from experts.rollout import rollout
    result = rollout("babyai/GoToLocal", "scripted", num_envs=8, episodes=100, seed=0,
                     on_episode=print)
    print(result.mean_return, result.success_rate, result.steps_per_second)

One ``expert.act`` call per vector step. To avoid favouring short episodes, each env runs
a fixed quota (episodes split as evenly as possible over envs); extra episodes are dropped.
Episodes reach ``on_episode`` in completion order; ``result.episodes`` keeps only summaries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from experts.base import Expert, load_expert
from experts.recorder import EpisodeRecorder
from experts.registry import get_task
from shards import Episode

logger = logging.getLogger(__name__)


@dataclass
class RolloutResult:
    task_id: str
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[bool | None] = field(default_factory=list)
    env_steps: int = 0
    seconds: float = 0.0

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns)) if self.returns else float("nan")

    @property
    def success_rate(self) -> float | None:
        flags = [s for s in self.successes if s is not None]
        return float(np.mean(flags)) if flags else None

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"task": self.task_id, "episodes": len(self.returns), "mean_return": self.mean_return,
                "std_return": self.std_return, "success_rate": self.success_rate,
                "mean_length": float(np.mean(self.lengths)) if self.lengths else float("nan"),
                "env_steps": self.env_steps, "seconds": round(self.seconds, 3),
                "steps_per_second": round(self.steps_per_second, 1)}


def rollout(task_id: str, expert: Expert | str, num_envs: int, episodes: int, seed: int,
            on_episode: Callable[[Episode], Any] | None = None, max_steps: int | None = None,
            deterministic: bool = True, source: str | None = None, run_id: str | None = None,
            env: gym.vector.VectorEnv | None = None, start_index: int = 0,
            progress: bool = False, action_noise: float | None = None) -> RolloutResult:
    """Run ``expert`` on ``num_envs`` batched envs until ``episodes`` episodes finish.

    ``expert`` is an Expert or a spec string for load_expert. ``max_steps`` caps vector steps
    (a safety net; unfinished episodes are dropped). ``env`` reuses an env built by the caller
    (it is reset with ``seed`` and left open); otherwise one is built and closed here.
    ``action_noise`` perturbs the actions the envs execute and records the expert's own (DART,
    Laskey et al. 2017), so a behaviour-cloned policy learns how the expert recovers from drift:
    continuous actions get N(0, std^2) noise clipped to the bounds; a discrete action is replaced
    by a uniformly random one with probability ``action_noise``. An expert with ``executed``
    (the BabyAI bot) is told what was taken and replans from it.
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes}; expected >= 1")
    entry = get_task(task_id)
    own_env = env is None
    if env is None:
        env = entry.make_env(num_envs, seed)
    num_envs = env.num_envs
    if isinstance(expert, str):
        expert = load_expert(task_id, expert, env=env, seed=seed)
    perturb = _action_perturbation(env, action_noise, seed)
    quota = np.full(num_envs, episodes // num_envs) + (np.arange(num_envs) < episodes % num_envs)
    result = RolloutResult(task_id)

    def collect(episode: Episode) -> None:
        result.returns.append(episode.episode_return)
        result.lengths.append(episode.length)
        result.successes.append(episode.success)
        if on_episode is not None:
            on_episode(episode)

    recorder = EpisodeRecorder(entry, num_envs, source or _source_of(expert), run_id or f"{task_id}-{seed}",
                               seed, on_episode=collect, start_index=start_index)
    for i in np.flatnonzero(quota == 0):
        recorder.retire(int(i))
    done_per_env = np.zeros(num_envs, dtype=int)
    bar = _progress(progress, episodes, task_id)
    start = time.perf_counter()
    try:
        obs, _ = env.reset(seed=seed)
        expert.reset(list(range(num_envs)))
        steps = 0
        while recorder.episodes_done < episodes:
            if max_steps is not None and steps >= max_steps:
                logger.warning("%s: stopped at max_steps=%d after %d episodes", task_id, max_steps,
                               recorder.episodes_done)
                break
            actions = expert.act(obs, deterministic=deterministic)
            taken = perturb(actions)
            if taken is not actions and hasattr(expert, "executed"):
                expert.executed(taken)
            next_obs, rewards, terminated, truncated, infos = env.step(taken)
            before = recorder.episodes_done
            recorder.add_step(obs, actions, rewards, terminated, truncated, infos)
            done = np.flatnonzero(np.asarray(terminated) | np.asarray(truncated))
            if len(done):
                expert.reset(done)
                for i in done:
                    if recorder.active[i]:
                        done_per_env[i] += 1
                        if done_per_env[i] >= quota[i]:
                            recorder.retire(int(i))
                if bar is not None:
                    bar.update(recorder.episodes_done - before)
            obs = next_obs
            steps += 1
            result.env_steps += num_envs
    finally:
        result.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if own_env:
            env.close()
    return result


def _action_perturbation(env: gym.vector.VectorEnv, noise: float | None, seed: int) -> Callable[[Any], Any]:
    """Identity; Gaussian noise of std ``noise`` clipped to a Box space; or, for a Discrete
    space, a uniformly random action with probability ``noise`` (seeded by ``seed``)."""
    if not noise:
        return lambda actions: actions
    space = env.single_action_space
    rng = np.random.default_rng([seed, 0xDA27])
    if isinstance(space, gym.spaces.Box):
        def perturb(actions: Any) -> np.ndarray:
            actions = np.asarray(actions)
            return np.clip(actions + rng.normal(0.0, noise, actions.shape), space.low, space.high).astype(actions.dtype)
    elif isinstance(space, gym.spaces.Discrete):
        if noise > 1:
            raise ValueError(f"action_noise={noise}: for discrete actions it is a probability, expected <= 1")

        def perturb(actions: Any) -> np.ndarray:
            taken = np.array(actions, copy=True)
            swap = rng.random(taken.shape) < noise
            taken[swap] = space.start + rng.integers(0, space.n, int(swap.sum()))
            return taken
    else:
        raise ValueError(f"action_noise={noise}: needs Box or Discrete actions, the env has {space}")
    return perturb


def _source_of(expert: Expert) -> str:
    kind = getattr(expert, "kind", "rollout")
    return kind if kind in ("scripted", "random") else "rollout"


def _progress(enabled: bool, total: int, task_id: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=task_id, unit="ep")
