"""BabyAI levels (minigrid): the 7x7x3 symbolic egocentric grid, the agent's direction and the
mission as text. 7 discrete actions.

Observation batch handed to experts: ``{"discrete": (N, 148) int64, "mission": tuple of N str}``
(the grid flattened, then the direction, as JAT stores it): a learned expert's network sees
these 148 ints.

Stored columns (what the shards hold and a Gato is tokenized from): ``obs_discrete`` packs each
grid cell's (object, colour, state) into one code, ``object + 11 * (colour + 6 * state)`` in
[0, 198), so a step is 49 cell codes then the direction (50 ints) and ``obs_text`` is the
mission. A Gato spends one token per discrete value: the packed cell costs one token where
JAT's layout costs three, which makes a BabyAI timestep about 57 tokens instead of 155 and
lets a context of a given size remember three times as many steps. The packing is lossless:
``jat_layout`` gives back JAT's 148 ints.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from experts.envs.domain import Domain, discrete_action_columns
from shards import ModalitySpec

GRID_CELLS = 7 * 7
EXPERT_DIM = GRID_CELLS * 3 + 1  # what learned experts see: JAT's 148 ints
CELL_RADICES = (len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX))  # (11, 6, 3)
CELL_CODES = int(np.prod(CELL_RADICES))  # 198
DISCRETE_DIM = GRID_CELLS + 1  # stored: one code per cell, then the direction
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
        return {"obs_discrete": ModalitySpec(shape=[DISCRETE_DIM], dtype="int32", low=0, high=CELL_CODES - 1,
                                             n=CELL_CODES),
                "obs_text": ModalitySpec(shape=[], dtype="string")}

    def action_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"act_discrete": ModalitySpec(shape=[1], dtype="int32", low=0, high=N_ACTIONS - 1, n=N_ACTIONS)}

    def to_columns(self, obs_batch: Any) -> dict[str, np.ndarray | list[str]]:
        return {"obs_discrete": pack_cells(np.asarray(obs_batch["discrete"])),
                "obs_text": [str(m) for m in obs_batch["mission"]]}

    def action_columns(self, actions: Any) -> dict[str, np.ndarray]:
        return discrete_action_columns(actions)

    def extra(self, task_id: str) -> dict[str, Any]:
        return {"obs_discrete_layout": "7x7 grid row-major, one code per cell: object + 11 * (color + 6 * state); "
                                       "then direction (experts.envs.babyai.jat_layout unpacks JAT's 148 ints)",
                "success": "reward > 0 at the terminating step"}


def pack_cells(expert_obs: np.ndarray) -> np.ndarray:
    """(N, 148) ints as experts see them -> (N, 50) int32 stored columns: one code per cell, then direction."""
    expert_obs = np.asarray(expert_obs)
    if expert_obs.ndim != 2 or expert_obs.shape[1] != EXPERT_DIM:
        raise ValueError(f"BabyAI observation of shape {expert_obs.shape}: expected (N, {EXPERT_DIM})")
    grid = expert_obs[:, :-1].reshape(len(expert_obs), GRID_CELLS, 3).astype(np.int32)
    objects, colours, states = CELL_RADICES
    codes = grid[..., 0] + objects * (grid[..., 1] + colours * grid[..., 2])
    return np.concatenate([codes, expert_obs[:, -1:].astype(np.int32)], axis=1)


def jat_layout(obs_discrete: np.ndarray) -> np.ndarray:
    """Stored (N, 50) columns -> JAT's (N, 148) ints (grid flattened as (object, colour, state), then direction)."""
    obs_discrete = np.asarray(obs_discrete)
    if obs_discrete.ndim != 2 or obs_discrete.shape[1] != DISCRETE_DIM:
        raise ValueError(f"BabyAI obs_discrete of shape {obs_discrete.shape}: expected (N, {DISCRETE_DIM})")
    objects, colours, _ = CELL_RADICES
    codes = obs_discrete[:, :-1]
    grid = np.stack([codes % objects, codes // objects % colours, codes // (objects * colours)], axis=-1)
    return np.concatenate([grid.reshape(len(codes), -1), obs_discrete[:, -1:]], axis=1).astype(np.int32)


class BabyAIObservation(gym.Wrapper):
    """Flatten image+direction to 148 ints, keep the mission as text, report ``success``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({
            "discrete": gym.spaces.Box(0, 255, (EXPERT_DIM,), np.int64),
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
