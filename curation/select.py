"""Choose which episodes of a dataset to train on: Gato's expert-return filter, or the best window.

    python -m curation select runs/raw --out runs/curated                      # Gato: R >= 0.8 R_expert
    python -m curation select runs/raw --out runs/best --mode window --window 100
    python -m curation select runs/raw --out runs/c --group run --tasks 'metaworld/*' --report
    python -m curation select runs/raw --out runs/c --materialize --overwrite --json

Rules (docs/curation.md says the same with pictures):

- Collection order inside a task is run_id, then run_index. The expert return of a group
  (a task, or with ``--group run`` one training run of a task) is the largest mean return
  over W consecutive episodes in that order; W = ``--window``, else
  min(``--max-window`` = 1000, floor(``--window-frac`` = 0.1 x N)), at least 1.
  Ties between windows go to the latest one.
- ``--mode window`` keeps exactly the W episodes of that best window.
- ``--mode threshold`` (default) keeps every episode with R >= cutoff, where
  cutoff = B + t x (R_expert - B), t = ``--threshold`` (0.8). The baseline B settles what
  "80% of the expert" means when returns can be negative (``--baseline auto``, default):
    1. the task's random-policy return R_random, when it is known and below R_expert: keep
       episodes whose normalized score 100 (R - R_random) / (R_expert - R_random) is at
       least 100 t (the score evaluation reports);
    2. otherwise 0 when R_expert > 0: Gato's literal R >= t x R_expert;
    3. otherwise the group's lowest return (R_expert <= 0 and no usable random return).
  ``--baseline zero|random|min`` forces one of them. The rule and every B are recorded.
- R_random of a task is the mean return of its ``source=random`` episodes in SRC, else the
  random_return in SRC's dataset.json, else unknown.
- Candidates: tasks matching ``--tasks`` globs, episodes from ``--sources`` (default: all but
  random, which are baselines, not demonstrations) and at least ``--min-length`` steps.
  ``--max-episodes-per-task`` then keeps a task's highest-return selected episodes (ties:
  the later one).
- The per-task expert return (Gato's definition, always per task) and random return are
  written to the output's TaskSpecs: evaluation normalizes scores by them.

Only episodes.parquet and dataset.json of SRC are read (step files only with
``--materialize``), and nothing under SRC is ever written.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import tyro

from curation.windows import Windows, best_windows, cutoffs, group_starts, window_mask, window_sizes
from shards import Manifest, SOURCES

logger = logging.getLogger(__name__)

Source = Literal["training", "rollout", "scripted", "random"]

NEGATIVE_RETURN_RULE = (
    "cutoff = B + threshold * (R_expert - B); baseline 'auto': B = R_random if the task's random "
    "return is known and below R_expert, else B = 0 if R_expert > 0 (Gato: threshold * R_expert), "
    "else B = the group's minimum return"
)


class CurationError(ValueError):
    """Bad curation input: the message names the flag, task or file and what was expected."""


@dataclass
class SelectConfig:
    """Select episodes of SRC into a new dataset root DST (a view over SRC's step files)."""

    src: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SRC")]
    """source dataset root (local path or URI); never modified"""
    out: str
    """destination dataset root; refused if it exists unless --overwrite"""
    mode: Literal["threshold", "window"] = "threshold"
    """threshold: keep R >= cutoff (Gato); window: keep exactly the best window's W episodes"""
    threshold: float = 0.8
    """fraction t of the expert return (relative to the baseline) an episode must reach"""
    window: int | None = None
    """window size W; default min(--max-window, floor(--window-frac x N)), at least 1"""
    window_frac: float | None = None
    """W as a fraction of each group's episode count (default 0.1); excludes --window"""
    max_window: int = 1000
    """cap on W when it comes from --window-frac"""
    group: Literal["task", "run"] = "task"
    """compute the expert return per task (Gato) or per training run of a task"""
    baseline: Literal["auto", "random", "zero", "min"] = "auto"
    """cutoff = B + t (R_expert - B); auto: B = random return if known and below R_expert, else 0 if
    R_expert > 0, else the group's lowest return"""
    sources: tuple[Source, ...] = ("training", "rollout", "scripted")
    """episode sources that may be selected (random episodes still give the random return)"""
    tasks: tuple[str, ...] = ("*",)
    """task globs, e.g. 'metaworld/*' 'babyai/GoTo*'"""
    min_length: int = 0
    """drop episodes shorter than this many steps"""
    max_episodes_per_task: int | None = None
    """keep at most this many selected episodes per task (the highest returns)"""
    materialize: bool = False
    """copy the selected episodes into DST's own step files instead of referencing SRC's"""
    report: bool = False
    """write DST/report.html with a plot per task"""
    overwrite: bool = False
    """replace an existing DST"""
    json: bool = False
    """print the per-task summary as JSON"""

    def validate(self) -> None:
        """Raise one CurationError listing every bad flag."""
        problems = []
        if not self.src:
            problems.append("SRC is required")
        if not self.out:
            problems.append("--out is required")
        if not math.isfinite(self.threshold) or self.threshold < 0:
            problems.append(f"--threshold {self.threshold}: expected a finite number >= 0")
        if self.window is not None and self.window < 1:
            problems.append(f"--window {self.window}: expected an integer >= 1")
        if self.window is not None and self.window_frac is not None:
            problems.append("--window and --window-frac exclude each other: give one")
        if self.window_frac is not None and not 0 < self.window_frac <= 1:
            problems.append(f"--window-frac {self.window_frac}: expected 0 < F <= 1")
        if self.max_window < 1:
            problems.append(f"--max-window {self.max_window}: expected an integer >= 1")
        if self.min_length < 0:
            problems.append(f"--min-length {self.min_length}: expected an integer >= 0")
        if self.max_episodes_per_task is not None and self.max_episodes_per_task < 1:
            problems.append(f"--max-episodes-per-task {self.max_episodes_per_task}: expected an integer >= 1")
        if not self.sources:
            problems.append(f"--sources is empty: expected some of {SOURCES}")
        if not self.tasks:
            problems.append("--tasks is empty: expected globs such as '*' or 'babyai/*'")
        if problems:
            raise CurationError("; ".join(problems))
        if self.threshold > 1:
            logger.warning("--threshold %s > 1 keeps only episodes better than the expert return", self.threshold)

    @property
    def frac(self) -> float:
        return 0.1 if self.window_frac is None else self.window_frac


@dataclass
class Selection:
    """What select decided, in collection order, enough to write the output and the report.

    ``rows`` are the positions in SRC's index of the candidate episodes sorted by task,
    run_id, run_index; groups are back to back in that order. Per-group arrays are indexed
    by group number.
    """

    config: SelectConfig
    tasks: list[str]  # selected tasks, sorted; task codes index this list
    source_index: pa.Table  # SRC's whole index, as read
    rows: np.ndarray  # (n,) candidate positions in source_index, in collection order
    returns: np.ndarray  # (n,) float64
    lengths: np.ndarray  # (n,) int64
    task_code: np.ndarray  # (n,) int
    keep: np.ndarray  # (n,) bool
    group_start: np.ndarray  # (G,) first row of each group in ``index``
    group_count: np.ndarray  # (G,)
    group_task: np.ndarray  # (G,) task code
    group_run: list[str | None]  # (G,) run_id with --group run, else None
    windows: Windows  # best window per group
    baseline_kind: list[str]  # (G,) random|zero|min
    baseline: np.ndarray  # (G,) B
    cutoff: np.ndarray  # (G,) NaN in window mode
    task_expert: np.ndarray  # (T,) per-task expert return (Gato's definition, per task)
    task_window: np.ndarray  # (T,) per-task W
    random_return: list[float | None]  # (T,)
    random_from: list[str | None]  # (T,) "episodes" | "manifest" | None
    totals: dict[str, tuple[int, int]]  # task -> (episodes, steps) in SRC
    capped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (n,) dropped by the cap

    @cached_property
    def index(self) -> pa.Table:
        """(n,) the candidate rows in collection order."""
        return self.source_index.take(self.rows)

    def kept_index(self) -> pa.Table:
        """The kept rows in collection order (what DST's episodes.parquet holds)."""
        return self.source_index.take(self.rows[self.keep])

    def task_rows(self) -> list[dict[str, Any]]:
        """One summary row per selected task (what select prints and records)."""
        rows = []
        kept_per_task = np.bincount(self.task_code[self.keep], minlength=len(self.tasks))
        steps_per_task = np.bincount(self.task_code[self.keep], weights=self.lengths[self.keep], minlength=len(self.tasks))
        candidates = np.bincount(self.task_code, minlength=len(self.tasks))
        single = self.config.group == "task"
        for code, task in enumerate(self.tasks):
            total, total_steps = self.totals.get(task, (0, 0))
            rows.append({
                "task": task,
                "episodes": int(total),
                "candidates": int(candidates[code]),
                "kept": int(kept_per_task[code]),
                "steps": int(total_steps),
                "kept_steps": int(steps_per_task[code]),
                "window": int(self.task_window[code]),
                "expert_return": float(self.task_expert[code]),
                "random_return": self.random_return[code],
                "baseline": self.baseline_kind[code] if single and self.config.mode == "threshold" else None,
                "cutoff": float(self.cutoff[code]) if single and self.config.mode == "threshold" else None,
            })
        return rows

    def lineage(self, src_uri: str, parent: dict[str, Any] | None) -> dict[str, Any]:
        """What dataset.json records about how this dataset was made from SRC."""
        config = self.config
        rows = self.task_rows()
        tasks = {}
        for code, row in enumerate(rows):
            tasks[row["task"]] = {
                "expert_return": row["expert_return"], "random_return": row["random_return"],
                "random_return_from": self.random_from[code], "window": row["window"],
                "episodes_total": row["episodes"], "steps_total": row["steps"],
                "episodes_candidates": row["candidates"], "episodes_kept": row["kept"],
                "steps_kept": row["kept_steps"], "baseline": row["baseline"], "cutoff": row["cutoff"],
            }
        groups = []
        firsts = self.source_index.select(["run_id", "run_index"]).take(
            self.rows[self.group_start + self.windows.start]).to_pylist()
        for g, first in enumerate(firsts):
            groups.append({
                "task": self.tasks[int(self.group_task[g])], "run_id": self.group_run[g],
                "episodes": int(self.group_count[g]), "window": int(self.windows.width[g]),
                "expert_return": float(self.windows.mean[g]),
                "window_first": {"run_id": first["run_id"], "run_index": first["run_index"]},
                "baseline": self.baseline_kind[g] if config.mode == "threshold" else None,
                "baseline_value": float(self.baseline[g]) if config.mode == "threshold" else None,
                "cutoff": float(self.cutoff[g]) if config.mode == "threshold" else None,
            })
        return {
            "kind": "curation",
            "command": "python -m curation select",
            "source": src_uri,
            "mode": config.mode,
            "group": config.group,
            "threshold": config.threshold if config.mode == "threshold" else None,
            "window": {"fixed": config.window, "frac": config.frac, "max": config.max_window,
                       "rule": "fixed" if config.window is not None else "min(max, floor(frac * N)), at least 1"},
            "order": "run_id, then run_index; ties between windows go to the latest",
            "baseline": config.baseline,
            "negative_return_rule": NEGATIVE_RETURN_RULE,
            "filters": {"tasks": list(config.tasks), "sources": list(config.sources),
                        "min_length": config.min_length, "max_episodes_per_task": config.max_episodes_per_task},
            "materialized": config.materialize,
            "episodes_total": int(sum(t for t, _ in self.totals.values())),
            "steps_total": int(sum(s for _, s in self.totals.values())),
            "episodes_kept": int(self.keep.sum()),
            "steps_kept": int(self.lengths[self.keep].sum()),
            "tasks": tasks,
            "groups": groups,
            "parent": parent,
        }


def plan_selection(index: pa.Table, manifest: Manifest, config: SelectConfig, where: str = "SRC") -> Selection:
    """Decide what to keep from SRC's index alone (no I/O); raises CurationError on bad input.

    String columns are turned into small integer codes once (one hash pass each); all the
    rest is numpy over (N,) arrays.
    """
    all_tasks = sorted(manifest.tasks)
    task_all, task_names = _codes(index["task"], "task", where)
    unknown = sorted(set(task_names) - set(all_tasks) - {""})
    if unknown:
        raise CurationError(f"{where}: index has task(s) {unknown[:5]} that dataset.json does not list")
    tasks = _match_tasks(list(manifest.tasks), config.tasks)
    # task code of every row in `tasks` order (-1: not selected)
    selected_code = {t: i for i, t in enumerate(tasks)}
    manifest_code = {t: i for i, t in enumerate(all_tasks)}
    to_selected = np.array([selected_code.get(t, -1) for t in task_names] + [-1], dtype=np.int64)
    task_of = to_selected[task_all]
    source_all, source_names = _codes(index["source"], "source", where)
    returns_all = index["return"].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    lengths_all = index["length"].to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    all_code = np.array([manifest_code.get(t, 0) for t in task_names] + [0], dtype=np.int64)[task_all]
    totals = _task_totals(all_tasks, all_code, lengths_all)
    random_return, random_from = _random_returns(manifest, tasks, task_of, source_all == _find(source_names, "random"),
                                                 returns_all)

    allowed = np.array([name in config.sources for name in source_names] + [False])
    mask = (task_of >= 0) & allowed[source_all]
    if config.min_length:
        mask &= lengths_all >= config.min_length
    rows = np.flatnonzero(mask)
    task_code = task_of[rows]
    _check_empty(tasks, np.bincount(task_code, minlength=len(tasks)), totals, config, where)

    run_all, run_names = _codes(index["run_id"], "run_id", where)
    run_rank = np.empty(len(run_names) + 1, dtype=np.int64)
    run_rank[np.argsort(np.array(run_names, dtype=object), kind="stable")] = np.arange(len(run_names))
    run_code = run_rank[run_all[rows]]
    run_index = index["run_index"].to_numpy(zero_copy_only=False)[rows]
    order = _collection_order(task_code, run_code, run_index)
    if order is not None:
        rows, task_code, run_code = rows[order], task_code[order], run_code[order]
    returns = returns_all[rows]
    lengths = lengths_all[rows]
    runs = sorted(run_names)

    task_counts = np.bincount(task_code, minlength=len(tasks))
    task_window = window_sizes(task_counts, config.window, config.frac, config.max_window)
    _check_widths(task_window, task_counts, [f"task {t!r}" for t in tasks], config)
    task_windows = best_windows(returns, task_counts, task_window)
    if config.group == "task":
        start, count, gtask = group_starts(task_counts), task_counts, np.arange(len(tasks))
        group_run: list[str | None] = [None] * len(tasks)
        windows = task_windows
    else:
        boundary = np.flatnonzero((np.diff(task_code) != 0) | (np.diff(run_code) != 0)) + 1
        start = np.concatenate(([0], boundary)).astype(np.int64)
        count = np.diff(np.concatenate((start, [returns.size])))
        gtask = task_code[start]
        group_run = [runs[int(c)] for c in run_code[start]]
        width = window_sizes(count, config.window, config.frac, config.max_window)
        names = [f"run {r!r} of task {tasks[int(t)]!r}" for r, t in zip(group_run, gtask)]
        _check_widths(width, count, names, config)
        windows = best_windows(returns, count, width)

    group_of = np.repeat(np.arange(count.size), count)
    if config.mode == "window":
        kind = ["window"] * count.size
        baseline = np.full(count.size, np.nan)
        cut = np.full(count.size, np.nan)
        keep = window_mask(count, windows.start, windows.width)
    else:
        group_min = np.minimum.reduceat(returns, start)
        kind, baseline = _baselines(config.baseline, windows.mean, group_min,
                                    [random_return[int(t)] for t in gtask], [tasks[int(t)] for t in gtask])
        cut = cutoffs(windows.mean, baseline, config.threshold)
        keep = returns >= cut[group_of]
    capped = np.zeros_like(keep)
    if config.max_episodes_per_task is not None:
        capped = keep & ~_cap_per_task(keep, returns, task_code, config.max_episodes_per_task)
        keep = keep & ~capped
    if not keep.any():
        raise CurationError(
            f"{where}: the filter keeps no episode (mode={config.mode}, threshold={config.threshold}, "
            f"{returns.size} candidate episodes); lower --threshold or widen --tasks/--sources"
        )
    for code in np.flatnonzero(np.bincount(task_code[keep], minlength=len(tasks)) == 0):
        logger.warning("task %r keeps no episode; it is left out of the output", tasks[code])
    return Selection(
        config=config, tasks=tasks, source_index=index, rows=rows, returns=returns, lengths=lengths, task_code=task_code,
        keep=keep, group_start=start, group_count=count, group_task=gtask, group_run=group_run,
        windows=windows, baseline_kind=kind, baseline=baseline, cutoff=cut, task_expert=task_windows.mean,
        task_window=task_window, random_return=random_return, random_from=random_from, totals=totals,
        capped=capped,
    )


def _match_tasks(names: list[str], globs: tuple[str, ...]) -> list[str]:
    chosen = sorted({n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)})
    if not chosen:
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise CurationError(f"--tasks {' '.join(globs)} matches no task; the dataset has: {shown or 'no tasks'}")
    return chosen


