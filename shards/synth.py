"""A synthetic dataset with every modality, for tests, benchmarks and trying the trainer.

Tasks cycle through four kinds, each its own domain so mixtures over domains have something
to mix: ``synth-state`` (continuous obs and actions, rewards can be negative),
``synth-grid`` (discrete obs + mission text, one discrete action), ``synth-pixels`` (RGB
image, one discrete action) and ``synth-arm`` (continuous obs, continuous actions, success).
Training runs improve with run_index, as a learning agent's episodes do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.episode import Episode
from shards.format import (
    ACT_CONTINUOUS,
    ACT_DISCRETE,
    OBS_CONTINUOUS,
    OBS_DISCRETE,
    OBS_IMAGE,
    OBS_TEXT,
)
from shards.manifest import Manifest, ModalitySpec, TaskSpec
from shards.storage import Root
from shards.writer import write_dataset

KINDS = ("synth-state", "synth-grid", "synth-pixels", "synth-arm")
IMAGE_SHAPE = (32, 32, 3)
MISSIONS = ("go to the red ball", "pick up the blue key", "open the yellow door", "put the box next to the ball")


@dataclass
class SynthConfig:
    """What ``python -m shards synth`` writes."""

    tasks: int = 4
    """number of tasks (cycling through the four kinds)"""
    episodes: int = 40
    """episodes per task"""
    seed: int = 0
    runs: int = 2
    """training runs per task; the episodes are split between them and a few rollouts/randoms"""
    min_length: int = 5
    max_length: int = 60


def synth_dataset(root: str | Root, config: SynthConfig = SynthConfig()) -> Manifest:
    """Write a synthetic dataset to ``root`` and return its manifest."""
    if config.tasks < 1 or config.episodes < 1:
        raise ValueError(f"synth needs --tasks >= 1 and --episodes >= 1, got {config.tasks} and {config.episodes}")
    if not 1 <= config.min_length <= config.max_length:
        raise ValueError(f"synth needs 1 <= --min-length <= --max-length, got {config.min_length}, {config.max_length}")
    rng = np.random.default_rng(config.seed)
    tasks = {f"{KINDS[i % len(KINDS)]}/task-{i}": _task_spec(KINDS[i % len(KINDS)]) for i in range(config.tasks)}
    manifest = Manifest(name="synthetic", tasks=tasks, extra={"synth": vars(config)})
    for name, spec in tasks.items():
        spec.random_return = -5.0 if spec.domain == "synth-state" else 0.0

    def episodes():
        for task, spec in tasks.items():
            yield from _task_episodes(task, spec, config, rng)

    write_dataset(root, episodes(), manifest)
    return manifest


def _task_spec(kind: str) -> TaskSpec:
    unit = dict(low=-1.0, high=1.0)
    if kind == "synth-state":
        obs = {OBS_CONTINUOUS: ModalitySpec([6], "float32")}
        act = {ACT_CONTINUOUS: ModalitySpec([2], "float32", **unit)}
    elif kind == "synth-grid":
        obs = {OBS_DISCRETE: ModalitySpec([12], "int32", n=11), OBS_TEXT: ModalitySpec([], "string")}
        act = {ACT_DISCRETE: ModalitySpec([1], "int32", n=7)}
    elif kind == "synth-pixels":
        obs = {OBS_IMAGE: ModalitySpec(list(IMAGE_SHAPE), "uint8", low=0, high=255)}
        act = {ACT_DISCRETE: ModalitySpec([1], "int32", n=15)}
    else:
        obs = {OBS_CONTINUOUS: ModalitySpec([9], "float32")}
        act = {ACT_CONTINUOUS: ModalitySpec([4], "float32", **unit)}
    return TaskSpec(domain=kind, env_id=f"{kind}-v0", env_version="0", observation=obs, action=act,
                    expert={"kind": "synthetic"})


def _task_episodes(task: str, spec: TaskSpec, config: SynthConfig, rng: np.random.Generator):
    n_random = max(1, config.episodes // 10)
    n_rollout = max(0, min(config.episodes - n_random, config.episodes // 5))
    n_training = config.episodes - n_random - n_rollout
    plan = [("random", "random-0", i) for i in range(n_random)]
    plan += [("rollout", "rollout-0", i) for i in range(n_rollout)]
    runs = max(1, config.runs)
    plan += [("training", f"train-{i % runs}", i // runs) for i in range(n_training)]
    for source, run_id, run_index in plan:
        progress = run_index / max(1, n_training // runs) if source == "training" else (1.0 if source == "rollout" else 0.0)
        yield _episode(task, spec, source, run_id, run_index, progress, config, rng)


def _episode(task, spec, source, run_id, run_index, progress, config, rng) -> Episode:
    n = int(rng.integers(config.min_length, config.max_length + 1))
    steps: dict = {}
    for column, mod in {**spec.observation, **spec.action}.items():
        if column == OBS_TEXT:
            steps[column] = [MISSIONS[run_index % len(MISSIONS)]] * n
        elif column == OBS_IMAGE:
            steps[column] = rng.integers(0, 256, size=(n, *mod.shape), dtype=np.uint8)
        elif mod.n is not None:
            steps[column] = rng.integers(0, mod.n, size=(n, *mod.shape), dtype=np.int32)
        elif column == ACT_CONTINUOUS:
            steps[column] = rng.uniform(-1, 1, size=(n, *mod.shape)).astype(np.float32)
        else:
            steps[column] = rng.normal(0, 3, size=(n, *mod.shape)).astype(np.float32)
    skill = float(np.clip(progress + rng.normal(0, 0.15), 0, 1.2))
    offset = -5.0 if spec.domain == "synth-state" else 0.0  # a domain with negative returns
    total = offset + 10.0 * skill
    rewards = np.full(n, total / n, dtype=np.float32)
    terminated = np.zeros(n, dtype=bool)
    truncated = np.zeros(n, dtype=bool)
    terminated[-1] = skill > 0.5
    truncated[-1] = not terminated[-1]
    success = bool(skill > 0.6) if spec.domain in ("synth-arm", "synth-grid") else None
    return Episode(task=task, steps=steps, rewards=rewards, terminated=terminated, truncated=truncated,
                   run_id=run_id, run_index=run_index, source=source,
                   policy_steps=run_index * 100 if source == "training" else -1,
                   seed=int(rng.integers(0, 2**31 - 1)), success=success)
