"""Benchmark: curation select on a 1,000,000-episode index vs reading that index alone.

    .venv/bin/python bench/curate.py                      # 1M episodes, 100 tasks
    .venv/bin/python bench/curate.py --episodes 100000 --repeats 1

The synthetic root holds a real dataset.json and episodes.parquet (written with shards'
write_index) but no step files: select reads only the index. Rows arrive as a collector
writes them, in fragments of 500 episodes from interleaved runs, so select must sort.
Baseline: shards.read_index (what Dataset.index does); the dictionary-encoded read select
itself uses is timed too. Ours: curation.select end to end (manifest + index read, plan,
writing the view's index and dataset.json). Timings are interleaved, median of --repeats.
Prints JSON and writes bench/results/curate.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import tyro

from curation import SelectConfig, select
from shards import INDEX_SCHEMA, Manifest, ModalitySpec, TaskSpec, read_index, write_index, write_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "curate.json"
FRAGMENT = 500


@dataclass
class BenchConfig:
    """Sizes of the synthetic index and how often to time each step."""

    episodes: int = 1_000_000
    tasks: int = 100
    repeats: int = 3
    """timings are the median of this many runs"""
    seed: int = 0
    out: str = str(RESULTS)
    """where to write the JSON result"""


def main(config: BenchConfig) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    try:
        src = workdir / "src"
        t0 = time.perf_counter()
        build_index(src, config.episodes, config.tasks, config.seed)
        build_seconds = time.perf_counter() - t0
        # Interleave the timings so a load change on a shared machine hits all of them alike.
        times: dict[str, list[float]] = {"read": [], "read_dictionary": [], "threshold": [], "window": []}
        kept: dict[str, int] = {}
        for repeat in range(max(1, config.repeats)):
            times["read"].append(_seconds(lambda: read_index(str(src))))
            times["read_dictionary"].append(_seconds(lambda: read_index(str(src), dictionary=True)))
            for mode in ("threshold", "window"):
                out = workdir / f"{mode}-{repeat}"
                start = time.perf_counter()
                selection, _ = select(SelectConfig(src=str(src), out=str(out), mode=mode))
                times[mode].append(time.perf_counter() - start)
                kept[mode] = int(selection.keep.sum())
                shutil.rmtree(out)
        median = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "benchmark": "curate",
            "episodes": config.episodes, "tasks": config.tasks, "repeats": config.repeats,
            "index_bytes": os.path.getsize(src / "episodes.parquet"),
            "build_seconds": round(build_seconds, 3),
            "read_index_seconds": round(median["read"], 4),
            "read_index_dictionary_seconds": round(median["read_dictionary"], 4),
        }
        for mode in ("threshold", "window"):
            result[f"select_{mode}_seconds"] = round(median[mode], 4)
            result[f"ratio_{mode}"] = round(median[mode] / median["read"], 3)
            result[f"ratio_{mode}_vs_dictionary_read"] = round(median[mode] / median["read_dictionary"], 3)
            result[f"kept_{mode}"] = kept[mode]
        result["ratio"] = max(result["ratio_threshold"], result["ratio_window"])
        result["target_ratio"] = 3.0
        result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "pyarrow": pa.__version__,
                             "numpy": np.__version__}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    Path(config.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def build_index(root: Path, episodes: int, tasks: int, seed: int) -> None:
    """A valid-looking index: per task a random-policy run, a rollout run and 4 training
    runs whose returns climb a noisy learning curve (some tasks entirely negative)."""
    rng = np.random.default_rng(seed)
    per_task = np.full(tasks, episodes // tasks)
    per_task[: episodes % tasks] += 1
    domains = ("atari", "babyai", "dmc", "metaworld", "procgen")
    names = [f"{domains[i % len(domains)]}/task-{i:03d}" for i in range(tasks)]
    fragments: list[dict[str, np.ndarray]] = []
    specs = {}
    for t, (task, n) in enumerate(zip(names, per_task)):
        n_random = max(1, n // 50)
        n_rollout = max(1, n // 30)
        n_train = n - n_random - n_rollout
        runs = [("random-0", "random", n_random), ("rollout-0", "rollout", n_rollout)]
        runs += [(f"train-{k}", "training", n_train // 4 + (k < n_train % 4)) for k in range(4)]
        offset = -100.0 if t % 7 == 0 else 0.0  # tasks whose returns are all negative
        scale = float(rng.uniform(1, 50))
        for run_id, source, count in runs:
            if count == 0:
                continue
            progress = np.linspace(0, 1, count) if source == "training" else np.full(count, 0.0 if source == "random" else 1.0)
            returns = offset + scale * (progress + rng.normal(0, 0.15, count))
            lengths = rng.integers(10, 500, count)
            row_offset = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            run_index = np.arange(count)
            file = f"data/{task}/{run_id}.parquet"
            for begin in range(0, count, FRAGMENT):
                end = min(count, begin + FRAGMENT)
                fragments.append({
                    "task": task, "domain": task.split("/")[0], "run_id": run_id, "source": source, "file": file,
                    "run_index": run_index[begin:end], "return": returns[begin:end],
                    "length": lengths[begin:end], "row_offset": row_offset[begin:end],
                })
        obs = {"obs_continuous": ModalitySpec([8], "float32")}
        act = {"act_discrete": ModalitySpec([1], "int32", n=6)}
        specs[task] = TaskSpec(domain=task.split("/")[0], env_id=f"{task}-v0", observation=obs, action=act,
                               expert={"kind": "synthetic"})
    order = rng.permutation(len(fragments))  # collectors finish work units in any order
    fragments = [fragments[i] for i in order]
    sizes = np.array([f["run_index"].size for f in fragments])
    total = int(sizes.sum())

    def repeat(key: str) -> pa.Array:
        values = [f[key] for f in fragments]
        dictionary = pa.array(sorted(set(values)), pa.string())
        codes = pa.compute.index_in(pa.array(values, pa.string()), value_set=dictionary).to_numpy()
        return pa.DictionaryArray.from_arrays(pa.array(np.repeat(codes, sizes).astype(np.int32)), dictionary).cast(pa.string())

    def concat(key: str) -> np.ndarray:
        return np.concatenate([f[key] for f in fragments])

    run_index = concat("run_index").astype(np.int64)
    ids = (np.arange(1, total + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0x7FFF_FFFF_FFFF_FFFF)
    table = pa.table({
        "episode_id": pa.array(ids.astype(np.int64)),
        "task": repeat("task"),
        "domain": repeat("domain"),
        "run_id": repeat("run_id"),
        "run_index": pa.array(run_index),
        "source": repeat("source"),
        "policy_steps": pa.array(run_index * 1000),
        "seed": pa.array(rng.integers(0, 2**31 - 1, total)),
        "return": pa.array(concat("return").astype(np.float64)),
        "length": pa.array(concat("length").astype(np.int64)),
        "success": pa.nulls(total, pa.bool_()),
        "file": repeat("file"),
        "row_offset": pa.array(concat("row_offset").astype(np.int64)),
    }, schema=INDEX_SCHEMA)
    write_index(str(root), table)
    write_manifest(str(root), Manifest(name="bench-curate", tasks=specs, extra={"bench": "curate"}))


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
