"""Per-task summary of a dataset: episodes, steps, returns and bytes on disk."""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from shards.reader import Dataset


def task_summary(dataset: Dataset) -> list[dict[str, Any]]:
    """One row per task in the manifest (tasks with no episodes show zeros)."""
    index = dataset.index
    rows = []
    for task, spec in dataset.manifest.tasks.items():
        part = index.filter(pc.equal(index["task"], task))
        files = set(part["file"].to_pylist())
        size = 0
        for file in files:
            fs, path = dataset.resolve(file)
            size += fs.get_file_info(path).size or 0
        returns = part["return"]
        rows.append({
            "task": task,
            "episodes": part.num_rows,
            "steps": int(pc.sum(part["length"]).as_py() or 0),
            "return_mean": pc.mean(returns).as_py() if part.num_rows else None,
            "return_max": pc.max(returns).as_py() if part.num_rows else None,
            "expert_return": spec.expert_return,
            "random_return": spec.random_return,
            "bytes": size,
        })
    return rows
