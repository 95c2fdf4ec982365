"""The dataset card, ROOT/README.md: what is in the dataset and how to load it."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from shards.format import CARD_FILE
from shards.manifest import Manifest
from shards.storage import Root


def write_card(root: Root, manifest: Manifest, index: pa.Table) -> None:
    root.write_bytes(CARD_FILE, render_card(root, manifest, index).encode())


def render_card(root: Root, manifest: Manifest, index: pa.Table) -> str:
    collector = manifest.extra.get("collector", {})
    rows = index.select(["task", "source", "return", "length", "success"]).to_pylist()
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    lines = [
        "---",
        "tags: [reinforcement-learning, gato, generalist-agent, gatoforge]",
        "configs:",
        "- config_name: episodes",
        f"  data_files: {_quote('episodes.parquet')}",
        "---",
        f"# {manifest.name}",
        "",
        f"A GatoForge dataset (shard format v{manifest.format_version}) collected from `{collector.get('spec', '?')}`",
        f"(seed {collector.get('seed', '?')}): {index.num_rows} episodes, {int(sum(r['length'] for r in rows))} steps, "
        f"{len(manifest.tasks)} tasks. Units committed: {collector.get('units_committed', '?')} of "
        f"{collector.get('units_planned', '?')}" + ("" if collector.get("complete", True) else
                                                    " (incomplete: rerun the same command to resume)") + ".",
        "",
        "## Tasks",
        "",
        "| task | env | episodes (training/rollout/scripted/random) | steps | expert return | random return | success | expert |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, spec in manifest.tasks.items():
        task_rows = by_task.get(task, [])
        counts = Counter(r["source"] for r in task_rows)
        successes = [r["success"] for r in task_rows if r["success"] is not None and r["source"] != "random"]
        lines.append(
            f"| {task} | {spec.env_id} | {counts['training']}/{counts['rollout']}/{counts['scripted']}/{counts['random']} "
            f"| {sum(r['length'] for r in task_rows)} | {_num(spec.expert_return)} | {_num(spec.random_return)} "
            f"| {_num(float(np.mean(successes)) if successes else None)} | {_expert_text(spec.expert)} |"
        )
    lines += [
        "",
        "## Experts",
        "",
    ]
    for task, spec in manifest.tasks.items():
        lines.append(f"- **{task}**: `{spec.expert}`")
    lines += [
        "",
        "## Files",
        "",
        "```",
        "dataset.json                      manifest: task specs, expert provenance, software versions",
        "episodes.parquet                  index: one row per episode (task, source, seed, return, file, row_offset)",
        "data/<task>/<unit>.parquet        step rows of one work unit, one episode's rows contiguous",
        "experts/<task>/train-NNN/         checkpoints of experts trained during collection",
        "_fragments/<task>/<unit>.parquet  per-unit index fragments (the collector's commit markers)",
        "```",
        "",
        "## How to load",
        "",
        "With GatoForge's `shards`:",
        "",
        "```python",
        "from shards import Dataset",
        f"ds = Dataset({_quote(root.uri)})",
        "for episode in ds.iter_episodes(tasks=[ds.tasks[0]]):",
        "    print(episode)",
        "```",
        "",
        "With plain pyarrow (an episode is `length` rows from `row_offset` of `file`):",
        "",
        "```python",
        "import pyarrow.parquet as pq",
        f"index = pq.read_table({_quote(root.uri + '/episodes.parquet')}).to_pylist()",
        "row = index[0]",
        f"steps = pq.read_table({_quote(root.uri + '/')} + row['file']).slice(row['row_offset'], row['length'])",
        "```",
        "",
        "With Hugging Face `datasets` (step rows of one task):",
        "",
        "```python",
        "from datasets import load_dataset",
        f"steps = load_dataset('parquet', data_files={_quote(root.uri + '/data/')} + 'TASK/*.parquet', split='train')",
        "```",
        "",
        f"Software: {', '.join(f'{k} {v}' for k, v in manifest.software.items())}.",
        "",
    ]
    return "\n".join(lines)


def _expert_text(expert: dict) -> str:
    kind = expert.get("kind", "?")
    runs = expert.get("training_runs")
    if runs:
        return f"{kind} ({runs[-1].get('budget')} budget, {len(runs)} run(s))"
    if expert.get("source"):
        return f"{kind} ({expert['source']})"
    return kind


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _quote(text: str) -> str:
    return repr(text)
