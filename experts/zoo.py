"""Per-task training recipes kept in YAML (experts/zoo/<domain>.yaml), the way rl-zoo3 does it.

    from experts.zoo import recipe
    r = recipe("dmc/cartpole-swingup", trainer="sb3", budget="smoke")
    r.algo, r.steps, r.hyperparams

Each file has a ``default`` block (per trainer: algo, policy, n_envs, budgets {smoke, full},
hyperparams, smoke_hyperparams) and ``tasks`` overriding it per task id. An override that
changes ``algo`` replaces the hyperparameters instead of merging into the default ones.
Learning rates and clip ranges written ``lin_<value>`` decay linearly to 0 (rl-zoo3 notation).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
TRAINERS = ("sb3", "sample-factory")
BUDGETS = ("smoke", "full")
SB3_ALGOS = ("ppo", "sac", "dqn", "qrdqn", "tqc", "a2c", "td3")
SF_ALGOS = ("appo",)


@dataclass
class Recipe:
    """Everything needed to train one task with one trainer at one budget."""

    task_id: str
    trainer: str
    algo: str
    budget: str
    steps: int
    n_envs: int
    policy: str = ""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    clip_reward: bool = False
    source: str = ""

    def provenance(self) -> dict[str, Any]:
        return {"task": self.task_id, "trainer": self.trainer, "algorithm": self.algo, "budget": self.budget,
                "budget_steps": self.steps, "n_envs": self.n_envs, "policy": self.policy,
                "hyperparams": self.hyperparams, "clip_reward": self.clip_reward, "zoo_file": self.source}


def recipe(task_id: str, trainer: str | None = None, budget: str = "smoke") -> Recipe:
    """The recipe for ``task_id``; ``trainer`` defaults to the zoo's choice for the task."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}; expected one of {BUDGETS}")
    domain = task_id.split("/", 1)[0]
    path = ZOO_DIR / f"{domain}.yaml"
    zoo = _load(path)
    default = zoo.get("default", {})
    override = (zoo.get("tasks") or {}).get(task_id, {})
    trainer = trainer or override.get("trainer") or default.get("trainer", "sb3")
    if trainer not in TRAINERS:
        raise ValueError(f"trainer={trainer!r}; expected one of {TRAINERS}")
    base, extra = default.get(trainer), override.get(trainer, {})
    if base is None:
        raise ValueError(f"{path}: default has no '{trainer}' block, so {task_id} cannot train with {trainer}")
    block = _merge(base, extra)
    where = f"{path}: {task_id} ({trainer})"
    algo = str(block.get("algo", "")).lower()
    allowed = SB3_ALGOS if trainer == "sb3" else SF_ALGOS
    if algo not in allowed:
        raise ValueError(f"{where}: algo={algo!r}; expected one of {allowed}")
    budgets = block.get("budgets") or {}
    if budget not in budgets or not isinstance(budgets[budget], int) or budgets[budget] <= 0:
        raise ValueError(f"{where}: budgets.{budget} must be a positive int of env steps, got {budgets.get(budget)!r}")
    hyperparams = dict(block.get("hyperparams") or {})
    n_envs = int(block.get("n_envs", 1))
    if budget == "smoke":
        hyperparams.update(block.get("smoke_hyperparams") or {})
        n_envs = int(block.get("smoke_n_envs", n_envs))
    return Recipe(task_id=task_id, trainer=trainer, algo=algo, budget=budget, steps=int(budgets[budget]),
                  n_envs=n_envs, policy=str(block.get("policy", "")), hyperparams=hyperparams,
                  clip_reward=bool(block.get("clip_reward", False)), source=str(path))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    if extra.get("algo") and str(extra["algo"]).lower() != str(base.get("algo", "")).lower():
        merged.pop("hyperparams", None)
        merged.pop("smoke_hyperparams", None)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ValueError(f"no zoo file {path} for this domain")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'default' and 'tasks'")
    return data
