"""Dataset specs: a YAML file naming the tasks, their experts and how many episodes of each.

    python -m collectors --spec datasets/quickstart.yaml --dry-run     # validate + show the plan

A spec (see docs/collectors.md for every field)::

    name: quickstart
    root: ../runs/quickstart          # local path (relative to this file) or s3:// / gs:// URI
    seed: 0
    defaults: {num_envs: 8, random_episodes: 10}
    domains:                          # per-domain defaults, over the built-in ones
      metaworld: {num_envs: 2}
    tasks:
      - id: babyai/*                  # a glob over experts.registry.list_tasks()
        expert: {kind: scripted}
        rollout_episodes: 400
      - id: dmc/cartpole-balance
        expert: {kind: train}
        training: {runs: 1, budget: smoke, record: true}
        rollout_episodes: 20

Settings merge in this order: built-in domain defaults < ``defaults`` < ``domains.<domain>`` <
the task entry. ``load_spec`` reports every problem in the file at once, each with its YAML
path, e.g. ``tasks[3].expert.kind: expected one of ['random', 'scripted', 'train', 'checkpoint'],
got 'bot'``.
"""

from __future__ import annotations

import copy
import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

EXPERT_KINDS = ("random", "scripted", "train", "checkpoint")
BUDGETS = ("smoke", "full")
TRAINERS = ("sb3", "sample-factory")


class SpecError(ValueError):
    """A dataset spec has problems; the message lists every one with its YAML path."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the dataset spec:\n{lines}")


@dataclass(frozen=True)
class ExpertSpec:
    """Who acts in the rollout episodes."""

    kind: str = "scripted"
    """random | scripted | train (train it here, then roll it out) | checkpoint (load `source`)"""
    source: str | None = None
    """for kind=checkpoint: a checkpoint path/URI or hf://org/repo"""

    def load_spec(self) -> str:
        """The string experts.base.load_expert takes (train kind: filled in by the training unit)."""
        if self.kind == "checkpoint":
            assert self.source is not None
            return self.source
        return self.kind


@dataclass(frozen=True)
class TrainingSpec:
    """Training runs of the task's expert (used when expert.kind is train)."""

    runs: int = 1
    """independent training runs (different seeds); rollouts use the last run's final checkpoint"""
    budget: str = "smoke"
    """smoke (minutes on a laptop) or full (a cluster)"""
    record: bool = True
    """record every training episode into the dataset (source=training)"""
    steps: int | None = None
    """env steps of training, overriding the budget's (None: the zoo recipe's budget)"""
    trainer: str | None = None
    """sb3 or sample-factory, overriding the zoo recipe's default"""
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    """GPUs requested per training run (Ray schedules it on a GPU node)"""


@dataclass(frozen=True)
class TaskPlan:
    """Everything needed to collect one task, after defaults are applied."""

    task: str
    expert: ExpertSpec
    training: TrainingSpec
    rollout_episodes: int
    """episodes of the final expert (or the scripted policy)"""
    random_episodes: int
    """random-policy episodes, for return normalization"""
    episodes_per_unit: int
    """rollout episodes per work unit (the retry and resume granularity)"""
    num_envs: int
    """environments each worker steps as one batch"""
    max_episode_steps: int | None
    """cut episodes at this many steps (None: the environment's own limit)"""
    cut_after_success: int | None
    """end expert episodes this many steps after the first success (None: never)"""
    seed: int
    noisy_episodes: int = 0
    """extra expert episodes collected after the clean ones with noise on the executed actions
    (see action_noise), while the recorded action stays the expert's own (DART): the data then
    shows the expert correcting from states its clean runs never visit"""
    action_noise: float | None = None
    """continuous actions: the noise's std in the [-1, 1] action scale; discrete actions: the
    probability that a uniformly random action is executed instead of the expert's"""
    num_cpus: float = 1.0
    """CPUs requested per rollout unit"""

    @property
    def domain(self) -> str:
        return self.task.split("/", 1)[0]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str
    seed: int
    tasks: list[TaskPlan] = field(default_factory=list)
    source: str = "<spec>"


