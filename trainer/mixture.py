"""Per-task sampling weights: uniform over domains, then over each domain's tasks (Gato's rule),
with manual upweighting from a YAML file or ``NAME=WEIGHT`` pairs.

    weights = task_weights(tasks, "configs/mixture.yaml")
    weights = task_weights(tasks, {"atari": 2.0, "babyai/GoToLocal": 3.0})

A mixture file (names containing a slash are tasks, the others domains):

    domains:            # relative domain weights, default 1 each
      atari: 2.0
    tasks:              # multipliers of a task inside its domain, default 1 each; 0 drops it
      babyai/GoToLocal: 3.0

A domain's share is proportional to its weight; inside the domain, a task's share is
proportional to its multiplier. The result sums to 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

MixtureSpec = Mapping[str, float] | Mapping[str, Mapping[str, float]] | str | os.PathLike | None


def task_weights(task_domains: Mapping[str, str], mixture: MixtureSpec = None) -> dict[str, float]:
    """{task: probability} for the given {task: domain}; see the module docstring."""
    domain_weights, task_multipliers = parse_mixture(mixture)
    domains: dict[str, list[str]] = {}
    for task, domain in sorted(task_domains.items()):
        domains.setdefault(domain, []).append(task)
    unknown = [d for d in domain_weights if d not in domains] + [t for t in task_multipliers if t not in task_domains]
    if unknown:
        raise ValueError(f"mixture names {unknown} that are not in the datasets; known domains {sorted(domains)}, "
                         f"tasks {sorted(task_domains)}")
    weights: dict[str, float] = {}
    for domain, tasks in domains.items():
        share = domain_weights.get(domain, 1.0)
        inner = {task: task_multipliers.get(task, 1.0) for task in tasks}
        total = sum(inner.values())
        for task, value in inner.items():
            weights[task] = share * value / total if total > 0 else 0.0
    norm = sum(weights.values())
    if norm <= 0:
        raise ValueError("mixture gives every task weight 0; at least one must be positive")
    return {task: value / norm for task, value in weights.items()}


def parse_mixture(mixture: MixtureSpec) -> tuple[dict[str, float], dict[str, float]]:
    """(domain weights, task multipliers) from None, a dict, or a YAML path."""
    if mixture is None:
        return {}, {}
    where = "mixture"
    if isinstance(mixture, (str, os.PathLike)):
        import yaml

        where = os.fspath(mixture)
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"mixture file {where}: not found")
        try:
            mixture = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"mixture file {where}: not valid YAML ({error})") from None
        if not isinstance(mixture, dict):
            raise ValueError(f"mixture file {where}: expected a mapping with 'domains' and/or 'tasks'")
    domains: dict[str, float] = {}
    tasks: dict[str, float] = {}
    for key, value in mixture.items():
        if key in ("domains", "tasks") and isinstance(value, Mapping):
            for name, weight in value.items():
                (tasks if key == "tasks" else domains)[str(name)] = _weight(where, f"{key}.{name}", weight)
        elif key in ("domains", "tasks"):
            raise ValueError(f"{where}: '{key}' must map names to weights")
        else:
            (tasks if "/" in str(key) else domains)[str(key)] = _weight(where, str(key), value)
    return domains, tasks


def parse_weight_args(pairs: Sequence[str]) -> dict[str, float]:
    """``["atari=2", "babyai/GoToLocal=3"]`` -> dict, for ``--weight`` flags."""
    result: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--weight {pair!r}: expected NAME=WEIGHT (a domain or a task id)")
        result[name] = _weight("--weight", name, value)
    return result


def _weight(where: str, name: str, value) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weight of {name} is {value!r}; expected a number >= 0") from None
    if not weight >= 0 or weight == float("inf"):
        raise ValueError(f"{where}: weight of {name} is {value!r}; expected a finite number >= 0")
    return weight
