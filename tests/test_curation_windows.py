"""The window arithmetic and the selection rules against brute-force references.

Seeded numpy loops over many random cases (sizes, ties, W = 1, W = N, negative returns)
stand in for property-based tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from curation.select import CurationError, SelectConfig, plan_selection
from curation.windows import TIE_RTOL, best_windows, cutoffs, window_mask, window_sizes
from shards import Manifest, ModalitySpec, TaskSpec, index_table


def brute_best_window(returns: list[float], width: int) -> tuple[int, float]:
    """Latest window whose mean is within the tie tolerance of the best, and its mean."""
    scale = max(abs(r) for r in returns)
    means = [math.fsum(returns[j:j + width]) / width for j in range(len(returns) - width + 1)]
    best = max(means)
    start = max(j for j, m in enumerate(means) if m >= best - TIE_RTOL * scale)
    return start, math.fsum(returns[start:start + width]) / width


def random_returns(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "normal":
        return rng.normal(rng.uniform(-50, 50), rng.uniform(0.1, 20), n)
    if kind == "negative":
        return -rng.exponential(rng.uniform(1, 100), n)
    if kind == "integers":  # many exact ties
        return rng.integers(-2, 3, n).astype(float)
    if kind == "halves":
        return rng.integers(-6, 7, n) / 2.0
    if kind == "constant":
        return np.full(n, float(rng.integers(-3, 4)))
    if kind == "binary":
        return rng.integers(0, 2, n).astype(float)
    raise AssertionError(kind)


KINDS = ("normal", "negative", "integers", "halves", "constant", "binary")


def test_best_windows_match_brute_force_over_many_random_cases():
    rng = np.random.default_rng(1234)
    checked = 0
    for case in range(600):
        n_groups = int(rng.integers(1, 5))
        counts = rng.integers(1, 40, n_groups)
        widths = np.array([rng.choice([1, c, rng.integers(1, c + 1)]) for c in counts])
        groups = [random_returns(rng, int(c), KINDS[(case + g) % len(KINDS)]) for g, c in enumerate(counts)]
        result = best_windows(np.concatenate(groups), counts, widths)
        for g, returns in enumerate(groups):
            start, mean = brute_best_window(returns.tolist(), int(widths[g]))
            assert result.start[g] == start, (case, g, returns, widths[g])
            assert result.mean[g] == pytest.approx(mean, rel=1e-12, abs=1e-12)
            checked += 1
    assert checked > 1000


def test_ties_go_to_the_latest_window_and_integer_means_are_exact():
    returns = np.array([3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 2.0, 2.0])
    w = best_windows(returns, np.array([8]), np.array([2]))
    assert w.start.tolist() == [6]  # [3,1],[1,3],... and [2,2] all have mean 2: the last wins
    assert w.mean.tolist() == [2.0]
    w = best_windows(np.zeros(5), np.array([5]), np.array([3]))
    assert w.start.tolist() == [2]


def test_w_equal_n_and_w_one():
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        returns = rng.normal(-5, 3, n)
        whole = best_windows(returns, np.array([n]), np.array([n]))
        assert whole.start[0] == 0 and whole.mean[0] == pytest.approx(returns.mean())
        one = best_windows(returns, np.array([n]), np.array([1]))
        assert one.mean[0] == returns.max()
        assert one.start[0] == np.flatnonzero(returns == returns.max())[-1]


def test_large_offsets_do_not_break_ties_by_rounding():
    # Windows of the same integers differ only through cumulative-sum rounding.
    base = np.tile([1e9 + 1, 1e9 - 1], 5000)
    w = best_windows(base, np.array([base.size]), np.array([2]))
    assert w.start[0] == base.size - 2
    assert w.mean[0] == 1e9


def test_window_mask_marks_exactly_the_windows():
    counts, start, widths = np.array([5, 3, 4]), np.array([1, 0, 3]), np.array([3, 3, 1])
    mask = window_mask(counts, start, widths)
    assert mask.tolist() == [False, True, True, True, False, True, True, True, False, False, False, True]


def test_window_sizes_follow_gato_formula():
    counts = np.array([1, 5, 9, 10, 30, 99, 10_000, 20_000])
    assert window_sizes(counts).tolist() == [1, 1, 1, 1, 3, 9, 1000, 1000]
    assert window_sizes(counts, frac=0.5, max_window=4).tolist() == [1, 2, 4, 4, 4, 4, 4, 4]
    assert window_sizes(counts, window=7).tolist() == [7] * 8
    for n in range(1, 2000):  # floor(0.1 N) without float surprises
        assert window_sizes(np.array([n]))[0] == max(1, min(1000, n // 10))


def test_cutoffs():
    assert cutoffs(np.array([10.0]), np.array([0.0]), 0.8).tolist() == [8.0]
    assert cutoffs(np.array([-10.0]), np.array([-50.0]), 0.5).tolist() == [-30.0]


# --- the whole plan against a brute-force reading of the rules -------------------------------

def spec(random_return=None) -> TaskSpec:
    return TaskSpec(domain="synth", env_id="x-v0", observation={"obs_continuous": ModalitySpec([2], "float32")},
                    action={"act_discrete": ModalitySpec([1], "int32", n=3)}, random_return=random_return)


def random_index(rng: np.random.Generator, n_tasks: int):
    """An in-memory index with several runs per task, rows in a scrambled order."""
    rows, tasks = [], {}
    for t in range(n_tasks):
        task = f"synth/t{t}"
        manifest_random = float(rng.normal(-20, 5)) if rng.random() < 0.3 else None
        tasks[task] = spec(manifest_random)
        kind = KINDS[int(rng.integers(len(KINDS)))]
        runs = [(f"train-{k}", "training") for k in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.5:
            runs.append(("random-0", "random"))
        if rng.random() < 0.5:
            runs.append(("rollout-0", "rollout"))
        for run_id, source in runs:
            n = int(rng.integers(3, 25))
            returns = random_returns(rng, n, kind) - (30 if source == "random" else 0)
            for i, ret in enumerate(returns):
                rows.append({"episode_id": len(rows) + 1, "task": task, "domain": "synth", "run_id": run_id,
                             "run_index": i * 3, "source": source, "policy_steps": i, "seed": i,
                             "return": float(ret), "length": int(rng.integers(1, 9)), "success": None,
                             "file": f"data/{task}/part.parquet", "row_offset": 0})
    order = rng.permutation(len(rows))
    return index_table([rows[i] for i in order]), Manifest(name="t", tasks=tasks), rows


def brute_plan(rows, manifest, config: SelectConfig) -> set[int]:
    """The rules of curation/select.py, spelled out row by row."""
    kept: set[int] = set()
    for task, spec_ in manifest.tasks.items():
        randoms = [r["return"] for r in rows if r["task"] == task and r["source"] == "random"]
        random = math.fsum(randoms) / len(randoms) if randoms else spec_.random_return
        mine = sorted((r for r in rows if r["task"] == task and r["source"] in config.sources
                       and r["length"] >= config.min_length), key=lambda r: (r["run_id"], r["run_index"]))
        groups = {}
        for r in mine:
            groups.setdefault(r["run_id"] if config.group == "run" else "", []).append(r)
        for group in groups.values():
            returns = [r["return"] for r in group]
            width = config.window or max(1, min(config.max_window, int(config.frac * len(returns) + 1e-9)))
            start, expert = brute_best_window(returns, width)
            if config.mode == "window":
                kept |= {r["episode_id"] for r in group[start:start + width]}
                continue
            if config.baseline == "random" or (config.baseline == "auto" and random is not None and random < expert):
                base = random
            elif config.baseline == "zero" or (config.baseline == "auto" and expert > 0):
                base = 0.0
            else:
                base = min(returns)
            cut = base + config.threshold * (expert - base)
            kept |= {r["episode_id"] for r in group if r["return"] >= cut}
    return kept


@pytest.mark.parametrize("mode", ["threshold", "window"])
@pytest.mark.parametrize("group", ["task", "run"])
def test_plan_matches_brute_force(mode, group):
    rng = np.random.default_rng({"threshold": 1, "window": 2}[mode] * 10 + {"task": 0, "run": 1}[group])
    checked, kinds = 0, set()
    for case in range(40):
        index, manifest, rows = random_index(rng, int(rng.integers(1, 5)))
        config = SelectConfig(src="src", out="dst", mode=mode, group=group,
                              threshold=float(rng.choice([0.0, 0.5, 0.8, 1.0])),
                              window_frac=float(rng.choice([0.1, 0.3, 1.0])),
                              min_length=int(rng.choice([0, 2])),
                              sources=("training", "rollout") if case % 3 else ("training", "rollout", "random"),
                              baseline=str(rng.choice(["auto", "zero", "min"])))
        try:
            selection = plan_selection(index, manifest, config)
        except CurationError as error:  # a task can lose every episode to --min-length
            assert "none of its" in str(error) or "keeps no episode" in str(error)
            continue
        kinds.update(selection.baseline_kind)
        got = set(selection.index.filter(selection.keep)["episode_id"].to_pylist())
        want = brute_plan(rows, manifest, config)
        if mode == "threshold":
            # Episodes within rounding of the cutoff may go either way; nothing else may.
            by_id = {r["episode_id"]: r["return"] for r in rows}
            near = {e for e in got ^ want if any(abs(by_id[e] - c) < 1e-9 * max(1, abs(c))
                                                 for c in selection.cutoff)}
            assert got ^ want == near, case
        else:
            assert got == want, case
        checked += 1
    assert checked >= 25  # the few cases that raise must not hide the comparison
    if mode == "threshold":  # every branch of the negative-return rule was exercised
        assert kinds == {"random", "zero", "min"}


def test_cap_keeps_highest_returns_per_task():
    rng = np.random.default_rng(5)
    index, manifest, rows = random_index(rng, 3)
    config = SelectConfig(src="s", out="d", threshold=0.0, baseline="min", max_episodes_per_task=4,
                          sources=("training", "rollout", "random"))
    selection = plan_selection(index, manifest, config)
    kept = selection.index.filter(selection.keep).to_pylist()
    for task in manifest.tasks:
        mine = [r for r in rows if r["task"] == task]
        top = sorted(r["return"] for r in mine)[-4:]
        assert sorted(r["return"] for r in kept if r["task"] == task) == top
    assert selection.capped.sum() == sum(max(0, len([r for r in rows if r["task"] == t]) - 4) for t in manifest.tasks)
