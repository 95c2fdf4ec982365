"""DeepMind Control suite with state observations, as a Gymnasium env.

The observation dict is flattened in the order the task defines its keys (recorded in the
spec), actions live in [-1, 1] and are rescaled to the task's bounds, episodes last 1000 steps
(a time limit: truncated, not terminated).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from experts.envs.domain import Domain, continuous_action_columns
from shards import ModalitySpec


class DMCDomain(Domain):
    name = "dmc"

    def __init__(self) -> None:
        self._dims: dict[str, tuple[int, int, list[str]]] = {}

    def task_ids(self) -> list[str]:
        from dm_control import suite

        return [f"dmc/{domain}-{task}" for domain, task in suite.ALL_TASKS]

    def env_id(self, task_id: str) -> str:
        domain, task = _split(task_id)
        return f"dm_control/suite/{domain}/{task}"

    def env_version(self) -> str:
        from importlib.metadata import version

        return f"dm-control {version('dm-control')}"

    def make_single(self, task_id: str, seed: int) -> gym.Env:
        return DMCEnv(*_split(task_id), seed=seed)

    def _describe(self, task_id: str) -> tuple[int, int, list[str]]:
        if task_id not in self._dims:
            env = DMCEnv(*_split(task_id), seed=0)
            self._dims[task_id] = (env.observation_space.shape[0], env.action_space.shape[0], env.keys)
        return self._dims[task_id]

    def observation_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"obs_continuous": ModalitySpec(shape=[self._describe(task_id)[0]], dtype="float32")}

    def action_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"act_continuous": ModalitySpec(shape=[self._describe(task_id)[1]], dtype="float32", low=-1.0, high=1.0)}

    def to_columns(self, obs_batch: Any) -> dict[str, np.ndarray]:
        return {"obs_continuous": np.asarray(obs_batch, dtype=np.float32)}

    def action_columns(self, actions: Any) -> dict[str, np.ndarray]:
        return continuous_action_columns(actions)

    def extra(self, task_id: str) -> dict[str, Any]:
        return {"observation_keys": self._describe(task_id)[2], "episode_steps": 1000}


class DMCEnv(gym.Env):
    """A dm_control suite task behind the Gymnasium API (state observations only)."""

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str, seed: int = 0) -> None:
        from dm_control import suite

        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        obs_spec = self._env.observation_spec()
        self.keys = list(obs_spec)
        dim = sum(int(np.prod(spec.shape)) for spec in obs_spec.values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        act = self._env.action_spec()
        self._low, self._high = act.minimum.astype(np.float64), act.maximum.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, act.shape, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        step = self._env.reset()
        return self._flatten(step.observation), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        step = self._env.step(self._low + (action + 1.0) * 0.5 * (self._high - self._low))
        reward = float(step.reward or 0.0)
        done = step.last()
        terminated = bool(done and step.discount == 0.0)
        return self._flatten(step.observation), reward, terminated, bool(done and not terminated), {}

    def _flatten(self, observation) -> np.ndarray:
        return np.concatenate([np.asarray(observation[k], dtype=np.float32).ravel() for k in self.keys])


def _split(task_id: str) -> tuple[str, str]:
    domain, task = task_id.split("/", 1)[1].split("-", 1)
    return domain, task
