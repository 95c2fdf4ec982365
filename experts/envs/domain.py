"""What every domain adapter provides, plus the Gymnasium vector-env plumbing they share.

Autoreset semantics (every batched env the registry returns): Gymnasium's SAME_STEP mode.
When env i finishes at step t, ``step`` returns its terminated/truncated flag together with
the *first observation of its next episode* in ``obs[i]``; the last observation of the
finished episode is in ``infos["final_obs"][i]`` and its info in ``infos["final_info"]``
(Procgen cannot give the final observation: gym3 resets inside its C++ loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, AsyncVectorEnv, SyncVectorEnv

from shards import ModalitySpec


class Domain:
    """One control suite. Subclasses fill in the ids, the env builder and the column mapping."""

    name: str = ""
    #: info key telling whether an episode succeeded, or None if the domain has no success.
    success_key: str | None = None

    def task_ids(self) -> list[str]:
        raise NotImplementedError

    def env_id(self, task_id: str) -> str:
        raise NotImplementedError

    def env_version(self) -> str:
        return ""

    def make_single(self, task_id: str, seed: int) -> gym.Env:
        """One preprocessed Gymnasium env (what SB3 and sample-factory train on)."""
        raise NotImplementedError

    def make_vector(self, task_id: str, num_envs: int, seed: int, vectorization: str = "sync") -> gym.vector.VectorEnv:
        fns = [_bind(self.make_single, task_id, seed + i) for i in range(num_envs)]
        return make_vector_from_fns(fns, vectorization)

    def observation_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        raise NotImplementedError

    def action_spec(self, task_id: str) -> dict[str, ModalitySpec]:
        raise NotImplementedError

    def to_columns(self, obs_batch: Any) -> dict[str, np.ndarray | list[str]]:
        raise NotImplementedError

    def action_columns(self, actions: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def extra(self, task_id: str) -> dict[str, Any]:
        return {}


def make_vector_from_fns(fns: Sequence[Callable[[], gym.Env]], vectorization: str = "sync") -> gym.vector.VectorEnv:
    """A SAME_STEP-autoreset vector env; ``sync`` runs envs in-process (what Ray workers want)."""
    if vectorization == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    if vectorization == "async":
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, context="spawn")
    raise ValueError(f"vectorization={vectorization!r}; expected 'sync' or 'async'")


def discrete_action_columns(actions: Any) -> dict[str, np.ndarray]:
    return {"act_discrete": np.asarray(actions, dtype=np.int32).reshape(len(actions), -1)}


def continuous_action_columns(actions: Any) -> dict[str, np.ndarray]:
    return {"act_continuous": np.asarray(actions, dtype=np.float32).reshape(len(actions), -1)}


def _bind(fn: Callable[..., gym.Env], *args: Any) -> Callable[[], gym.Env]:
    return lambda: fn(*args)
