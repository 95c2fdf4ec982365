"""The driver's commit: merge the units' index fragments into episodes.parquet + dataset.json.

Only committed fragments of units in the current plan are merged, in plan order (not in the
order units finished), so a resumed collection writes the same index as an uninterrupted one.
Step files without a fragment are orphans of killed attempts: nothing points at them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from collectors.card import write_card
from collectors.spec import DatasetSpec
from collectors.units import FRAGMENTS_DIR, WorkUnit
from collectors.worker import read_fragment
from shards.format import DATA_DIR, INDEX_FILE, INDEX_SCHEMA, MANIFEST_FILE
from shards.manifest import Manifest, ManifestError, ModalitySpec, TaskSpec, read_manifest, write_manifest
from shards.storage import TEMP_MARK, Root
from shards.writer import write_index

log = logging.getLogger(__name__)


@dataclass
class Committed:
    """What is committed under a root, per unit id."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __contains__(self, unit_id: str) -> bool:
        return unit_id in self.summaries


def read_committed(root: Root, units: list[WorkUnit]) -> Committed:
    """Read the fragments of ``units`` that exist (others are not committed yet)."""
    committed = Committed()
    present = set(root.list_files(FRAGMENTS_DIR, ".parquet"))
    for unit in units:
        if unit.fragment in present:
            table, summary = read_fragment(root, unit.fragment)
            committed.tables[unit.unit_id] = table
            committed.summaries[unit.unit_id] = summary
    stray = present - {u.fragment for u in units}
    if stray:
        log.warning("%d fragment(s) under %s belong to no unit of this spec and are ignored, e.g. %s",
                    len(stray), root.path(FRAGMENTS_DIR), sorted(stray)[:3])
    return committed


def is_current(root: Root, spec: DatasetSpec, committed: Committed) -> bool:
    """True when episodes.parquet and dataset.json already reflect exactly these fragments."""
    if not (root.exists(INDEX_FILE) and root.exists(MANIFEST_FILE)):
        return False
    try:
        manifest = read_manifest(root)
    except ManifestError:
        return False
    return manifest.name == spec.name and manifest.extra.get("committed_units") == sorted(committed.summaries)


def merge(root: Root, spec: DatasetSpec, units: list[WorkUnit], committed: Committed) -> Manifest:
    """Write episodes.parquet, dataset.json and README.md from the committed fragments."""
    ordered = [committed.tables[u.unit_id] for u in units if u.unit_id in committed]
    index = pa.concat_tables(ordered).cast(INDEX_SCHEMA) if ordered else INDEX_SCHEMA.empty_table()
    manifest = build_manifest(spec, units, committed, index)
    write_index(root, index)
    write_manifest(root, manifest)
    write_card(root, manifest, index)
    if len(committed.summaries) == len(units):
        _remove_temp_files(root)
    return manifest


def build_manifest(spec: DatasetSpec, units: list[WorkUnit], committed: Committed, index: pa.Table) -> Manifest:
    """TaskSpecs come from the workers (experts' task_spec()), returns from the index."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for unit in units:
        if unit.unit_id in committed:
            by_task[unit.task].append(committed.summaries[unit.unit_id])
    returns = _returns_by_task_and_source(index)
    tasks: dict[str, TaskSpec] = {}
    for plan in spec.tasks:
        summaries = by_task.get(plan.task)
        if not summaries:
            continue
        task_spec = task_spec_from_dict(summaries[0]["task_spec"])
        task_spec.expert = _provenance(plan, summaries)
        task_spec.extra["collection"] = {
            "seed": plan.seed, "num_envs": plan.num_envs, "max_episode_steps": plan.max_episode_steps,
            "cut_after_success": plan.cut_after_success,
            "noisy_episodes": plan.noisy_episodes, "action_noise": plan.action_noise,
            "note": ("expert episodes end cut_after_success steps after the first success, so their returns are "
                     "not comparable with full-length random episodes") if plan.cut_after_success is not None else "",
        }
        expert_returns = returns[plan.task].get("rollout", []) + returns[plan.task].get("scripted", [])
        random_returns = returns[plan.task].get("random", [])
        task_spec.expert_return = float(np.mean(expert_returns)) if expert_returns else task_spec.expert_return
        task_spec.random_return = float(np.mean(random_returns)) if random_returns else task_spec.random_return
        tasks[plan.task] = task_spec
    planned = defaultdict(int)
    done = defaultdict(int)
    for unit in units:
        planned[unit.task] += 1
        done[unit.task] += unit.unit_id in committed
    return Manifest(
        name=spec.name, tasks=tasks,
        extra={
            "collector": {"spec": spec.source, "seed": spec.seed, "units_planned": len(units),
                          "units_committed": len(committed.summaries), "complete": len(committed.summaries) == len(units),
                          "pending_tasks": sorted(t for t in planned if done[t] < planned[t])},
            "committed_units": sorted(committed.summaries),
        },
    )


def task_spec_from_dict(data: dict[str, Any]) -> TaskSpec:
    def modalities(part: dict[str, Any] | None) -> dict[str, ModalitySpec]:
        return {k: ModalitySpec(**v) for k, v in (part or {}).items()}

    return TaskSpec(
        domain=data["domain"], env_id=data["env_id"], env_version=data.get("env_version", ""),
        observation=modalities(data.get("observation")), action=modalities(data.get("action")),
        expert=dict(data.get("expert") or {}), expert_return=data.get("expert_return"),
        random_return=data.get("random_return"), extra=dict(data.get("extra") or {}),
    )


def _provenance(plan, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Who made the task's episodes: the spec's expert plus what the units reported."""
    expert: dict[str, Any] = {"kind": plan.expert.kind}
    if plan.expert.source:
        expert["source"] = plan.expert.source
    training = [s for s in summaries if s.get("kind") == "training"]
    if training:
        expert["training_runs"] = [
            {"unit": s["unit_id"], "budget": s.get("budget"), "checkpoint": s.get("checkpoint"), "seed": s["seed"],
             "episodes_recorded": s["episodes"], "steps_recorded": s["steps"], "seconds": s["seconds"]}
            for s in training
        ]
    for s in summaries:
        if s.get("kind") in ("rollout", "scripted") and s.get("expert"):
            expert["rollout_expert"] = s["expert"]
            break
    return expert


def _returns_by_task_and_source(index: pa.Table) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for task, source, value in zip(index["task"].to_pylist(), index["source"].to_pylist(), index["return"].to_pylist()):
        out[task][source].append(value)
    return out


def _remove_temp_files(root: Root) -> None:
    """Leftover temp files of killed attempts (only once nothing else can be writing)."""
    for relative in _all_files(root, DATA_DIR) + _all_files(root, FRAGMENTS_DIR):
        if relative.rsplit("/", 1)[-1].startswith(TEMP_MARK):
            root.delete(relative)


def _all_files(root: Root, relative: str) -> list[str]:
    import pyarrow.fs as pafs

    if not root.exists(relative):
        return []
    infos = root.fs.get_file_info(pafs.FileSelector(root.path(relative), recursive=True))
    prefix = root.base + "/"
    return [i.path[len(prefix):] for i in infos if i.type == pafs.FileType.File]
