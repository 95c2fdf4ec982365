"""BabyAI levels (minigrid): the agent sees 148 ints (the 7x7x3 symbolic egocentric grid,
flattened, then its direction), as JAT does, plus the mission as text. 7 discrete actions.

Observation batch handed to experts: ``{"discrete": (N, 148) int64, "mission": tuple of N str}``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import gymnasium as gym
import numpy as np

from experts.envs.domain import Domain, discrete_action_columns
from shards import ModalitySpec

DISCRETE_DIM = 7 * 7 * 3 + 1
N_ACTIONS = 7
MAX_MISSION_CHARS = 512


class BabyAIDomain(Domain):
    name = "babyai"
    success_key = "success"

    def task_ids(self) -> list[str]:
        import minigrid  # noqa: F401  (registers BabyAI-*)

        return [f"babyai/{_level(env_id)}" for env_id in gym.registry if env_id.startswith("BabyAI-")]

    def env_id(self, task_id: str) -> str:
        import minigrid  # noqa: F401

        level = task_id.split("/", 1)[1]
        for env_id in gym.registry:
            if env_id.startswith("BabyAI-") and _level(env_id) == level:
                return env_id
        raise ValueError(f"{task_id}: no registered BabyAI level {level!r}")

    def env_version(self) -> str:
        from importlib.metadata import version

        return f"minigrid {version('minigrid')}"

    def make_single(self, task_id: str, seed: int) -> gym.Env:
        import minigrid  # noqa: F401

        return BabyAIObservation(gym.make(self.env_id(task_id), disable_env_checker=True))

    def observation_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"obs_discrete": ModalitySpec(shape=[DISCRETE_DIM], dtype="int32", low=0, high=255),
                "obs_text": ModalitySpec(shape=[], dtype="string")}

    def action_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"act_discrete": ModalitySpec(shape=[1], dtype="int32", low=0, high=N_ACTIONS - 1, n=N_ACTIONS)}

    def to_columns(self, obs_batch: Any) -> dict[str, np.ndarray | list[str]]:
        return {"obs_discrete": np.asarray(obs_batch["discrete"], dtype=np.int32),
                "obs_text": [str(m) for m in obs_batch["mission"]]}

    def action_columns(self, actions: Any) -> dict[str, np.ndarray]:
        return discrete_action_columns(actions)

    def extra(self, task_id: str) -> dict[str, Any]:
        return {"obs_discrete_layout": "7x7x3 grid (object, color, state) row-major, then direction",
                "success": "reward > 0 at the terminating step"}


class BabyAIObservation(gym.Wrapper):
    """Flatten image+direction to 148 ints, keep the mission as text, report ``success``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({
            "discrete": gym.spaces.Box(0, 255, (DISCRETE_DIM,), np.int64),
            "mission": gym.spaces.Text(MAX_MISSION_CHARS, charset=_CHARSET),
        })

    def reset(self, **kwargs):
        with contextlib.redirect_stdout(sys.stderr):  # minigrid prints "Sampling rejected" (keeps --json clean)
            obs, info = self.env.reset(**kwargs)
        return self._convert(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info = {**info, "success": bool(terminated and reward > 0)}
        return self._convert(obs), reward, terminated, truncated, info

    @staticmethod
    def _convert(obs: dict) -> dict:
        discrete = np.concatenate([np.asarray(obs["image"], dtype=np.int64).ravel(), [int(obs["direction"])]])
        return {"discrete": discrete, "mission": obs["mission"]}


_CHARSET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.'-")


def _level(env_id: str) -> str:
    """``BabyAI-GoToLocal-v0`` -> ``GoToLocal``."""
    return env_id[len("BabyAI-"):].rsplit("-v", 1)[0]
