"""Turn a stream of vector-env steps into finished ``shards.Episode``s, in completion order.

    recorder = EpisodeRecorder(entry, num_envs=8, source="training", run_id="pong-ppo-s0", seed=0,
                               on_episode=writer.add)
    obs, _ = env.reset(seed=0)
    while ...:
        actions = expert.act(obs)
        next_obs, rewards, terminated, truncated, infos = env.step(actions)
        recorder.add_step(obs, actions, rewards, terminated, truncated, infos)
        obs = next_obs

Step t of an episode holds the observation the agent saw, the action it took and the reward
it got (shards' convention), so the SAME_STEP final observation is not stored. Each episode
carries ``run_index`` (0, 1, 2... in the order episodes finish; ties broken by env index),
``policy_steps`` (how many env steps the agent had taken, over all envs, when the episode
began), the run's ``seed`` and ``success`` where the domain defines it (Meta-World: success
at any step; BabyAI: positive reward at termination; Procgen: level completed), with
``success_step``, the first step that reported it.

``infos`` may be Gymnasium's vector dict (with ``final_info`` for finished envs) or SB3's list
of per-env dicts. An ``info["raw_reward"]`` (set by reward-clipping wrappers) replaces the
reward, so shards always hold the environment's own reward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from experts.registry import TaskEntry
from shards import Episode


class EpisodeRecorder:
    """Buffers per-env steps and emits an Episode for each finished episode."""

    def __init__(self, task_entry: TaskEntry, num_envs: int, source: str, run_id: str, seed: int,
                 on_episode: Callable[[Episode], Any] | None = None, start_index: int = 0,
                 start_policy_steps: int = 0) -> None:
        self.entry = task_entry
        self.num_envs = num_envs
        self.source, self.run_id, self.seed = source, run_id, seed
        self.on_episode = on_episode
        self.next_index = start_index
        self.policy_steps = start_policy_steps
        self.active = np.ones(num_envs, dtype=bool)
        self._rows: list[list[dict[str, Any]]] = [[] for _ in range(num_envs)]
        self._success: list[bool | None] = [None] * num_envs
        self._success_step: list[int | None] = [None] * num_envs
        self._began: list[int] = [start_policy_steps] * num_envs
        self.episodes_done = 0

    def add_step(self, obs: Any, actions: Any, rewards: Any, terminated: Any, truncated: Any,
                 infos: Any = None) -> list[Episode]:
        """Record one vector step; returns (and sends to ``on_episode``) the episodes it finished."""
        obs_cols = self.entry.to_columns(obs)
        act_cols = self.entry.action_columns(actions)
        rewards = np.asarray(rewards, dtype=np.float64).reshape(self.num_envs)
        terminated = np.asarray(terminated, dtype=bool).reshape(self.num_envs)
        truncated = np.asarray(truncated, dtype=bool).reshape(self.num_envs)
        done = terminated | truncated
        finished: list[Episode] = []
        for i in range(self.num_envs):
            if self.active[i]:
                columns = {name: col[i] for name, col in obs_cols.items()}
                columns.update({name: col[i] for name, col in act_cols.items()})
                episode = self._append(i, columns, rewards[i], terminated[i], truncated[i],
                                       lambda key, i=i: _info_value(infos, key, i, done[i]))
                if episode is not None:
                    finished.append(episode)
        self.policy_steps += self.num_envs
        for i in np.flatnonzero(done):
            self._began[i] = self.policy_steps
        return finished

    def add_env_step(self, i: int, obs: Any, action: Any, reward: float, terminated: bool, truncated: bool,
                     info: dict | None = None) -> Episode | None:
        """Record one step of env ``i`` alone (for trainers that step envs one by one)."""
        self.policy_steps += 1
        if not self.active[i]:
            return None
        columns = {name: col[0] for name, col in self.entry.to_columns(_batch_of_one(obs)).items()}
        columns.update({name: col[0] for name, col in self.entry.action_columns(np.asarray([action])).items()})
        episode = self._append(i, columns, float(reward), bool(terminated), bool(truncated),
                               lambda key: (info or {}).get(key))
        if terminated or truncated:
            self._began[i] = self.policy_steps
        return episode

    def _append(self, i: int, columns: dict[str, Any], reward: float, terminated: bool, truncated: bool,
                info_value: Callable[[str], Any]) -> Episode | None:
        raw = info_value("raw_reward")
        columns["_reward"] = reward if raw is None else float(raw)
        columns["_terminated"], columns["_truncated"] = bool(terminated), bool(truncated)
        self._rows[i].append(columns)
        key = self.entry.success_key
        if key is not None:
            flag = info_value(key)
            if flag is not None:
                self._success[i] = bool(self._success[i]) or bool(flag)
                if flag and self._success_step[i] is None:
                    self._success_step[i] = len(self._rows[i]) - 1
        return self._finish(i) if terminated or truncated else None

    def retire(self, env_index: int) -> None:
        """Stop recording env ``env_index`` (its partial episode is dropped)."""
        self.active[env_index] = False
        self._rows[env_index] = []

    def _finish(self, i: int) -> Episode:
        rows, self._rows[i] = self._rows[i], []
        success = self._success[i]
        if self.entry.success_key is not None and success is None:
            success = False
        success_step, self._success_step[i] = self._success_step[i], None
        self._success[i] = None
        columns = [c for c in rows[0] if not c.startswith("_")]
        steps = {c: [r[c] for r in rows] if c == "obs_text" else np.stack([r[c] for r in rows]) for c in columns}
        episode = Episode(
            task=self.entry.task_id, steps=steps,
            rewards=np.array([r["_reward"] for r in rows], dtype=np.float32),
            terminated=np.array([r["_terminated"] for r in rows], dtype=bool),
            truncated=np.array([r["_truncated"] for r in rows], dtype=bool),
            run_id=self.run_id, run_index=self.next_index, source=self.source,
            policy_steps=self._began[i], seed=self.seed, success=success,
            success_step=success_step,
        )
        self.next_index += 1
        self.episodes_done += 1
        if self.on_episode is not None:
            self.on_episode(episode)
        return episode


def _batch_of_one(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: (v,) if isinstance(v, str) else np.asarray(v)[None] for k, v in obs.items()}
    return np.asarray(obs)[None]


def _info_value(infos: Any, key: str, i: int, done: bool) -> Any:
    """``infos[key]`` for env i from a Gymnasium vector info dict or an SB3 list of dicts.

    For an env that just finished, Gymnasium (SAME_STEP) moves the step's info into
    ``final_info`` and puts the reset info at the top level, so look there first.
    """
    if infos is None:
        return None
    if isinstance(infos, (list, tuple)):
        return infos[i].get(key) if i < len(infos) else None
    if done and "final_info" in infos:
        value = _masked(infos["final_info"], key, i)
        if value is not None:
            return value
    return _masked(infos, key, i)


def _masked(infos: dict, key: str, i: int) -> Any:
    if key not in infos:
        return None
    mask = infos.get(f"_{key}")
    if mask is not None and not mask[i]:
        return None
    return infos[key][i]
