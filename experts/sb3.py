"""Stable-Baselines3 experts: train per the zoo recipe while recording every training episode,
and load saved ``.zip`` checkpoints as batched experts.

    from experts.sb3 import train_sb3, SB3Expert
    path = train_sb3(get_task("dmc/cartpole-swingup"), recipe(...), out_dir, seed=0, on_episode=sink)
    expert = SB3Expert.load(get_task("dmc/cartpole-swingup"), path)

Recording: a callback reads each vector step from SB3's rollout loop (the observation the
agent acted on is ``model._last_obs`` at callback time, the action the one sent to the env)
and feeds the EpisodeRecorder, so episodes come out in completion order with the agent's
env-step count. Rewards clipped for learning keep their raw value in ``info["raw_reward"]``.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecTransposeImage, is_vecenv_wrapped

from experts.base import ExpertError, check_spaces, policy_spaces
from experts.recorder import EpisodeRecorder
from experts.registry import TaskEntry
from experts.zoo import Recipe
from shards import Episode

logger = logging.getLogger(__name__)

ALGORITHMS = {"ppo": "stable_baselines3:PPO", "sac": "stable_baselines3:SAC", "dqn": "stable_baselines3:DQN",
              "a2c": "stable_baselines3:A2C", "td3": "stable_baselines3:TD3",
              "qrdqn": "sb3_contrib:QRDQN", "tqc": "sb3_contrib:TQC"}
# The policy module a saved model names -> its algorithm (when no provenance JSON sits beside it).
POLICY_MODULES = {"stable_baselines3.sac": "sac", "stable_baselines3.dqn": "dqn", "stable_baselines3.td3": "td3",
                  "sb3_contrib.qrdqn": "qrdqn", "sb3_contrib.tqc": "tqc", "stable_baselines3.common": "ppo"}


class SB3Expert:
    """A loaded SB3 model: one ``model.predict`` per vector step over the whole batch."""

    kind = "sb3"

    def __init__(self, model: Any, algo: str) -> None:
        self.model, self.algo = model, algo

    @classmethod
    def load(cls, entry: TaskEntry, path: Path, env: gym.vector.VectorEnv | None = None) -> SB3Expert:
        algo = _algorithm_of(path)
        model = algorithm_class(algo).load(str(path), device="cpu")
        obs_space, act_space = policy_spaces(entry, env)
        check_spaces(str(path), obs_space, model.observation_space, "observation")
        check_spaces(str(path), act_space, model.action_space, "action")
        return cls(model, algo)

    def act(self, obs_batch: Any, deterministic: bool = True) -> np.ndarray:
        if isinstance(obs_batch, dict):  # BabyAI: the network sees the 148 ints only
            obs_batch = obs_batch["discrete"]
        actions, _ = self.model.predict(np.asarray(obs_batch), deterministic=deterministic)
        return actions

    def reset(self, env_indices) -> None:
        pass


def train_sb3(entry: TaskEntry, recipe: Recipe, out_dir: Path, seed: int,
              on_episode: Callable[[Episode], Any] | None, run_id: str,
              max_wall_seconds: float | None = None, progress: bool = False,
              resume_from: Path | None = None) -> tuple[Path, dict[str, Any], SB3Expert]:
    """Train per ``recipe``; returns the saved ``model.zip``, facts for the provenance and the
    in-memory policy (to evaluate what was saved against what was trained).

    ``resume_from`` continues a saved run (its weights, step count and, for off-policy
    algorithms, ``replay_buffer.pkl`` beside it if present) up to the budget; training
    episodes then continue the earlier run's ``run_index`` numbering. Off-policy runs save
    their replay buffer beside the model so they can be resumed.
    """
    if entry.domain == "babyai":
        make = lambda i: GridOnly(entry.make_single_env(seed + i))  # noqa: E731
    else:
        make = lambda i: entry.make_single_env(seed + i)  # noqa: E731
    fns = [_env_fn(make, i, recipe.clip_reward) for i in range(recipe.n_envs)]
    venv = DummyVecEnv(fns)
    venv.seed(seed)
    algo_cls = algorithm_class(recipe.algo)
    start_index = 0
    if resume_from is not None:
        model, start_index = _resume(algo_cls, Path(resume_from), venv, entry)
    else:
        model = algo_cls(recipe.policy, venv, seed=seed, device="cpu", verbose=0, **_hyperparams(recipe.hyperparams))
    callback = RecordingCallback(entry, on_episode, run_id, seed, max_wall_seconds, start_index)
    model.learn(total_timesteps=max(recipe.steps - model.num_timesteps, 1), callback=callback,
                progress_bar=progress, reset_num_timesteps=resume_from is None)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.zip"
    model.save(str(path))
    if hasattr(model, "save_replay_buffer") and recipe.algo in ("sac", "tqc", "td3") and entry.domain != "atari":
        model.save_replay_buffer(str(out_dir / "replay_buffer.pkl"))
    venv.close()
    facts = {"steps_done": int(model.num_timesteps), "stopped_early": callback.stopped_early,
             "resumed_from": str(resume_from) if resume_from else None, "start_run_index": start_index}
    return path, facts, SB3Expert(model, recipe.algo)


def _resume(algo_cls, path: Path, venv, entry: TaskEntry):
    """Load a saved run to continue it; returns the model and the next run_index."""
    if path.is_dir():
        path = path / "model.zip"
    if not path.exists():
        raise ValueError(f"resume_from={path}: no SB3 model.zip there")
    model = algo_cls.load(str(path), env=venv, device="cpu")
    check_spaces(str(path), venv.observation_space, model.observation_space, "observation")
    buffer = path.with_name("replay_buffer.pkl")
    if buffer.exists() and hasattr(model, "load_replay_buffer"):
        model.load_replay_buffer(str(buffer))
    provenance = path.with_suffix(".json")
    start_index = 0
    if provenance.exists():
        previous = json.loads(provenance.read_text())
        start_index = int(previous.get("next_run_index", previous.get("training_episodes", 0)))
    logger.info("resuming %s at %d steps (replay buffer: %s, next run_index %d)", path, model.num_timesteps,
                buffer.exists(), start_index)
    return model, start_index


class RecordingCallback(BaseCallback):
    """Feeds each SB3 rollout step to an EpisodeRecorder and enforces an optional wall-time cap."""

    def __init__(self, entry: TaskEntry, on_episode: Callable[[Episode], Any] | None, run_id: str, seed: int,
                 max_wall_seconds: float | None = None, start_index: int = 0) -> None:
        super().__init__()
        self.start_index = start_index
        self.entry, self.on_episode, self.run_id, self.seed = entry, on_episode, run_id, seed
        self.max_wall_seconds = max_wall_seconds
        self.recorder: EpisodeRecorder | None = None
        self.stopped_early = False
        self._transpose = False
        self._start = time.perf_counter()

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        self._transpose = is_vecenv_wrapped(self.training_env, VecTransposeImage)
        self.recorder = EpisodeRecorder(self.entry, self.training_env.num_envs, "training", self.run_id, self.seed,
                                        on_episode=self.on_episode, start_policy_steps=self.model.num_timesteps,
                                        start_index=self.start_index)

    def _on_step(self) -> bool:
        # At callback time SB3 has not yet replaced _last_obs: it is the observation acted on.
        obs = getattr(self.model, "_last_original_obs", None)
        if obs is None:
            obs = self.model._last_obs
        if self._transpose:  # SB3 showed the CNN channels-first images; shards keep the env's layout
            obs = np.transpose(obs, (0, 2, 3, 1))
        infos = self.locals["infos"]
        if self.entry.domain == "babyai":
            obs = {"discrete": obs, "mission": tuple(i.get("mission", "") for i in infos)}
        actions = self.locals.get("clipped_actions", self.locals.get("actions"))
        dones = np.asarray(self.locals["dones"], dtype=bool)
        truncated = np.array([bool(i.get("TimeLimit.truncated", False)) for i in infos]) & dones
        self.recorder.add_step(obs, actions, self.locals["rewards"], dones & ~truncated, truncated, infos)
        if self.max_wall_seconds and time.perf_counter() - self._start > self.max_wall_seconds:
            logger.warning("wall-time cap of %.0f s reached at %d steps", self.max_wall_seconds, self.model.num_timesteps)
            self.stopped_early = True
            return False
        return True


def algorithm_class(algo: str):
    if algo not in ALGORITHMS:
        raise ExpertError(f"unknown SB3 algorithm {algo!r}; expected one of {sorted(ALGORITHMS)}")
    module, name = ALGORITHMS[algo].split(":")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except ImportError as error:
        package = "sb3-contrib" if module == "sb3_contrib" else "stable-baselines3"
        raise ImportError(f"{algo} needs {package}: pip install -c requirements/constraints.txt {package}") from error


class ClipReward(gym.RewardWrapper):
    """Clip rewards to [-1, 1] for learning; ``info["raw_reward"]`` keeps the env's reward."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "raw_reward": float(reward)}
        return obs, float(np.clip(reward, -1.0, 1.0)), terminated, truncated, info


