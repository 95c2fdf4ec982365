"""Scripted experts: the BabyAI bot and Meta-World's hand-written policies.

    python -m experts evaluate babyai/BossLevel --expert scripted --episodes 100
    python -m experts evaluate metaworld/door-open-v3 --expert scripted --episodes 20

The bot plans on the env's internal state, so it needs the in-process envs of a sync vector
env; it replans every step (cheaper and more robust than trusting a stale plan). Meta-World's
policies read only the observation; the package's own ENV_POLICY_MAP picks the policy.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from experts.base import ExpertError, batch_size
from experts.registry import TaskEntry


def scripted_expert(entry: TaskEntry, env: gym.vector.VectorEnv | None):
    if entry.domain == "babyai":
        if env is None or not hasattr(env, "envs"):
            raise ExpertError(f"{entry.task_id}: the BabyAI bot needs the sync vector env it acts in "
                              "(load_expert(task, 'scripted', env=entry.make_env(n, seed)))")
        return BabyAIBotExpert(env)
    if entry.domain == "metaworld":
        return MetaWorldScriptedExpert(entry.task_id)
    raise ExpertError(f"{entry.task_id}: no scripted expert for domain {entry.domain!r} "
                      "(scripted experts exist for babyai and metaworld; use random or a checkpoint)")


class BabyAIBotExpert:
    """minigrid's BabyAIBot, one per env, rebuilt when its env starts a new episode."""

    kind = "scripted"

    def __init__(self, env: gym.vector.SyncVectorEnv) -> None:
        from minigrid.utils.baby_ai_bot import BabyAIBot, DisappearedBoxError

        self._bot_class = BabyAIBot
        self._box_opened = DisappearedBoxError
        self._envs = [e.unwrapped for e in env.envs]
        self._bots: list[Any] = [None] * len(self._envs)
        self._taken: list[int | None] = [None] * len(self._envs)  # what each env executed last, if not our advice

    def act(self, obs_batch: Any, deterministic: bool = True) -> np.ndarray:
        actions = np.zeros(batch_size(obs_batch), dtype=np.int64)
        for i, env in enumerate(self._envs):
            if self._bots[i] is None:
                self._bots[i] = self._bot_class(env)
            try:
                actions[i] = int(self._bots[i].replan(self._taken[i]))
            except self._box_opened:
                # an executed random toggle opened a box (it vanishes): a new bot plans from the
                # grid as it is now, where the old one refuses to
                self._bots[i] = self._bot_class(env)
                actions[i] = int(self._bots[i].replan())
        self._taken = [None] * len(self._envs)
        return actions

    def executed(self, actions: np.ndarray) -> None:
        """The actions the envs took after the last ``act`` (the bot replans from them)."""
        self._taken = [int(a) for a in np.asarray(actions).reshape(len(self._envs))]

    def reset(self, env_indices) -> None:
        for i in env_indices:
            self._bots[int(i)] = None
            self._taken[int(i)] = None


class MetaWorldScriptedExpert:
    """A Meta-World scripted policy applied row by row, actions clipped to [-1, 1].

    ``deterministic=False`` adds Gaussian noise of std ``noise`` (0 by default: the policies
    are deterministic functions of the observation).
    """

    kind = "scripted"

    def __init__(self, task_id: str, noise: float = 0.0, seed: int = 0) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        name = task_id.split("/", 1)[1]
        if name not in ENV_POLICY_MAP:
            raise ExpertError(f"{task_id}: metaworld.policies.ENV_POLICY_MAP has no policy for {name!r}")
        self.policy = ENV_POLICY_MAP[name]()
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def act(self, obs_batch: Any, deterministic: bool = True) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": we clip below, as the env does
            warnings.simplefilter("ignore", UserWarning)
            actions = np.stack([self.policy.get_action(np.asarray(o)) for o in obs_batch]).astype(np.float32)
        if not deterministic and self.noise > 0:
            actions += self.rng.normal(0.0, self.noise, actions.shape).astype(np.float32)
        return np.clip(actions, -1.0, 1.0)

    def reset(self, env_indices) -> None:
        pass
