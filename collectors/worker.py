"""Running one work unit inside a Ray worker: collect, write, then commit with a fragment.

The commit protocol, per unit:

1. episodes stream into ``data/<task>/<name>.parquet`` (written to a temp name, renamed on close);
2. a training unit copies its checkpoint to ``experts/<task>/<name>/``;
3. LAST, the index fragment ``_fragments/<task>/<name>.parquet`` appears (atomically): its rows
   are the unit's episodes and its schema metadata holds the unit's summary (task spec, expert
   provenance, checkpoint).

A unit killed before step 3 leaves at most an orphan step file that no index row points at;
its retry overwrites it. A unit whose fragment exists is done: running it again returns the
stored summary without touching anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from collectors.episode_limits import limited_vector_env
from collectors.units import WorkUnit
from collectors.writer_thread import BackgroundWriter
from shards.episode import Episode
from shards.format import conform_index
from shards.storage import Root, atomic_write
from shards.writer import COMPRESSION, index_table

log = logging.getLogger(__name__)

SUMMARY_KEY = b"gatoforge.unit"
REPORT_EVERY_S = 0.5


def run_unit(root_uri: str | Root, unit: WorkUnit, trained: dict[str, Any] | None = None, board: Any = None) -> dict[str, Any]:
    """Collect ``unit`` into ``root_uri`` and commit it; returns its summary (idempotent).

    ``trained`` is the summary of the training unit whose checkpoint a rollout unit uses.
    ``board`` is the driver's ProgressBoard actor (or None).
    """
    root = Root.of(root_uri)
    if root.exists(unit.fragment):
        return read_fragment(root, unit.fragment)[1]
    _limit_threads(unit)
    from experts.registry import get_task

    started = time.time()
    reporter = _Reporter(board, unit)
    entry = get_task(unit.task)
    task_spec = entry.task_spec()
    writer = BackgroundWriter(root, unit.task, unit.name, task_spec.modalities)
    stamp = _Stamper(unit, writer, reporter)
    extra: dict[str, Any] = {}
    try:
        if unit.kind == "training":
            extra = _train(root, unit, stamp if unit.record else None)
        else:
            extra = _rollout(root, unit, entry, trained, stamp)
        if unit.episodes and stamp.count < unit.episodes:
            raise RuntimeError(f"{unit.unit_id}: expected {unit.episodes} episodes, the rollout produced {stamp.count}")
    except BaseException:
        writer.abort()
        raise
    closing, closing_cpu = time.time(), time.process_time()
    rows = writer.close()
    extra["finish_seconds"] = round(time.time() - closing, 4)
    extra["finish_cpu_seconds"] = round(time.process_time() - closing_cpu, 4)
    summary = {
        "unit_id": unit.unit_id, "task": unit.task, "kind": unit.kind, "name": unit.name, "seed": unit.seed,
        "episodes": len(rows), "steps": int(sum(r["length"] for r in rows)),
        "seconds": round(time.time() - started, 3), "host": os.uname().nodename,
        "task_spec": dataclasses.asdict(task_spec), **extra,
    }
    commit_fragment(root, unit.fragment, rows, summary)
    reporter.report(done=True)
    return summary


def commit_fragment(root: Root, relative: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Write a unit's index fragment (its commit marker) with the summary in the schema metadata."""
    table = conform_index(index_table(rows))
    table = table.replace_schema_metadata({SUMMARY_KEY: json.dumps(summary, default=_jsonable).encode()})
    with atomic_write(root, relative) as sink:
        pq.write_table(table, sink, compression=COMPRESSION)


def read_fragment(root: Root, relative: str) -> tuple[pa.Table, dict[str, Any]]:
    """A committed fragment's index rows and its unit summary."""
    with root.fs.open_input_file(root.path(relative)) as handle:
        table = pq.read_table(handle)
    summary = json.loads((table.schema.metadata or {}).get(SUMMARY_KEY, b"{}"))
    return conform_index(table.replace_schema_metadata(None)), summary


class _Stamper:
    """Gives each episode the unit's run id, a run index and source, and stops at ``episodes``.

    Ids then come from shards.episode_id_for(task, run_id, run_index): the same in a rerun.
    """

    def __init__(self, unit: WorkUnit, writer: BackgroundWriter, reporter: _Reporter) -> None:
        self.unit = unit
        self.writer = writer
        self.reporter = reporter
        self.count = 0

    def __call__(self, episode: Episode) -> None:
        if self.unit.episodes and self.count >= self.unit.episodes:
            return
        episode = episode.replace(
            task=self.unit.task, run_id=self.unit.run_id, run_index=self.unit.first_index + self.count,
            source=self.unit.kind, episode_id=-1,
        )
        self.count += 1
        self.writer.put(episode)
        self.reporter.add(episode.length)