# Built-in per-domain defaults: chunk sizes keep one unit at roughly 5-60 s of work here.
DOMAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "babyai": {"expert": {"kind": "scripted"}, "num_envs": 8, "episodes_per_unit": 200},
    "metaworld": {"expert": {"kind": "scripted"}, "num_envs": 2, "episodes_per_unit": 25,
                  "max_episode_steps": None},
    "dmc": {"expert": {"kind": "train"}, "num_envs": 16, "episodes_per_unit": 16},
    "atari": {"expert": {"kind": "train"}, "num_envs": 8, "episodes_per_unit": 4},
    "procgen": {"expert": {"kind": "train"}, "num_envs": 16, "episodes_per_unit": 32},
}
BASE_DEFAULTS: dict[str, Any] = {
    "expert": {"kind": "scripted", "source": None},
    "training": {"runs": 1, "budget": "smoke", "record": True, "steps": None, "trainer": None, "num_cpus": 1.0,
                 "num_gpus": 0.0},
    "rollout_episodes": 0,
    "random_episodes": 0,
    "episodes_per_unit": 50,
    "num_envs": 8,
    "max_episode_steps": None,
    "cut_after_success": None,
    "noisy_episodes": 0,
    "action_noise": None,
    "num_cpus": 1.0,
}
CONTINUOUS_DOMAINS = {"dmc", "metaworld"}  # action_noise is a std there, a probability elsewhere
TOP_KEYS = {"name", "root", "seed", "defaults", "domains", "tasks"}
SETTING_KEYS = set(BASE_DEFAULTS)
TASK_KEYS = SETTING_KEYS | {"id", "seed"}


