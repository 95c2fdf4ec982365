"""Procgen (procgen2, gym3 API): 64x64 RGB, easy distribution, 15 actions, unlimited levels.

gym3 is natively batched: ``ProcgenVectorEnv`` drives one ``ProcgenGym3Env(num=N)`` and
exposes the Gymnasium VectorEnv API with SAME_STEP autoreset (gym3 restarts a finished env
inside its C++ loop, so ``infos`` carries no ``final_obs``; ``terminated`` marks every episode
end, including Procgen's internal time limits, which gym3 does not tell apart).
``infos["level_complete"]`` (on finished envs) says whether the level was solved.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from experts.envs.domain import Domain, discrete_action_columns
from shards import ModalitySpec

PROCGEN_16 = ("bigfish bossfight caveflyer chaser climber coinrun dodgeball fruitbot heist jumper leaper "
              "maze miner ninja plunder starpilot").split()
SIZE = 64
N_ACTIONS = 15


class ProcgenDomain(Domain):
    name = "procgen"
    success_key = "level_complete"

    def __init__(self, distribution_mode: str = "easy") -> None:
        self.distribution_mode = distribution_mode

    def task_ids(self) -> list[str]:
        return [f"procgen/{game}" for game in PROCGEN_16]

    def env_id(self, task_id: str) -> str:
        return f"procgen:procgen-{task_id.split('/', 1)[1]}-v0"

    def env_version(self) -> str:
        from importlib.metadata import version

        return f"procgen2 {version('procgen2')}"

    def make_vector(self, task_id: str, num_envs: int, seed: int, vectorization: str = "sync") -> gym.vector.VectorEnv:
        return ProcgenVectorEnv(task_id.split("/", 1)[1], num_envs, seed, self.distribution_mode)

    def make_single(self, task_id: str, seed: int) -> gym.Env:
        return ProcgenSingleEnv(task_id.split("/", 1)[1], seed, self.distribution_mode)

    def observation_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"obs_image": ModalitySpec(shape=[SIZE, SIZE, 3], dtype="uint8", low=0, high=255)}

    def action_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        return {"act_discrete": ModalitySpec(shape=[1], dtype="int32", low=0, high=N_ACTIONS - 1, n=N_ACTIONS)}

    def to_columns(self, obs_batch: Any) -> dict[str, np.ndarray]:
        return {"obs_image": np.asarray(obs_batch, dtype=np.uint8)}

    def action_columns(self, actions: Any) -> dict[str, np.ndarray]:
        return discrete_action_columns(actions)

    def extra(self, task_id: str) -> dict[str, Any]:
        return {"distribution_mode": self.distribution_mode, "num_levels": 0, "start_level": 0,
                "success": "info['level_complete'] (prev_level_complete) at episode end"}


class ProcgenVectorEnv(gym.vector.VectorEnv):
    """N Procgen envs stepped by one gym3 call, behind Gymnasium's VectorEnv API."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, game: str, num_envs: int, seed: int = 0, distribution_mode: str = "easy") -> None:
        self.game, self.num_envs, self.distribution_mode = game, num_envs, distribution_mode
        self.single_observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.single_action_space = gym.spaces.Discrete(N_ACTIONS)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._seed = seed
        self._env = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """gym3 cannot reset: a new seed (or the first reset) rebuilds the batch of games."""
        if seed is not None or self._env is None:
            self._seed = self._seed if seed is None else int(seed)
            self._env = self._build(self._seed)
        _, obs, _ = self._env.observe()
        return np.array(obs["rgb"]), {}

    def step(self, actions):
        if self._env is None:
            raise RuntimeError("ProcgenVectorEnv.step before reset()")
        self._env.act(np.asarray(actions, dtype=np.int32).reshape(self.num_envs))
        rewards, obs, first = self._env.observe()
        done = np.asarray(first, dtype=bool)
        infos: dict[str, Any] = {}
        if done.any():
            complete = np.array([bool(i.get("prev_level_complete", 0)) for i in self._env.get_info()])
            infos = {"level_complete": complete & done, "_level_complete": done}
        return (np.array(obs["rgb"]), np.asarray(rewards, dtype=np.float32), done,
                np.zeros(self.num_envs, dtype=bool), infos)

    def close_extras(self, **kwargs) -> None:
        self._env = None

    def _build(self, seed: int):
        from procgen import ProcgenGym3Env

        return ProcgenGym3Env(num=self.num_envs, env_name=self.game, distribution_mode=self.distribution_mode,
                              num_levels=0, start_level=0, rand_seed=seed)


class ProcgenSingleEnv(gym.Env):
    """One Procgen game as a Gymnasium env (what SB3 and sample-factory's workers build)."""

    metadata = {"render_modes": []}

    def __init__(self, game: str, seed: int = 0, distribution_mode: str = "easy") -> None:
        self._vec = ProcgenVectorEnv(game, 1, seed, distribution_mode)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._vec._env is None:
            obs, _ = self._vec.reset(seed=seed)
        else:
            obs = self._next_obs  # gym3 already started the next episode
        return obs[0], {}

    def step(self, action):
        obs, rewards, done, _, infos = self._vec.step(np.array([action]))
        self._next_obs = obs
        info = {"level_complete": bool(infos["level_complete"][0])} if done[0] else {}
        return obs[0], float(rewards[0]), bool(done[0]), False, info
