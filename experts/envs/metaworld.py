"""Meta-World v3 single-task environments (MT1): 39-dim state, 4-dim action in [-1, 1],
500-step episodes, goals randomized per reset, ``info["success"]`` each step.

Episodes run the full 500 steps (they do not stop at success); an episode counts as a success
if ``info["success"]`` was true at *any* step, since the scripted policies often reach the goal
and then drift out of it. ``gym.make`` costs about a second, so make an env once and reset it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from experts.envs.domain import Domain, continuous_action_columns
from shards import ModalitySpec

OBS_DIM = 39
ACT_DIM = 4
EPISODE_STEPS = 500


class MetaWorldDomain(Domain):
    name = "metaworld"
    success_key = "success"

    def task_ids(self) -> list[str]:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        return [f"metaworld/{name}" for name in ALL_V3_ENVIRONMENTS]

    def env_id(self, task_id: str) -> str:
        return f"Meta-World/MT1:{task_id.split('/', 1)[1]}"

    def env_version(self) -> str:
        from importlib.metadata import version

        return f"metaworld {version('metaworld')}"

    def make_single(self, task_id: str, seed: int) -> gym.Env:
        import metaworld  # noqa: F401  (registers Meta-World/*)

        env = gym.make("Meta-World/MT1", env_name=task_id.split("/", 1)[1], seed=seed, disable_env_checker=True)
        return _UnboundedObservation(_GoalFromResetSeed(env))

    def observation_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"obs_continuous": ModalitySpec(shape=[OBS_DIM], dtype="float32")}

    def action_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"act_continuous": ModalitySpec(shape=[ACT_DIM], dtype="float32", low=-1.0, high=1.0)}

    def to_columns(self, obs_batch: Any) -> dict[str, np.ndarray]:
        return {"obs_continuous": np.asarray(obs_batch, dtype=np.float32)}

    def action_columns(self, actions: Any) -> dict[str, np.ndarray]:
        return continuous_action_columns(actions)

    def extra(self, task_id: str) -> dict[str, Any]:
        return {"episode_steps": EPISODE_STEPS, "success": "info['success'] at any step",
                "goals": "MT1: env seed picks 50 goals; a seeded reset samples one from its seed, an "
                         "unseeded one from the env's random state"}


class _GoalFromResetSeed(gym.Wrapper):
    """``reset(seed=s)`` picks the goal from ``s`` alone.

    MT1's task wrapper draws the goal *before* the reset seeds the env's random state, so
    without this the goal depends on how many resets came before: episode seed s gave another
    goal in a fresh env than in a used one, and ten fresh envs reset with seeds 0..9 all got
    the same goal (which made batched evaluation score one goal ten times)."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.env.unwrapped.np_random = np.random.default_rng(seed)
        return self.env.reset(seed=seed, options=options)


class _UnboundedObservation(gym.ObservationWrapper):
    """Meta-World observations leave their declared bounds; declare them unbounded instead."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)

    def observation(self, observation):
        return observation
