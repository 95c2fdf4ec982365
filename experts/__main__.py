"""The experts command line.

    python -m experts list [--domain babyai] [--json]
    python -m experts evaluate babyai/GoToLocal --expert scripted --episodes 100 [--json]
    python -m experts evaluate atari/pong --expert runs/pong/model.zip --episodes 10 --num-envs 4
    python -m experts evaluate atari/pong --expert hf://org/repo --episodes 10
    python -m experts train dmc/cartpole-swingup --budget smoke --out runs/cartpole
    python -m experts train procgen/coinrun --budget smoke --trainer sample-factory --out runs/coinrun_sf
    python -m experts train dmc/walker-walk --budget full --out runs/walker2 --resume runs/walker/model.zip
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import tyro

from shards.console import print_table


@dataclass
class ListCommand:
    """Print every task id the registry knows (with its env id)."""

    domain: Optional[str] = None
    """only this domain (atari, dmc, metaworld, babyai, procgen)"""
    json: bool = False
    """print the table as JSON"""


@dataclass
class EvaluateCommand:
    """Run an expert for N episodes: mean and std return, success rate, steps/s."""

    task: tyro.conf.Positional[str]
    """task id, e.g. babyai/GoToLocal"""
    expert: str = "random"
    """random, scripted, a checkpoint path (.zip or sample-factory dir) or hf://org/repo"""
    episodes: int = 10
    """episodes to run (split evenly over the envs)"""
    num_envs: int = 2
    """batched envs"""
    seed: int = 0
    """seed of the vector env's reset (env i gets seed + i)"""
    sampled: bool = False
    """sample actions instead of taking the most likely one"""
    json: bool = False
    """print the result as JSON"""


@dataclass
class TrainCommand:
    """Train an expert with its zoo recipe, recording every training episode as shards."""

    task: tyro.conf.Positional[str]
    """task id, e.g. dmc/cartpole-swingup"""
    out: Path
    """output dir: checkpoint + provenance JSON, episodes/ (a dataset root), curve.csv"""
    budget: Literal["smoke", "full"] = "smoke"
    """smoke (a few thousand steps) or full (meant to reach near-SoTA)"""
    trainer: Optional[Literal["sb3", "sample-factory"]] = None
    """override the zoo's trainer for this task"""
    seed: int = 0
    """training seed"""
    max_minutes: Optional[float] = None
    """stop SB3 training after this wall time (recorded in the provenance)"""
    resume: Optional[Path] = None
    """continue this saved SB3 run (model.zip, replay_buffer.pkl beside it if any) into --out"""


Command = Union[
    Annotated[ListCommand, tyro.conf.subcommand("list")],
    Annotated[EvaluateCommand, tyro.conf.subcommand("evaluate")],
    Annotated[TrainCommand, tyro.conf.subcommand("train")],
]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("MUJOCO_GL", "egl")
    command = tyro.cli(Command, args=argv)
    try:
        return run(command)
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(command) -> int:
    from experts.registry import DOMAINS, get_task, list_tasks

    if isinstance(command, ListCommand):
        rows = [{"task": t, "domain": t.split("/", 1)[0], "env_id": get_task(t).env_id}
                for t in list_tasks(command.domain)]
        counts = {d: sum(r["domain"] == d for r in rows) for d in DOMAINS if command.domain in (None, d)}
        print_table(rows, title="GatoForge tasks", as_json=command.json, extra={"counts": counts})
        return 0
    if isinstance(command, EvaluateCommand):
        from experts.rollout import rollout

        result = rollout(command.task, command.expert, num_envs=command.num_envs, episodes=command.episodes,
                         seed=command.seed, deterministic=not command.sampled, progress=not command.json)
        row = {**result.summary(), "expert": command.expert}
        reference = get_task(command.task).task_spec()
        print_table([row], title=f"{command.task}: {command.expert}", as_json=command.json,
                    extra={"jat_expert_return": reference.expert_return, "jat_random_return": reference.random_return})
        return 0
    from experts.train import train

    checkpoint = train(command.task, budget=command.budget, out_dir=command.out, seed=command.seed,
                       trainer=command.trainer, progress=True, resume_from=command.resume,
                       max_wall_seconds=command.max_minutes * 60 if command.max_minutes else None)
    print(checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
