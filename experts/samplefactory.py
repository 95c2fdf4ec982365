"""sample-factory experts: APPO trained by sample-factory's own learner on our envs (serial
mode, CPU), and loading of sample-factory experiment dirs (config.json + checkpoint_p0/*.pth,
the layout of the public Atari "2B" experts JAT used).

    from experts.samplefactory import SampleFactoryExpert, train_sample_factory
    expert = SampleFactoryExpert.load(get_task("atari/pong"), Path("runs/pong/sample_factory"))

Recording: sample-factory builds its envs itself, so each env is wrapped (inside its env
factory) with ``RecordingEnv``, which feeds that env's steps to one shared EpisodeRecorder.
Serial mode steps every env in this process, so episodes arrive in completion order and the
recorder's step counter is the agent's env-step count. Images reach the network channels-first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from experts.base import ExpertError, policy_spaces
from experts.recorder import EpisodeRecorder
from experts.registry import TaskEntry, get_task
from experts.zoo import Recipe
from shards import Episode

logger = logging.getLogger(__name__)

ENV_PREFIX = "gatoforge__"
EXPERIMENT = "sample_factory"

# The recorder of the training run in this process (sample-factory's env factory is a plain
# function looked up by name, so the factory finds it here; a spawned env-info probe has none).
_ACTIVE: dict[str, Any] = {}


class SampleFactoryExpert:
    """A sample-factory actor-critic evaluated on the whole batch in one forward pass."""

    kind = "sample-factory"

    def __init__(self, actor_critic: Any, cfg: Any, channels_first: bool) -> None:
        import torch

        self.actor_critic, self.cfg = actor_critic, cfg
        self.channels_first = channels_first
        self._torch = torch
        self._rnn_states = None

    @classmethod
    def load(cls, entry: TaskEntry, path: Path, env: gym.vector.VectorEnv | None = None) -> SampleFactoryExpert:
        _require_sample_factory()
        import torch
        from sample_factory.algo.learning.learner import Learner
        from sample_factory.model.actor_critic import create_actor_critic

        cfg = _load_cfg(path)
        obs_space, act_space = _network_spaces(entry, env)
        actor_critic = create_actor_critic(cfg, gym.spaces.Dict({"obs": obs_space}), act_space)
        checkpoints = Learner.get_checkpoints(str(path / "checkpoint_p0"), "checkpoint_*")
        if not checkpoints:
            raise ExpertError(f"{path}: no checkpoint_p0/checkpoint_*.pth")
        state = Learner.load_checkpoint(checkpoints, torch.device("cpu"))["model"]
        mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs task {tuple(actor_critic.state_dict()[k].shape)}"
                      for k, v in state.items()
                      if k in actor_critic.state_dict() and tuple(v.shape) != tuple(actor_critic.state_dict()[k].shape)]
        if mismatched:
            raise ExpertError(f"{path}: checkpoint does not match {entry.task_id} (observation {obs_space.shape}, "
                              f"action {act_space}): shapes differ at " + "; ".join(mismatched[:4]))
        actor_critic.load_state_dict(state)
        actor_critic.eval()
        return cls(actor_critic, cfg, channels_first=len(obs_space.shape) == 3)

    def act(self, obs_batch: Any, deterministic: bool = True) -> np.ndarray:
        from sample_factory.algo.utils.action_distributions import argmax_actions
        from sample_factory.algo.utils.rl_utils import prepare_and_normalize_obs
        from sample_factory.model.model_utils import get_rnn_size

        torch = self._torch
        obs = _network_obs(obs_batch, self.channels_first)
        n = len(obs)
        if self._rnn_states is None or len(self._rnn_states) != n:
            self._rnn_states = torch.zeros(n, get_rnn_size(self.cfg))
        with torch.no_grad():
            normalized = prepare_and_normalize_obs(self.actor_critic, {"obs": torch.as_tensor(obs)})
            out = self.actor_critic(normalized, self._rnn_states)
            actions = argmax_actions(self.actor_critic.action_distribution()) if deterministic else out["actions"]
            self._rnn_states = out["new_rnn_states"]
        return actions.cpu().numpy().reshape(n)

    def reset(self, env_indices) -> None:
        if self._rnn_states is not None:
            for i in env_indices:
                self._rnn_states[int(i)] = 0.0


def train_sample_factory(entry: TaskEntry, recipe: Recipe, out_dir: Path, seed: int,
                         on_episode: Callable[[Episode], Any] | None, run_id: str,
                         max_wall_seconds: float | None = None) -> tuple[Path, dict[str, Any], SampleFactoryExpert]:
    """APPO through sample-factory's runner in serial mode; returns the experiment dir, facts
    for the provenance and the policy as saved (sample-factory keeps its learner to itself)."""
    _require_sample_factory()
    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args
    from sample_factory.envs.env_utils import register_env
    from sample_factory.train import run_rl

    if max_wall_seconds:
        logger.warning("sample-factory runs to its step budget: max_wall_seconds is ignored")
    env_name = sf_env_name(entry.task_id)
    register_env(env_name, make_sf_env)
    params = {**recipe.hyperparams}
    n_envs = int(params.get("num_workers", 1)) * int(params.get("num_envs_per_worker", 1))
    argv = [f"--env={env_name}", f"--experiment={EXPERIMENT}", f"--train_dir={out_dir}", "--algo=APPO",
            "--serial_mode=True", "--async_rl=False", "--device=cpu", f"--seed={seed}",
            f"--train_for_env_steps={recipe.steps}", "--restart_behavior=overwrite", "--with_wandb=False",
            "--decorrelate_envs_on_one_worker=False", "--batched_sampling=False", "--save_every_sec=600",
            "--experiment_summaries_interval=30", "--policy_workers_per_policy=1", "--use_env_info_cache=True"]
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv.append(f"--{key}={value}")
    parser, _ = parse_sf_args(argv=argv)
    cfg = parse_full_cfg(parser, argv)
    recorder = EpisodeRecorder(entry, n_envs, "training", run_id, seed, on_episode=on_episode)
    _ACTIVE.update(task=entry.task_id, recorder=recorder, seed=seed, clip_reward=recipe.clip_reward,
                   envs_per_worker=int(params.get("num_envs_per_worker", 1)))
    _cache_env_info(cfg)
    start = time.perf_counter()
    try:
        status = run_rl(cfg)
    finally:
        _ACTIVE.clear()
    if status != 0:
        raise RuntimeError(f"sample-factory training of {entry.task_id} exited with status {status}")
    facts = {"steps_done": recorder.policy_steps, "stopped_early": False,
             "sf_wall_seconds": round(time.perf_counter() - start, 1)}
    return out_dir / EXPERIMENT, facts, SampleFactoryExpert.load(entry, out_dir / EXPERIMENT)


def make_sf_env(full_env_name: str, cfg: Any = None, env_config: Any = None, render_mode: str | None = None):
    """sample-factory's env factory for ``gatoforge:<task id>`` (module level: it is pickled)."""
    from experts.sb3 import ClipReward

    task_id = full_env_name[len(ENV_PREFIX):].replace("__", "/", 1)
    entry = get_task(task_id)
    slot = 0
    if env_config is not None:
        slot = int(env_config.worker_index) * _ACTIVE.get("envs_per_worker", 1) + int(env_config.vector_index)
    seed = int(getattr(cfg, "seed", None) or 0) + slot
    env = entry.make_single_env(seed)
    recorder = _ACTIVE.get("recorder") if _ACTIVE.get("task") == task_id and env_config is not None else None
    if recorder is not None:
        env = RecordingEnv(env, recorder, slot)
    if entry.domain == "babyai":
        from experts.sb3 import GridOnly

        env = GridOnly(env)
    if _ACTIVE.get("clip_reward"):
        env = ClipReward(env)
    if len(env.observation_space.shape or ()) == 3 and env.observation_space.shape[-1] == 3:
        env = _ChannelsFirst(env)
    return env


