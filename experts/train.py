"""Train an expert for one task per its zoo recipe, recording every training episode.

    python -m experts train dmc/cartpole-swingup --budget smoke --out runs/cartpole
    python -m experts train atari/pong --budget smoke --trainer sample-factory --out runs/pong_sf

    from experts.train import train
    checkpoint = train("babyai/GoToRedBall", budget="smoke", out_dir="runs/redball", seed=0)

Every episode the learning agent finishes goes, in completion order, to ``on_episode`` (if
given) and to a GatoForge dataset at ``OUT/episodes`` (source = training; a valid dataset
root with manifest and index), and its (agent env steps, return) to ``OUT/curve.csv``. The
final policy is saved as ``OUT/model.zip`` (SB3) or ``OUT/sample_factory/`` (a sample-factory
experiment dir), with its provenance (algorithm, hyperparameters, budget, seed, versions)
in a JSON beside it (``model.json`` / ``sample_factory.json``).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experts.registry import get_task
from experts.zoo import recipe as zoo_recipe
from shards import Episode, Manifest, StepFileWriter, index_table, write_index, write_manifest
from shards.manifest import software_versions

logger = logging.getLogger(__name__)


def train(task_id: str, budget: str = "smoke", out_dir: str | Path | None = None, seed: int = 0,
          on_episode: Callable[[Episode], Any] | None = None, trainer: str | None = None,
          steps: int | None = None, max_wall_seconds: float | None = None, write_episodes: bool = True,
          progress: bool = False, eval_episodes: int = 4, eval_seed: int = 1000,
          resume_from: str | Path | None = None) -> Path:
    """Train ``task_id`` with its zoo recipe; returns the checkpoint path (.zip or SF dir).

    ``trainer`` picks ``sb3`` or ``sample-factory`` over the zoo's default; ``steps``
    overrides the budget's step count (tests); ``max_wall_seconds`` stops early (recorded).
    The trained policy is evaluated for ``eval_episodes`` on 2 envs seeded ``eval_seed``
    (deterministic actions) and the returns go in the provenance, so a reloaded checkpoint
    can be checked against them. ``resume_from`` (SB3 only) continues a saved run into a new
    ``out_dir``, its training episodes numbered after the earlier run's.
    """
    entry = get_task(task_id)
    _limit_threads()
    recipe = zoo_recipe(task_id, trainer=trainer, budget=budget)
    if steps is not None:
        if steps <= 0:
            raise ValueError(f"steps={steps}; expected a positive number of env steps")
        recipe.steps = steps
    if out_dir is None:
        raise ValueError("out_dir is required: where the checkpoint and training episodes go")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{task_id.replace('/', '_')}__{recipe.trainer}-{recipe.algo}__{budget}__s{seed}"
    sink = TrainingSink(entry, out_dir, run_id, recipe.provenance(), on_episode, write_episodes)
    start = time.perf_counter()
    logger.info("training %s with %s %s for %d steps (%s budget) -> %s", task_id, recipe.trainer, recipe.algo,
                recipe.steps, budget, out_dir)
    try:
        if recipe.trainer == "sb3":
            from experts.sb3 import train_sb3

            checkpoint, facts, policy = train_sb3(entry, recipe, out_dir, seed, sink, run_id, max_wall_seconds,
                                                  progress, Path(resume_from) if resume_from else None)
            provenance_path = checkpoint.with_suffix(".json")
        else:
            if resume_from:
                raise ValueError("resume_from is supported for SB3 runs only")
            from experts.samplefactory import train_sample_factory

            checkpoint, facts, policy = train_sample_factory(entry, recipe, out_dir, seed, sink, run_id,
                                                             max_wall_seconds)
            provenance_path = checkpoint.with_name(checkpoint.name + ".json")
    finally:
        sink.close()
    if eval_episodes > 0:
        from experts.rollout import rollout

        result = rollout(task_id, policy, num_envs=2, episodes=eval_episodes, seed=eval_seed)
        facts["final_eval"] = {"seed": eval_seed, "num_envs": 2, "deterministic": True, "returns": result.returns,
                               "lengths": result.lengths, "mean_return": result.mean_return,
                               "success_rate": result.success_rate}
    provenance = {**recipe.provenance(), **facts, "seed": seed, "run_id": run_id,
                  "wall_seconds": round(time.perf_counter() - start, 1), "training_episodes": sink.count,
                  "next_run_index": max(sink.next_run_index, facts.get("start_run_index", 0)),
                  "episodes_root": str(sink.root) if write_episodes else None,
                  "versions": software_versions(), "machine": platform.machine(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json(provenance_path, provenance)
    if checkpoint.is_dir():
        _write_json(checkpoint / "provenance.json", provenance)
    logger.info("saved %s (%d training episodes, %.0f s)", checkpoint, sink.count, provenance["wall_seconds"])
    return checkpoint


class TrainingSink:
    """Receives training episodes: forwards them, writes them as shards, appends the curve."""

    def __init__(self, entry, out_dir: Path, run_id: str, expert: dict[str, Any],
                 on_episode: Callable[[Episode], Any] | None, write_episodes: bool) -> None:
        self.entry, self.on_episode, self.count, self.next_run_index = entry, on_episode, 0, 0
        self.root = out_dir / "episodes"
        self.writer = None
        if write_episodes:
            spec = entry.task_spec(expert={"kind": "training", **expert})
            write_manifest(self.root, Manifest(name=f"{run_id} training episodes", tasks={entry.task_id: spec}))
            self.writer = StepFileWriter(self.root, entry.task_id, f"training-{run_id}", spec.modalities)
        self._curve = (out_dir / "curve.csv").open("w")
        self._curve.write("run_index,policy_steps,end_policy_steps,return,length,success\n")

    def __call__(self, episode: Episode) -> None:
        self.count += 1
        self.next_run_index = episode.run_index + 1
        if self.writer is not None:
            self.writer.add(episode)
        self._curve.write(f"{episode.run_index},{episode.policy_steps},{episode.policy_steps + episode.length},"
                          f"{episode.episode_return:.6g},{episode.length},"
                          f"{'' if episode.success is None else int(episode.success)}\n")
        self._curve.flush()
        if self.on_episode is not None:
            self.on_episode(episode)

    def close(self) -> None:
        self._curve.close()
        if self.writer is not None:
            rows = self.writer.close()
            write_index(self.root, index_table(rows))
            self.writer = None


def _limit_threads() -> None:
    """One torch thread: on a shared CPU extra threads only add contention (SB3 nets are small)."""
    import torch

    torch.set_num_threads(1)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