def _codes(column: pa.ChunkedArray, name: str, where: str) -> tuple[np.ndarray, list[str]]:
    """(N,) int64 codes into a list of the distinct values, one hash pass per chunk.

    The last code, len(values), is never produced; callers append a sentinel entry to their
    lookup tables so fancy indexing needs no special case.
    """
    position: dict[str, int] = {}
    pieces = []
    for chunk in column.chunks:
        encoded = chunk if pa.types.is_dictionary(chunk.type) else chunk.dictionary_encode()
        if encoded.null_count:
            raise CurationError(f"{where}: index column {name} has null values")
        local = np.array([position.setdefault(v, len(position)) for v in encoded.dictionary.to_pylist()] + [-1],
                         dtype=np.int64)
        pieces.append(local[encoded.indices.to_numpy(zero_copy_only=False)])
    codes = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    used = np.bincount(codes, minlength=len(position)) > 0  # a dictionary may hold values no row uses
    values = [v if used[i] else "" for i, v in enumerate(position)]
    return codes, values


def _find(names: list[str], value: str) -> int:
    """Code of ``value``, or a code no row has."""
    return names.index(value) if value in names else -2


def _task_totals(all_tasks: list[str], code: np.ndarray, lengths: np.ndarray) -> dict[str, tuple[int, int]]:
    episodes = np.bincount(code, minlength=len(all_tasks))
    steps = np.bincount(code, weights=lengths, minlength=len(all_tasks))
    return {t: (int(episodes[i]), int(steps[i])) for i, t in enumerate(all_tasks)}


