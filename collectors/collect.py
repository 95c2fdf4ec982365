"""Collect a dataset from a spec with Ray: plan units, schedule them, merge what committed.

    python collectors/run_all.py --spec datasets/quickstart.yaml --out runs/quickstart
    python -m collectors --spec datasets/quickstart.yaml --dry-run           # validate + plan
    ray submit ray_cluster.yaml collectors/run_all.py -- --spec datasets/gato-control.yaml --address auto

Without ``--address`` an embedded local Ray starts; ``--address auto`` joins a running cluster.
Rerunning the same command resumes: committed units are skipped (a no-op when all are done).
Ctrl-C cancels the running units, merges what committed, and leaves a valid dataset.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import tyro

from collectors.merge import Committed, is_current, merge, read_committed
from collectors.spec import DatasetSpec, SpecError, load_spec
from collectors.units import WorkUnit, plan_units
from shards.console import print_table
from shards.storage import Root

log = logging.getLogger(__name__)

#: Name prefix of the driver's ProgressBoard actor (tools and tests find running units' pids there).
BOARD_PREFIX = "gatoforge-progress-"


class StorageError(ValueError):
    """The output root cannot be reached or written (bad URI, no credentials, no network)."""


@dataclass
class CollectConfig:
    """Turn a dataset spec into a dataset (resumable: rerun the same command to continue)."""

    spec: str
    """dataset spec YAML (see datasets/quickstart.yaml)"""
    out: str | None = None
    """output root (local path, s3:// or gs:// URI); overrides the spec's `root`"""
    address: str | None = None
    """Ray address: none starts an embedded local Ray; `auto` joins the running cluster"""
    num_cpus: int | None = None
    """CPUs of the embedded local Ray (default: all cores)"""
    max_retries: int = 3
    """times Ray reruns a unit whose worker died (SIGKILL, node loss)"""
    max_units: int | None = None
    """run at most this many pending units, then merge and stop (collect in stages)"""
    progress: bool = True
    """show the live progress bars"""
    dry_run: bool = False
    """validate the spec and print the units without collecting"""
    json: bool = False
    """print the final per-task table as JSON"""


@dataclass
class CollectResult:
    root: str
    units_planned: int
    units_run: int
    units_skipped: int
    units_failed: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    steps: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    retried: dict[str, int] = field(default_factory=dict)
    """units that needed more than one attempt (a worker died), with their attempt counts"""

    @property
    def complete(self) -> bool:
        return not self.units_failed and not self.interrupted and self.units_skipped + self.units_run == self.units_planned


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = tyro.cli(CollectConfig, args=argv)
    try:
        result = collect(config)
    except (SpecError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if config.dry_run:
        return 0
    print_table(result.rows, title=f"{result.root}", as_json=config.json, extra={
        "units_run": result.units_run, "units_skipped": result.units_skipped, "failed": result.units_failed,
        "interrupted": result.interrupted, "retried": result.retried, "seconds": round(result.seconds, 1),
        "steps_per_s": round(result.steps / result.seconds, 1) if result.seconds else 0.0,
    })
    if result.interrupted:
        return 130
    return 1 if result.units_failed else 0


def collect(config: CollectConfig) -> CollectResult:
    """Plan, run and merge; returns what happened (also on Ctrl-C)."""
    from experts.registry import list_tasks

    started = time.time()
    spec = load_spec(config.spec, list_tasks=list_tasks, root_override=config.out)
    units = plan_units(spec)
    try:
        root = Root.of(spec.root)
        committed = read_committed(root, units)
    except OSError as error:
        if not config.dry_run:
            raise StorageError(f"cannot use the output root {spec.root!r}: {_first_line(error)}") from None
        log.warning("cannot read the output root %s (%s): showing every unit as pending", spec.root, _first_line(error))
        root, committed = Root(fs=None, base=spec.root, uri=spec.root), Committed()  # type: ignore[arg-type]
    todo = [u for u in units if u.unit_id not in committed]
    if config.dry_run:
        print_table([_plan_row(u, u.unit_id in committed) for u in units], title=f"{spec.name} -> {root.uri}",
                    as_json=config.json)
        return CollectResult(root.uri, len(units), 0, len(units) - len(todo))
    result = CollectResult(root.uri, len(units), 0, len(units) - len(todo))
    if not todo and is_current(root, spec, committed):
        log.info("all %d units of %s are committed in %s: nothing to do", len(units), spec.name, root.uri)
        result.rows = _task_rows(units, committed)
        return result
    if config.max_units is not None:
        todo = todo[: config.max_units]
    try:
        if todo:
            _run_units(config, spec, root, units, todo, committed, result)
    except KeyboardInterrupt:
        result.interrupted = True
        log.warning("interrupted: merging the committed units; rerun the same command to resume")
    finally:
        committed = read_committed(root, units)
        merge(root, spec, units, committed)
        result.seconds = time.time() - started
        result.rows = _task_rows(units, committed)
    return result


def _run_units(config: CollectConfig, spec: DatasetSpec, root: Root, units: list[WorkUnit], todo: list[WorkUnit],
               committed: Committed, result: CollectResult) -> None:
    import ray

    from collectors.progress import ProgressBoard, ProgressView

    started_ray = _ensure_ray(config, root_is_remote=not root.is_local)
    board = ray.remote(num_cpus=0)(ProgressBoard).options(name=f"{BOARD_PREFIX}{spec.name}-{os.getpid()}").remote()
    remote_unit = ray.remote(_run_unit_task)
    refs: dict[str, Any] = {}
    try:
        for unit in todo:
            trained = None
            if unit.depends_on:
                trained = committed.summaries.get(unit.depends_on) or refs.get(unit.depends_on)
                if trained is None:
                    log.warning("%s waits on %s, which is neither committed nor scheduled (max_units?)", unit.unit_id, unit.depends_on)
                    continue
            refs[unit.unit_id] = remote_unit.options(
                num_cpus=unit.num_cpus, num_gpus=unit.num_gpus or None, max_retries=config.max_retries,
                retry_exceptions=False, name=unit.unit_id,
            ).remote(root.uri, unit, trained, board)
        unit_counts = defaultdict(int)
        for unit in units:
            unit_counts[unit.task] += 1
        done_counts: dict[str, int] = defaultdict(int)
        previous: dict[str, dict[str, int]] = defaultdict(lambda: {"episodes": 0, "steps": 0})
        for unit_id, summary in committed.summaries.items():
            done_counts[summary["task"]] += 1
            previous[summary["task"]]["episodes"] += summary["episodes"]
            previous[summary["task"]]["steps"] += summary["steps"]
        by_ref = {ref: unit_id for unit_id, ref in refs.items()}
        pending = list(refs.values())
        fresh: dict[str, int] = {}
        snapshot: dict[str, dict[str, Any]] = {}
        with ProgressView(dict(unit_counts), enabled=config.progress) as view:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
                for ref in ready:
                    unit_id = by_ref[ref]
                    try:
                        summary = ray.get(ref)
                    except Exception as error:  # noqa: BLE001 - one failed unit must not stop the others
                        log.error("unit %s failed: %s", unit_id, _first_line(error))
                        result.units_failed.append(unit_id)
                        continue
                    result.units_run += 1
                    done_counts[summary["task"]] += 1
                snapshot = ray.get(board.snapshot.remote())
                fresh = view.update(snapshot, done_counts, previous)
        result.steps = sum(fresh.values())
        result.retried = {u: s["attempts"] for u, s in snapshot.items() if s["attempts"] > 1}
        for unit_id, attempts in result.retried.items():
            log.warning("unit %s needed %d attempts (its worker died and Ray retried it)", unit_id, attempts)
    except KeyboardInterrupt:
        for ref in refs.values():
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        raise
    finally:
        if started_ray:
            ray.shutdown()


def _run_unit_task(root_uri: str, unit: WorkUnit, trained: dict[str, Any] | None, board: Any) -> dict[str, Any]:
    """The Ray task body (module level so workers import it from the installed package)."""
    from collectors.worker import run_unit

    return run_unit(root_uri, unit, trained, board)


def _ensure_ray(config: CollectConfig, root_is_remote: bool) -> bool:
    """Start an embedded Ray (or join ``--address``); returns True if we started it."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    if config.address:
        ray.init(address=config.address, log_to_driver=True)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1 and not root_is_remote:
            log.warning("collecting into a local root on a %d-node cluster: workers on other nodes write to "
                        "their own disks; use an s3:// or gs:// root", len(nodes))
    else:
        ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def _task_rows(units: list[WorkUnit], committed: Committed) -> list[dict[str, Any]]:
    """Per task: units committed, episodes, steps, mean return of expert and random episodes."""
    rows: dict[str, dict[str, Any]] = {}
    returns: dict[str, dict[bool, list[float]]] = {}
    for unit in units:
        row = rows.setdefault(unit.task, {"task": unit.task, "units": 0, "committed": 0, "episodes": 0, "steps": 0})
        row["units"] += 1
        table = committed.tables.get(unit.unit_id)
        if table is None:
            continue
        row["committed"] += 1
        row["episodes"] += table.num_rows
        row["steps"] += int(sum(table["length"].to_pylist()))
        if unit.kind != "training":
            returns.setdefault(unit.task, {True: [], False: []})[unit.kind == "random"] += table["return"].to_pylist()
    for task, row in rows.items():
        by_kind = returns.get(task, {True: [], False: []})
        row["expert_return"] = sum(by_kind[False]) / len(by_kind[False]) if by_kind[False] else None
        row["random_return"] = sum(by_kind[True]) / len(by_kind[True]) if by_kind[True] else None
    return list(rows.values())


def _plan_row(unit: WorkUnit, done: bool) -> dict[str, Any]:
    return {"task": unit.task, "unit": unit.name, "kind": unit.kind, "episodes": unit.episodes, "seed": unit.seed,
            "expert": unit.expert, "num_envs": unit.num_envs, "cpus": unit.num_cpus, "gpus": unit.num_gpus,
            "committed": done}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
