"""One interface for every expert, and ``load_expert`` to get one from a spec string.

    from experts.base import load_expert
    from experts.registry import get_task
    env = get_task("babyai/GoToLocal").make_env(num_envs=8, seed=0)
    expert = load_expert("babyai/GoToLocal", "scripted", env=env)   # the BabyAI bot
    expert = load_expert("atari/pong", "runs/pong/model.zip")        # an SB3 checkpoint
    expert = load_expert("atari/pong", "runs/pong_sf")               # a sample-factory dir
    expert = load_expert("atari/pong", "hf://org/repo")              # from the model hub

Spec strings: ``random``, ``scripted``, a local path (an SB3 ``.zip``, a directory holding one,
or a sample-factory experiment dir with ``config.json`` + ``checkpoint_p0/*.pth``), or
``hf://org/repo[@revision]`` (downloaded with huggingface_hub, honouring HF_HUB_OFFLINE).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from experts.registry import TaskEntry, get_task

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf://"


@runtime_checkable
class Expert(Protocol):
    """A policy over a batch of N environments.

    ``act`` is called once per vector step with the whole batch (one forward pass for neural
    experts, never one per env) and returns N actions. ``reset`` tells the expert that the
    listed envs started a new episode (recurrent state, scripted plans). An expert that plans
    may also define ``executed(actions)``: rollouts with action noise call it with the actions
    the envs really took, so the plan follows them (the BabyAI bot's advising mode).
    """

    kind: str

    def act(self, obs_batch: Any, deterministic: bool = True) -> np.ndarray: ...

    def reset(self, env_indices: list[int] | np.ndarray) -> None: ...


class ExpertError(ValueError):
    """An expert spec that cannot be loaded for this task (wrong spaces, unknown format)."""


class RandomExpert:
    """Uniform random actions: the normalization baseline."""

    kind = "random"

    def __init__(self, action_space: gym.Space, seed: int = 0) -> None:
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)

    def act(self, obs_batch: Any, deterministic: bool = True) -> np.ndarray:
        n = batch_size(obs_batch)
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return space.start + self.rng.integers(0, space.n, size=n)
        if isinstance(space, gym.spaces.Box):
            return self.rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)
        raise ExpertError(f"random expert: unsupported action space {space}")

    def reset(self, env_indices) -> None:
        pass


def load_expert(task_id: str, spec: str, env: gym.vector.VectorEnv | None = None, seed: int = 0) -> Expert:
    """Build the expert ``spec`` names for ``task_id`` (see the module docstring for specs).

    ``env`` is the batched env the expert will act in: the BabyAI bot needs it (it plans on
    the env's state); checkpoints use it to check their spaces against the task's.
    """
    entry = get_task(task_id)
    if spec == "random":
        return RandomExpert(_single_action_space(entry, env), seed=seed)
    if spec == "scripted":
        from experts.scripted import scripted_expert

        return scripted_expert(entry, env)
    if spec.startswith(HUB_PREFIX):
        return load_checkpoint(entry, download_from_hub(spec), env)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ExpertError(
            f"expert spec {spec!r}: not 'random', 'scripted', an hf://org/repo id, or an existing path"
        )
    return load_checkpoint(entry, path, env)


def load_checkpoint(entry: TaskEntry, path: Path, env: gym.vector.VectorEnv | None = None) -> Expert:
    """An SB3 .zip (or a dir holding exactly one) or a sample-factory experiment directory."""
    if path.is_dir() and _is_sample_factory_dir(path):
        from experts.samplefactory import SampleFactoryExpert

        return SampleFactoryExpert.load(entry, path, env)
    if path.is_dir():
        zips = sorted(path.glob("*.zip"))
        if len(zips) != 1:
            raise ExpertError(
                f"{path}: expected one SB3 .zip or a sample-factory dir (config.json + checkpoint_p0/*.pth), "
                f"found {[z.name for z in zips] or 'neither'}"
            )
        path = zips[0]
    if path.suffix == ".zip":
        from experts.sb3 import SB3Expert

        return SB3Expert.load(entry, path, env)
    raise ExpertError(f"{path}: unknown checkpoint format; expected an SB3 .zip or a sample-factory dir")


def download_from_hub(spec: str) -> Path:
    """``hf://org/repo[@revision]`` -> local snapshot dir (uses the cache when HF_HUB_OFFLINE=1)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise ImportError("loading hf:// experts needs huggingface_hub: pip install huggingface_hub") from error
    repo, _, revision = spec[len(HUB_PREFIX):].partition("@")
    if repo.count("/") != 1:
        raise ExpertError(f"expert spec {spec!r}: expected hf://org/repo[@revision]")
    logger.info("fetching %s from the model hub", repo)
    return Path(snapshot_download(repo_id=repo, revision=revision or None))


def batch_size(obs_batch: Any) -> int:
    """N for an observation batch (an array, or a dict of arrays/tuples as BabyAI gives)."""
    if isinstance(obs_batch, dict):
        return len(next(iter(obs_batch.values())))
    return len(obs_batch)


def check_spaces(where: str, expected: gym.Space, found: gym.Space, what: str) -> None:
    """Raise ExpertError saying which shapes differ between a checkpoint and the task."""
    if isinstance(expected, gym.spaces.Discrete) and isinstance(found, gym.spaces.Discrete):
        if expected.n != found.n:
            raise ExpertError(f"{where}: {what} space mismatch: task has Discrete({expected.n}), "
                              f"checkpoint has Discrete({found.n})")
        return
    if type(expected) is not type(found):
        raise ExpertError(f"{where}: {what} space mismatch: task has {expected}, checkpoint has {found}")
    shape_e, shape_f = tuple(expected.shape or ()), tuple(found.shape or ())
    if shape_e != shape_f and not _same_image(shape_e, shape_f):
        raise ExpertError(f"{where}: {what} shape mismatch: task has {shape_e}, checkpoint expects {shape_f}")


def _same_image(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """HWC vs CHW of the same image (SB3 transposes channel-last images itself)."""
    return len(a) == 3 and len(b) == 3 and ((a[2], a[0], a[1]) == b or (b[2], b[0], b[1]) == a)


def _single_action_space(entry: TaskEntry, env: gym.vector.VectorEnv | None) -> gym.Space:
    if env is not None:
        return env.single_action_space
    spec = entry.task_spec().action
    if "act_discrete" in spec:
        return gym.spaces.Discrete(int(spec["act_discrete"].n))
    mod = spec["act_continuous"]
    return gym.spaces.Box(float(mod.low), float(mod.high), tuple(mod.shape), np.float32)


def _is_sample_factory_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("checkpoint_p*/*.pth"))


def policy_spaces(entry: TaskEntry, env: gym.vector.VectorEnv | None = None) -> tuple[gym.Space, gym.Space]:
    """The observation and action spaces a learned policy sees for ``entry`` (BabyAI: the 148
    discrete ints, not the mission text), read from ``env`` or from a throwaway single env."""
    if env is not None:
        obs_space, act_space = env.single_observation_space, env.single_action_space
    else:
        single = entry.make_single_env(0)
        obs_space, act_space = single.observation_space, single.action_space
        single.close()
    if isinstance(obs_space, gym.spaces.Dict) and "discrete" in obs_space.spaces:
        obs_space = obs_space["discrete"]
    return obs_space, act_space