class _Reporter:
    """Sends a unit's running totals to the driver's ProgressBoard, at most every 0.5 s."""

    def __init__(self, board: Any, unit: WorkUnit) -> None:
        self.board = board
        self.unit = unit
        self.episodes = 0
        self.steps = 0
        self._last = 0.0
        self.report()

    def add(self, steps: int) -> None:
        self.episodes += 1
        self.steps += steps
        if time.monotonic() - self._last >= REPORT_EVERY_S:
            self.report()

    def report(self, done: bool = False) -> None:
        self._last = time.monotonic()
        if self.board is None:
            return
        with contextlib.suppress(Exception):  # progress must never fail a unit
            self.board.report.remote(self.unit.unit_id, self.unit.task, os.getpid(), self.episodes, self.steps, done)


def _rollout(root: Root, unit: WorkUnit, entry: Any, trained: dict[str, Any] | None, on_episode: _Stamper) -> dict[str, Any]:
    from experts.base import load_expert
    from experts.rollout import rollout

    if unit.max_episode_steps is not None or unit.cut_after_success is not None:
        env = limited_vector_env(entry, unit.num_envs, unit.seed, unit.max_episode_steps, unit.cut_after_success)
    else:
        env = entry.make_env(unit.num_envs, unit.seed)
    try:
        with _expert_source(root, unit, trained) as source:
            expert = load_expert(unit.task, source, env=env, seed=unit.seed)
            cpu = time.process_time()
            result = rollout(unit.task, expert, num_envs=unit.num_envs, episodes=unit.episodes, seed=unit.seed,
                             on_episode=on_episode, source=unit.kind, run_id=unit.run_id,
                             start_index=unit.first_index, env=env, action_noise=unit.action_noise)
            cpu = time.process_time() - cpu
    finally:
        env.close()
    provenance: dict[str, Any] = {"kind": unit.expert.split(":", 1)[0], "spec": unit.expert}
    if trained is not None:
        provenance.update({"checkpoint": trained.get("checkpoint"), "trained_by": trained.get("unit_id"),
                           "budget": trained.get("budget")})
    # loop_* time the stepping loop only (env and expert construction excluded); CPU time counts
    # every thread of the worker, the writer thread included.
    return {"expert": provenance, "mean_return": result.mean_return, "success_rate": result.success_rate,
            "loop_seconds": round(result.seconds, 4), "loop_cpu_seconds": round(cpu, 4)}


def _train(root: Root, unit: WorkUnit, on_episode: _Stamper | None) -> dict[str, Any]:
    from experts.train import train

    with tempfile.TemporaryDirectory(prefix="gatoforge-train-") as scratch:
        checkpoint = os.fspath(train(unit.task, budget=unit.budget, out_dir=scratch, seed=unit.seed,
                                     on_episode=on_episode, write_episodes=False, steps=unit.train_steps,
                                     trainer=unit.trainer))
        provenance = _provenance_beside(checkpoint)
        relative = _store_checkpoint(root, unit, checkpoint)
        for path in _provenance_paths(checkpoint):
            if os.path.isfile(path):
                _store_checkpoint(root, unit, path)
    return {"checkpoint": relative, "budget": unit.budget,
            "expert": {"kind": "train", "budget": unit.budget, "checkpoint": relative, "seed": unit.seed,
                       "provenance": provenance}}


def _provenance_paths(checkpoint: str) -> list[str]:
    """experts.train writes its provenance JSON beside the checkpoint (model.json / <dir>.json)."""
    base = checkpoint.rstrip("/")
    return [os.path.splitext(base)[0] + ".json", base + ".json"]


def _provenance_beside(checkpoint: str) -> dict[str, Any]:
    for path in _provenance_paths(checkpoint):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            data.pop("versions", None)  # the manifest records software versions once
            return data
    return {}


def _store_checkpoint(root: Root, unit: WorkUnit, local_path: str) -> str:
    """Copy a checkpoint (file or directory) under the dataset root; returns its relative path."""
    relative = f"{unit.checkpoint_dir}/{os.path.basename(local_path.rstrip('/'))}"
    if root.is_local:
        target = root.path(relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(local_path):
            shutil.copytree(local_path, target, dirs_exist_ok=True)
        else:
            shutil.copy2(local_path, target)
    else:
        root.makedirs(unit.checkpoint_dir)
        pafs.copy_files(local_path, root.path(relative), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=root.fs)
    return relative


@contextlib.contextmanager
def _expert_source(root: Root, unit: WorkUnit, trained: dict[str, Any] | None):
    """What load_expert gets: the spec string, or a local copy of a trained checkpoint."""
    if not unit.expert.startswith("trained:"):
        yield unit.expert
        return
    if trained is None or not trained.get("checkpoint"):
        raise RuntimeError(f"{unit.unit_id} needs the checkpoint of {unit.depends_on}, which reported none")
    relative = trained["checkpoint"]
    if root.is_local:
        yield root.path(relative)
        return
    with tempfile.TemporaryDirectory(prefix="gatoforge-ckpt-") as scratch:
        local = os.path.join(scratch, os.path.basename(relative))
        pafs.copy_files(root.path(relative), local, source_filesystem=root.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        yield local


def _limit_threads(unit: WorkUnit) -> None:
    """One torch thread per requested CPU: Ray packs units by their num_cpus."""
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(max(1, int(unit.num_cpus)))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