def _random_returns(manifest: Manifest, tasks: list[str], task_of: np.ndarray, is_random: np.ndarray,
                    returns: np.ndarray) -> tuple[list[float | None], list[str | None]]:
    """Per task: mean return of source=random episodes, else the manifest's random_return."""
    picked = is_random & (task_of >= 0)
    counts = np.bincount(task_of[picked], minlength=len(tasks))
    sums = np.bincount(task_of[picked], weights=returns[picked], minlength=len(tasks))
    values: list[float | None] = []
    origins: list[str | None] = []
    for code, task in enumerate(tasks):
        if counts[code]:
            values.append(float(sums[code] / counts[code]))
            origins.append("episodes")
        elif manifest.tasks[task].random_return is not None:
            values.append(float(manifest.tasks[task].random_return))
            origins.append("manifest")
        else:
            values.append(None)
            origins.append(None)
    return values, origins


def _check_empty(tasks: list[str], counts: np.ndarray, totals: dict[str, tuple[int, int]],
                 config: SelectConfig, where: str) -> None:
    problems = []
    for task, n in zip(tasks, counts):
        if n:
            continue
        total = totals.get(task, (0, 0))[0]
        if total == 0:
            problems.append(f"task {task!r} has no episodes in {where}")
        else:
            problems.append(f"task {task!r}: none of its {total} episodes has --sources in {list(config.sources)} "
                            f"and --min-length >= {config.min_length}")
    if problems:
        raise CurationError("; ".join(problems) + " (leave such tasks out with --tasks)")