class GridOnly(gym.Wrapper):
    """BabyAI for an MLP: the 148 ints only; the mission goes to info for the recorder."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = env.observation_space["discrete"]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._mission = obs["mission"]
        return obs["discrete"], info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "mission": self._mission}
        self._mission = obs["mission"]
        return obs["discrete"], reward, terminated, truncated, info


def _env_fn(make: Callable[[int], gym.Env], i: int, clip_reward: bool) -> Callable[[], gym.Env]:
    def build() -> gym.Env:
        env = make(i)
        return ClipReward(env) if clip_reward else env

    return build


def _hyperparams(raw: dict[str, Any]) -> dict[str, Any]:
    """rl-zoo3 notation -> SB3 kwargs (``lin_<v>`` schedules)."""
    out = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("lin_"):
            start = float(value[4:])
            out[key] = lambda progress, start=start: progress * start
        else:
            out[key] = value
    return out


def _algorithm_of(path: Path) -> str:
    provenance = path.with_suffix(".json")
    if provenance.exists():
        algo = json.loads(provenance.read_text()).get("algorithm")
        if algo in ALGORITHMS:
            return algo
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ExpertError(f"{path}: not an SB3 checkpoint ({error})") from None
    policy_class = json.dumps(data.get("policy_class", {}))  # holds the policy's __module__
    for prefix, algo in POLICY_MODULES.items():
        if prefix in policy_class:
            return algo
    raise ExpertError(f"{path}: cannot tell which SB3 algorithm saved it; put a provenance JSON "
                      f"({provenance.name} with 'algorithm') beside it")