def load_spec(path: str | os.PathLike, list_tasks: Callable[[], list[str]] | None = None,
              root_override: str | None = None) -> DatasetSpec:
    """Parse and validate a spec file; raises SpecError listing every problem."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise SpecError(path, [f"file not found: {path}"]) from None
    except yaml.YAMLError as error:
        raise SpecError(path, [f"not valid YAML: {error}"]) from None
    return parse_spec(data, source=path, list_tasks=list_tasks, root_override=root_override)


def parse_spec(data: Any, source: str = "<spec>", list_tasks: Callable[[], list[str]] | None = None,
               root_override: str | None = None) -> DatasetSpec:
    """Turn parsed YAML into a DatasetSpec, collecting every problem before raising."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise SpecError(source, [f"(top level): expected a mapping with keys {sorted(TOP_KEYS)}, got {type(data).__name__}"])
    for key in sorted(set(data) - TOP_KEYS):
        problems.append(f"{key}: unknown key; expected one of {sorted(TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"name: expected a non-empty string, got {name!r}")
    seed = data.get("seed", 0)
    if not _is_int(seed):
        problems.append(f"seed: expected an integer, got {seed!r}")
        seed = 0
    root = root_override or data.get("root")
    if not isinstance(root, str) or not root:
        problems.append(f"root: expected a local path or URI (or pass --out), got {root!r}")
        root = ""
    elif "://" not in root and not os.path.isabs(root) and not root_override:
        base = os.path.dirname(source) if os.path.isfile(source) else os.getcwd()
        root = os.path.normpath(os.path.join(base, root))
    elif root_override and "://" not in root:
        root = os.path.abspath(root)

    defaults = data.get("defaults") or {}
    _check_settings(defaults, "defaults", SETTING_KEYS, problems)
    domains = data.get("domains") or {}
    if not isinstance(domains, dict):
        problems.append(f"domains: expected a mapping of domain -> settings, got {type(domains).__name__}")
        domains = {}
    for domain, settings in domains.items():
        _check_settings(settings, f"domains.{domain}", SETTING_KEYS, problems)

    entries = data.get("tasks")
    if not isinstance(entries, list) or not entries:
        problems.append("tasks: expected a non-empty list of task entries (each with an `id`)")
        entries = []
    known = _known_tasks(list_tasks, problems)
    plans: list[TaskPlan] = []
    where_of: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"tasks[{i}]"
        if isinstance(entry, str):
            entry = {"id": entry}
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with an `id` (or a task id string), got {type(entry).__name__}")
            continue
        before = len(problems)
        _check_settings(entry, where, TASK_KEYS, problems)
        pattern = entry.get("id")
        if not isinstance(pattern, str) or "/" not in pattern:
            problems.append(f"{where}.id: expected a task id or glob like 'babyai/GoToLocal' or 'metaworld/*', got {pattern!r}")
            continue
        matched = _expand(pattern, known)
        if not matched:
            problems.append(f"{where}.id: {pattern!r} matches no registered task" + _suggest(pattern, known))
            continue
        if len(problems) > before:
            continue
        for task in matched:
            if task in where_of:
                problems.append(f"{where}.id: task {task!r} is already listed by {where_of[task]}")
                continue
            where_of[task] = where
            merged = _merge(BASE_DEFAULTS, DOMAIN_DEFAULTS.get(task.split("/", 1)[0], {}), defaults,
                            domains.get(task.split("/", 1)[0]) or {}, entry)
            task_seed = entry.get("seed", seed)
            plan = _to_plan(task, merged, task_seed if _is_int(task_seed) else 0, where, problems)
            if plan is not None:
                plans.append(plan)
    if problems:
        raise SpecError(source, problems)
    return DatasetSpec(name=name, root=root, seed=int(seed), tasks=plans, source=source)


def _known_tasks(list_tasks: Callable[[], list[str]] | None, problems: list[str]) -> list[str] | None:
    if list_tasks is None:
        return None
    try:
        return list(list_tasks())
    except Exception as error:  # noqa: BLE001 - a broken registry is reported, not crashed on
        problems.append(f"tasks: could not list registered tasks from experts.registry ({error})")
        return None


def _expand(pattern: str, known: list[str] | None) -> list[str]:
    if known is None:
        return [] if any(c in pattern for c in "*?[") else [pattern]
    if any(c in pattern for c in "*?["):
        return sorted(t for t in known if fnmatch.fnmatchcase(t, pattern))
    return [pattern] if pattern in known else []


def _suggest(pattern: str, known: list[str] | None) -> str:
    if not known:
        return ""
    domain = pattern.split("/", 1)[0]
    same = [t for t in known if t.startswith(domain + "/")]
    if not same:
        domains = sorted({t.split("/", 1)[0] for t in known})
        return f"; known domains: {domains}"
    return f"; e.g. {same[:5]}"


def _check_settings(settings: Any, where: str, allowed: set[str], problems: list[str]) -> None:
    if not isinstance(settings, dict):
        problems.append(f"{where}: expected a mapping, got {type(settings).__name__}")
        return
    for key in sorted(set(settings) - allowed):
        problems.append(f"{where}.{key}: unknown key; expected one of {sorted(allowed)}")
    for key in ("rollout_episodes", "random_episodes", "noisy_episodes"):
        if key in settings and not (_is_int(settings[key]) and settings[key] >= 0):
            problems.append(f"{where}.{key}: expected an integer >= 0, got {settings[key]!r}")
    for key in ("episodes_per_unit", "num_envs"):
        if key in settings and not (_is_int(settings[key]) and settings[key] >= 1):
            problems.append(f"{where}.{key}: expected an integer >= 1, got {settings[key]!r}")
    for key, low in (("max_episode_steps", 1), ("cut_after_success", 0)):
        value = settings.get(key)
        if value is not None and not (_is_int(value) and value >= low):
            problems.append(f"{where}.{key}: expected an integer >= {low} or null, got {value!r}")
    noise = settings.get("action_noise")
    if noise is not None and not (_is_number(noise) and 0 < noise <= 2):
        problems.append(f"{where}.action_noise: expected a number in (0, 2] (the std of continuous actions, the "
                        f"probability of a random discrete action) or null, got {noise!r}")
    if "num_cpus" in settings and not (_is_number(settings["num_cpus"]) and settings["num_cpus"] > 0):
        problems.append(f"{where}.num_cpus: expected a number > 0, got {settings['num_cpus']!r}")
    if "seed" in settings and not _is_int(settings["seed"]):
        problems.append(f"{where}.seed: expected an integer, got {settings['seed']!r}")
    if "expert" in settings:
        _check_expert(settings["expert"], f"{where}.expert", problems)
    if "training" in settings:
        _check_training(settings["training"], f"{where}.training", problems)


def _check_expert(expert: Any, where: str, problems: list[str]) -> None:
    if not isinstance(expert, dict):
        problems.append(f"{where}: expected a mapping like {{kind: scripted}}, got {expert!r}")
        return
    for key in sorted(set(expert) - {"kind", "source"}):
        problems.append(f"{where}.{key}: unknown key; expected one of ['kind', 'source']")
    kind = expert.get("kind")
    if "kind" in expert and kind not in EXPERT_KINDS:
        problems.append(f"{where}.kind: expected one of {list(EXPERT_KINDS)}, got {kind!r}")
    source = expert.get("source")
    if source is not None and not isinstance(source, str):
        problems.append(f"{where}.source: expected a checkpoint path, URI or hf://org/repo, got {source!r}")
    if kind == "checkpoint" and not source:
        problems.append(f"{where}.source: kind checkpoint needs a source (path, URI or hf://org/repo)")


def _check_training(training: Any, where: str, problems: list[str]) -> None:
    if not isinstance(training, dict):
        problems.append(f"{where}: expected a mapping like {{runs: 1, budget: smoke}}, got {training!r}")
        return
    allowed = set(BASE_DEFAULTS["training"])
    for key in sorted(set(training) - allowed):
        problems.append(f"{where}.{key}: unknown key; expected one of {sorted(allowed)}")
    if "runs" in training and not (_is_int(training["runs"]) and training["runs"] >= 1):
        problems.append(f"{where}.runs: expected an integer >= 1, got {training['runs']!r}")
    if "budget" in training and training["budget"] not in BUDGETS:
        problems.append(f"{where}.budget: expected one of {list(BUDGETS)}, got {training['budget']!r}")
    steps = training.get("steps")
    if steps is not None and not (_is_int(steps) and steps >= 1):
        problems.append(f"{where}.steps: expected an integer >= 1 or null, got {steps!r}")
    if training.get("trainer") is not None and training["trainer"] not in TRAINERS:
        problems.append(f"{where}.trainer: expected one of {list(TRAINERS)} or null, got {training['trainer']!r}")
    if "record" in training and not isinstance(training["record"], bool):
        problems.append(f"{where}.record: expected true or false, got {training['record']!r}")
    for key in ("num_cpus", "num_gpus"):
        if key in training and not (_is_number(training[key]) and training[key] >= 0):
            problems.append(f"{where}.{key}: expected a number >= 0, got {training[key]!r}")


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def _to_plan(task: str, merged: dict[str, Any], seed: int, where: str, problems: list[str]) -> TaskPlan | None:
    expert = ExpertSpec(kind=merged["expert"].get("kind", "scripted"), source=merged["expert"].get("source"))
    if expert.kind == "checkpoint" and not expert.source:
        problems.append(f"{where}.expert.source: kind checkpoint needs a source (path, URI or hf://org/repo)")
        return None
    training = TrainingSpec(**merged["training"])
    rollout = merged["rollout_episodes"]
    if expert.kind == "random" and rollout:
        problems.append(f"{where}.rollout_episodes: expert kind random; use random_episodes for random-policy episodes")
        return None
    noisy, noise = int(merged["noisy_episodes"]), merged["action_noise"]
    if noisy and noise is None:
        problems.append(f"{where}.noisy_episodes: {noisy} noisy episodes need action_noise (the noise std, e.g. 0.1)")
        return None
    if noisy and expert.kind == "random":
        problems.append(f"{where}.noisy_episodes: expert kind random has no expert action to record")
        return None
    if noisy and task.split("/", 1)[0] not in CONTINUOUS_DOMAINS and noise > 1:
        problems.append(f"{where}.action_noise: {noise} for {task}'s discrete actions; expected the probability "
                        f"of a random action, <= 1")
        return None
    return TaskPlan(
        task=task, expert=expert, training=training, rollout_episodes=int(rollout),
        random_episodes=int(merged["random_episodes"]), episodes_per_unit=int(merged["episodes_per_unit"]),
        num_envs=int(merged["num_envs"]), max_episode_steps=merged["max_episode_steps"],
        cut_after_success=merged["cut_after_success"], seed=int(seed), noisy_episodes=noisy,
        action_noise=float(noise) if noisy else None,
        num_cpus=float(merged["num_cpus"]),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
