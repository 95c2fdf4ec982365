"""Per-episode cuts the spec can ask for, applied as Gymnasium wrappers around each env.

    env = limited_vector_env(entry, num_envs=2, seed=0, max_episode_steps=200, cut_after_success=10)

``max_episode_steps`` truncates long episodes; ``cut_after_success`` ends an episode N steps
after the domain's success flag first turns on (Meta-World's scripted policies reach the
goal and then drift out of it, so full 500-step episodes teach a policy to leave the goal).
Both truncate (``truncated=True``), so the data says the episode was cut, not finished.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym


def limited_vector_env(entry: Any, num_envs: int, seed: int, max_episode_steps: int | None = None,
                       cut_after_success: int | None = None) -> gym.vector.VectorEnv:
    """The task's batched env with the cuts applied to every sub-env (same seeds as make_env)."""
    from experts.envs.domain import make_vector_from_fns

    def build(i: int):
        def make() -> gym.Env:
            env = entry.make_single_env(seed + i)
            if cut_after_success is not None and entry.success_key is not None:
                env = CutAfterSuccess(env, entry.success_key, cut_after_success)
            if max_episode_steps is not None:
                env = gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
            return env
        return make

    return make_vector_from_fns([build(i) for i in range(num_envs)])


class CutAfterSuccess(gym.Wrapper):
    """Truncate the episode ``extra_steps`` steps after ``info[success_key]`` first turns true."""

    def __init__(self, env: gym.Env, success_key: str, extra_steps: int) -> None:
        super().__init__(env)
        self.success_key = success_key
        self.extra_steps = extra_steps
        self._since: int | None = None

    def reset(self, **kwargs):
        self._since = None
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._since is None and info.get(self.success_key):
            self._since = 0
        elif self._since is not None:
            self._since += 1
        if self._since is not None and self._since >= self.extra_steps and not terminated:
            truncated = True
        return obs, reward, terminated, truncated, info
