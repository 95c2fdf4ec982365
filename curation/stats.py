"""Per-task statistics of any dataset root, with the kept fraction when it was curated.

    python -m curation stats runs/curated
    python -m curation stats runs/raw --json

Reads only dataset.json and episodes.parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import pyarrow as pa
import tyro

from shards import Dataset


@dataclass
class StatsConfig:
    """Print episodes, steps, return mean/max, expert return and kept fraction per task."""

    root: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="ROOT")]
    """dataset root (local path or URI)"""
    json: bool = False
    """print the table as JSON"""


def task_stats(dataset: Dataset) -> list[dict[str, Any]]:
    """One row per task of the manifest; ``kept_fraction`` is kept / source episodes when
    dataset.json carries curation lineage, else None."""
    index = dataset.index
    grouped = index.group_by("task").aggregate(
        [("length", "count"), ("length", "sum"), ("return", "mean"), ("return", "max")]
    ).to_pydict()
    found = {t: i for i, t in enumerate(grouped["task"])}
    lineage = dataset.manifest.lineage or {}
    curated = (lineage.get("kind") == "curation") and isinstance(lineage.get("tasks"), dict)
    rows = []
    for task, spec in dataset.manifest.tasks.items():
        i = found.get(task)
        record = lineage.get("tasks", {}).get(task) if curated else None
        total = record.get("episodes_total") if record else None
        rows.append({
            "task": task,
            "episodes": int(grouped["length_count"][i]) if i is not None else 0,
            "steps": int(grouped["length_sum"][i] or 0) if i is not None else 0,
            "return_mean": grouped["return_mean"][i] if i is not None else None,
            "return_max": grouped["return_max"][i] if i is not None else None,
            "expert_return": spec.expert_return,
            "random_return": spec.random_return,
            "kept_fraction": (grouped["length_count"][i] if i is not None else 0) / total if total else None,
        })
    return rows


def stats_extra(dataset: Dataset) -> dict[str, Any]:
    """Dataset-level facts printed under the table."""
    lineage = dataset.manifest.lineage or {}
    extra: dict[str, Any] = {"episodes": dataset.index.num_rows,
                             "steps": int(pa.compute.sum(dataset.index["length"]).as_py() or 0)}
    if lineage.get("kind") == "curation":
        extra.update(source=lineage.get("source"), mode=lineage.get("mode"), group=lineage.get("group"),
                     threshold=lineage.get("threshold"), baseline=lineage.get("baseline"))
    return extra
