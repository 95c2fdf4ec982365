"""Every task GatoForge knows, one id each, and how to build its preprocessed batched env.

    python -m experts list --domain babyai
    python -m experts list --json

    from experts.registry import get_task, list_tasks
    entry = get_task("metaworld/reach-v3")
    env = entry.make_env(num_envs=4, seed=0)          # Gymnasium VectorEnv, SAME_STEP autoreset
    obs, infos = env.reset(seed=0)
    columns = entry.to_columns(obs)                    # {"obs_continuous": (4, 39) float32}

Batched envs follow Gymnasium's SAME_STEP autoreset (see experts.envs.domain): a finished env
reports its flags and restarts in the same ``step``, so ``obs[i]`` is already the next
episode's first observation.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from experts.envs.atari import AtariDomain
from experts.envs.babyai import BabyAIDomain
from experts.envs.dmc import DMCDomain
from experts.envs.domain import Domain
from experts.envs.metaworld import MetaWorldDomain
from experts.envs.procgen import ProcgenDomain
from shards import TaskSpec

DOMAINS: dict[str, Domain] = {
    d.name: d for d in (AtariDomain(), DMCDomain(), MetaWorldDomain(), BabyAIDomain(), ProcgenDomain())
}

#: The JAT reference returns (expert and random) the spec copies where a task exists there.
REFERENCE_SCORES = Path("/work/shared/reference/jat_expert_scores.json")

#: The tasks the quickstart uses (random baselines are measured for each).
QUICKSTART_TASKS = ("babyai/GoToRedBall", "babyai/GoToLocal", "metaworld/reach-v3", "metaworld/push-v3",
                    "dmc/cartpole-balance", "atari/pong", "procgen/coinrun")


@dataclass(frozen=True)
class TaskEntry:
    """One task: its id, its domain adapter and everything derived from them."""

    task_id: str
    domain: str

    @property
    def adapter(self) -> Domain:
        return DOMAINS[self.domain]

    @property
    def env_id(self) -> str:
        return self.adapter.env_id(self.task_id)

    @property
    def success_key(self) -> str | None:
        return self.adapter.success_key

    def make_env(self, num_envs: int, seed: int, vectorization: str = "sync") -> gym.vector.VectorEnv:
        """A batched env of ``num_envs`` copies; env i is built with seed ``seed + i``.

        Call ``reset(seed=seed)`` before stepping. ``vectorization="async"`` runs each env in a
        subprocess (not for Procgen, which batches natively, nor for the BabyAI bot, which
        reads the env's state).
        """
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}; expected >= 1")
        with _explain_missing(self.domain):
            return self.adapter.make_vector(self.task_id, num_envs, seed, vectorization)

    def make_single_env(self, seed: int = 0) -> gym.Env:
        """One preprocessed env (what SB3 and sample-factory wrap themselves)."""
        with _explain_missing(self.domain):
            return self.adapter.make_single(self.task_id, seed)

    def task_spec(self, expert: dict[str, Any] | None = None) -> TaskSpec:
        reference = reference_scores(self.task_id)
        return TaskSpec(
            domain=self.domain, env_id=self.env_id, env_version=self.adapter.env_version(),
            observation=self.adapter.observation_spec(self.task_id), action=self.adapter.action_spec(self.task_id),
            expert=dict(expert or {}), expert_return=reference.get("expert"), random_return=reference.get("random"),
            extra={**self.adapter.extra(self.task_id), "reference": reference.get("key")},
        )

    def to_columns(self, obs_batch: Any) -> dict[str, np.ndarray | list[str]]:
        """A batch of N observations -> shard step columns, each with N rows."""
        return self.adapter.to_columns(obs_batch)

    def action_columns(self, actions: Any) -> dict[str, np.ndarray]:
        """A batch of N actions -> ``act_discrete`` (N, 1) int32 or ``act_continuous`` (N, a) float32."""
        return self.adapter.action_columns(actions)


def list_tasks(domain: str | None = None) -> list[str]:
    """All task ids, or one domain's, in a stable order."""
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {sorted(DOMAINS)}")
    return [t for name, d in DOMAINS.items() if domain in (None, name) for t in _task_ids(name)]


def get_task(task_id: str) -> TaskEntry:
    """The registry entry for ``task_id``; an unknown id raises ValueError naming the closest ids."""
    domain = task_id.split("/", 1)[0] if "/" in task_id else ""
    if domain in DOMAINS and task_id in _task_set(domain):
        return TaskEntry(task_id=task_id, domain=domain)
    known = list_tasks()
    close = difflib.get_close_matches(task_id, known, n=5, cutoff=0.5)
    if not close:
        lowered = {t.lower(): t for t in known}
        close = [lowered[t] for t in difflib.get_close_matches(task_id.lower(), list(lowered), n=5, cutoff=0.4)]
    hint = f"closest known ids: {', '.join(close)}" if close else f"domains: {', '.join(DOMAINS)}"
    raise ValueError(f"unknown task id {task_id!r}; {hint} (python -m experts list shows all {len(known)})")


def reference_scores(task_id: str) -> dict[str, Any]:
    """JAT's expert/random mean returns for ``task_id`` if it is in jat_expert_scores.json."""
    key = _reference_key(task_id)
    table = _reference_table()
    if key not in table:
        return {}
    row = table[key]
    return {"key": key, "expert": row.get("expert", {}).get("mean"), "random": row.get("random", {}).get("mean")}


#: The pip package each domain's environments come from (pinned in requirements/constraints.txt).
DOMAIN_PACKAGES = {"atari": "ale-py", "dmc": "dm-control", "metaworld": "metaworld", "babyai": "minigrid",
                   "procgen": "procgen2"}


@contextlib.contextmanager
def _explain_missing(domain: str):
    """Turn a bare ImportError into one naming the package to install."""
    try:
        yield
    except ImportError as error:
        package = DOMAIN_PACKAGES[domain]
        raise ImportError(f"{domain} environments need {package} ({error}): "
                          f"pip install -c requirements/constraints.txt {package}") from error


@functools.cache
def _task_ids(domain: str) -> tuple[str, ...]:
    return tuple(DOMAINS[domain].task_ids())


@functools.cache
def _task_set(domain: str) -> frozenset[str]:
    return frozenset(_task_ids(domain))


@functools.cache
def _reference_table() -> dict[str, Any]:
    if not REFERENCE_SCORES.exists():
        return {}
    return json.loads(REFERENCE_SCORES.read_text())


def _reference_key(task_id: str) -> str:
    """``babyai/GoToLocal`` -> ``babyai-go-to-local`` style key, matched on letters and digits."""
    domain, name = task_id.split("/", 1)
    name = name.removesuffix("-v3")
    flat = f"{domain}-{name}".lower().replace("-", "").replace("_", "")
    for key in _reference_table():
        if key.replace("-", "").replace("_", "") == flat:
            return key
    return f"{domain}-{name}"