def _collection_order(task_code: np.ndarray, run_code: np.ndarray, run_index: np.ndarray) -> np.ndarray | None:
    """Permutation sorting by task, run_id, run_index (stable), or None if already sorted.

    The three keys are packed into one int64 when they fit (one stable argsort, which is
    fast on an index made of sorted fragments), else np.lexsort.
    """
    if task_code.size < 2:
        return None
    low = int(run_index.min())
    span_index = int(run_index.max()) - low + 1
    span_run = int(run_code.max()) + 1
    if (int(task_code.max()) + 1) * span_run * span_index < 2**62:
        key = (task_code.astype(np.int64) * span_run + run_code) * span_index + (run_index.astype(np.int64) - low)
        if (key[1:] >= key[:-1]).all():
            return None
        return np.argsort(key, kind="stable")
    return np.lexsort((run_index, run_code, task_code))


def _check_widths(widths: np.ndarray, counts: np.ndarray, names: list[str], config: SelectConfig) -> None:
    too_big = np.flatnonzero(widths > counts)
    if too_big.size:
        shown = ", ".join(f"{names[g]} has {counts[g]}" for g in too_big[:3])
        more = f" (and {too_big.size - 3} more)" if too_big.size > 3 else ""
        raise CurationError(f"--window {config.window} is larger than the number of candidate episodes: {shown}{more}; "
                            "use a smaller --window or --window-frac")


