"""Work units: the spec split into pieces Ray schedules, retries and resumes one at a time.

    from collectors.units import plan_units
    units = plan_units(spec)        # training runs first, then rollout / scripted / random chunks

A unit's id, seed and episode run ids depend only on the spec, never on timing, so a resumed
collection reproduces the same episodes (ids and contents) as an uninterrupted one. Each unit
writes one step file ``data/<task>/<name>.parquet`` and commits with its index fragment
``_fragments/<task>/<name>.parquet``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from collectors.spec import DatasetSpec, TaskPlan

FRAGMENTS_DIR = "_fragments"
CHECKPOINTS_DIR = "experts"


@dataclass(frozen=True)
class WorkUnit:
    """One training run, or one chunk of rollout episodes."""

    task: str
    kind: str
    """training | rollout | scripted | random (the shards source of the episodes it writes)"""
    name: str
    """file-safe name, unique within the task: train-000, rollout-0003, random-0000"""
    seed: int
    episodes: int
    """episodes to collect (0 for a training run: it records as many as training plays)"""
    first_index: int
    """run_index of the unit's first episode, so indices are unique within its run_id"""
    run_id: str
    expert: str
    """what experts.base.load_expert gets: random, scripted, a path, hf://..., or `trained:<unit>`"""
    depends_on: str | None = None
    """unit id of the training run whose checkpoint this unit rolls out"""
    budget: str = "smoke"
    record: bool = True
    train_steps: int | None = None
    trainer: str | None = None
    num_envs: int = 8
    max_episode_steps: int | None = None
    cut_after_success: int | None = None
    action_noise: float | None = None
    """noise on the executed actions (a std for continuous ones, a probability of a random one for
    discrete ones); the recorded actions stay the expert's"""
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def unit_id(self) -> str:
        return f"{self.task}/{self.name}"

    @property
    def fragment(self) -> str:
        return f"{FRAGMENTS_DIR}/{self.task}/{self.name}.parquet"

    @property
    def checkpoint_dir(self) -> str:
        return f"{CHECKPOINTS_DIR}/{self.task}/{self.name}"


def plan_units(spec: DatasetSpec) -> list[WorkUnit]:
    """All units of a spec in a stable order (training runs first: rollouts wait on them)."""
    training: list[WorkUnit] = []
    rest: list[WorkUnit] = []
    for plan in spec.tasks:
        runs = _training_units(plan) if plan.expert.kind == "train" else []
        training += runs
        source = "scripted" if plan.expert.kind == "scripted" else "rollout"
        expert = f"trained:{runs[-1].unit_id}" if runs else plan.expert.load_spec()
        depends_on = runs[-1].unit_id if runs else None
        if plan.rollout_episodes:
            rest += _chunks(plan, source, plan.rollout_episodes, expert, depends_on)
        if plan.noisy_episodes:  # after the clean ones: the windowed expert return sees those first
            rest += _chunks(plan, source, plan.noisy_episodes, expert, depends_on, label="noisy",
                            action_noise=plan.action_noise)
        if plan.random_episodes:
            rest += _chunks(plan, "random", plan.random_episodes, "random", None)
    return training + rest


def derive_seed(base: int, *parts: object) -> int:
    """A 31-bit seed from the spec seed and a unit's identity (stable across runs and machines)."""
    text = "\0".join(str(p) for p in (base, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") & 0x7FFF_FFFF


def _training_units(plan: TaskPlan) -> list[WorkUnit]:
    t = plan.training
    return [
        WorkUnit(task=plan.task, kind="training", name=f"train-{r:03d}", seed=derive_seed(plan.seed, plan.task, "train", r),
                 episodes=0, first_index=0, run_id=f"train-{r:03d}", expert="train", budget=t.budget,
                 record=t.record, train_steps=t.steps, trainer=t.trainer, num_envs=plan.num_envs, max_episode_steps=plan.max_episode_steps,
                 num_cpus=t.num_cpus, num_gpus=t.num_gpus)
        for r in range(t.runs)
    ]


def _chunks(plan: TaskPlan, source: str, total: int, expert: str, depends_on: str | None, label: str | None = None,
            action_noise: float | None = None) -> list[WorkUnit]:
    """Units of ``total`` episodes; ``label`` names them and their run (default: the source)."""
    units = []
    size = plan.episodes_per_unit
    label = label or source
    for c, start in enumerate(range(0, total, size)):
        units.append(WorkUnit(
            task=plan.task, kind=source, name=f"{label}-{c:04d}", seed=derive_seed(plan.seed, plan.task, label, c),
            episodes=min(size, total - start), first_index=start, run_id=label, expert=expert, action_noise=action_noise,
            depends_on=depends_on, num_envs=min(plan.num_envs, size), max_episode_steps=plan.max_episode_steps,
            cut_after_success=plan.cut_after_success if source != "random" else None,
            num_cpus=plan.num_cpus,
        ))
    return units