def sf_env_name(task_id: str) -> str:
    """``atari/pong`` -> ``gatoforge__atari__pong`` (sample-factory puts env names in file names)."""
    return ENV_PREFIX + task_id.replace("/", "__", 1)


def _cache_env_info(cfg: Any) -> None:
    """Describe the env in this process and leave it in sample-factory's env-info cache.

    Otherwise sample-factory spawns a process to build one env just to read its spaces,
    which costs seconds and hangs when the parent's __main__ cannot be re-imported.
    """
    import pickle

    from sample_factory.algo.utils.env_info import env_info_cache_filename, extract_env_info
    from sample_factory.algo.utils.make_env import make_env_func_batched

    env = make_env_func_batched(cfg, env_config=None)
    info = extract_env_info(env, cfg)
    env.close()
    path = Path(env_info_cache_filename(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(info))
    tmp.replace(path)


class RecordingEnv(gym.Wrapper):
    """Feeds one env's steps (raw obs, action, reward, info) to a shared EpisodeRecorder."""

    def __init__(self, env: gym.Env, recorder: EpisodeRecorder, slot: int) -> None:
        super().__init__(env)
        self.recorder, self.slot = recorder, slot
        self._obs = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.recorder.add_env_step(self.slot, self._obs, action, reward, terminated, truncated, info)
        self._obs = obs
        return obs, reward, terminated, truncated, info


class _ChannelsFirst(gym.ObservationWrapper):
    """HWC uint8 images -> CHW, what sample-factory's conv encoders expect."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 255, (c, h, w), np.uint8)

    def observation(self, observation):
        return np.ascontiguousarray(np.transpose(observation, (2, 0, 1)))


def _network_spaces(entry: TaskEntry, env: gym.vector.VectorEnv | None) -> tuple[gym.spaces.Box, gym.Space]:
    obs_space, act_space = policy_spaces(entry, env)  # BabyAI: the network sees the 148 ints
    if isinstance(obs_space, gym.spaces.Dict):
        raise ExpertError(f"{entry.task_id}: sample-factory experts need a Box observation, got {obs_space}")
    if len(obs_space.shape) == 3 and obs_space.shape[-1] == 3:
        h, w, c = obs_space.shape
        obs_space = gym.spaces.Box(0, 255, (c, h, w), np.uint8)
    return obs_space, act_space


def _network_obs(obs_batch: Any, channels_first: bool) -> np.ndarray:
    if isinstance(obs_batch, dict):
        obs_batch = obs_batch["discrete"]
    obs = np.asarray(obs_batch)
    if channels_first and obs.ndim == 4 and obs.shape[-1] == 3:
        obs = np.transpose(obs, (0, 3, 1, 2))
    return np.ascontiguousarray(obs)


def _load_cfg(path: Path):
    """config.json over sample-factory's defaults (older configs may lack newer keys)."""
    import json

    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args
    from sample_factory.utils.attr_dict import AttrDict

    config = path / "config.json"
    try:
        saved = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ExpertError(f"{config}: cannot read sample-factory config ({error})") from None
    argv = [f"--env={saved.get('env', 'unknown')}", f"--experiment={path.name}", f"--train_dir={path.parent}"]
    parser, _ = parse_sf_args(argv=argv, evaluation=True)
    cfg = AttrDict(vars(parse_full_cfg(parser, argv)))
    cfg.update(saved)
    cfg.device = "cpu"
    return cfg


def _require_sample_factory() -> None:
    try:
        import sample_factory  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "sample-factory experts need sample-factory 2.1.1: pip install --no-deps sample-factory==2.1.1 "
            "signal-slot-mp faster-fifo colorlog tensorboardX psutil threadpoolctl"
        ) from error