def _baselines(rule: str, expert: np.ndarray, group_min: np.ndarray, random: list[float | None],
               names: list[str]) -> tuple[list[str], np.ndarray]:
    kinds: list[str] = []
    values = np.empty(expert.size)
    for g, (e, low, rnd) in enumerate(zip(expert, group_min, random)):
        if rule == "random" and rnd is None:
            raise CurationError(f"--baseline random: task {names[g]!r} has no random return (no source=random "
                                "episodes and no random_return in dataset.json)")
        if rule == "random" or (rule == "auto" and rnd is not None and rnd < e):
            kind, value = "random", float(rnd)
        elif rule == "zero" or (rule == "auto" and e > 0):
            kind, value = "zero", 0.0
        else:
            kind, value = "min", float(low)
        if rule == "zero" and e <= 0:
            logger.warning("task %r: expert return %.4g <= 0 with --baseline zero keeps only R >= %.4g",
                           names[g], e, value)
        kinds.append(kind)
        values[g] = value
    return kinds, values


def _cap_per_task(keep: np.ndarray, returns: np.ndarray, task_code: np.ndarray, cap: int) -> np.ndarray:
    """Of the kept episodes, the ``cap`` highest returns per task (ties: later ones)."""
    kept = np.flatnonzero(keep)
    order = kept[np.lexsort((-kept, -returns[kept], task_code[kept]))]
    tasks = task_code[order]
    first = np.concatenate(([0], np.flatnonzero(np.diff(tasks)) + 1))
    rank = np.arange(order.size) - np.repeat(first, np.diff(np.concatenate((first, [order.size]))))
    chosen = np.zeros_like(keep)
    chosen[order[rank < cap]] = True
    return chosen
