"""Real collections on the session's local Ray: resume equality, no-op reruns, orphans, SIGKILL."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import pyarrow.parquet as pq
import pytest

from collectors.collect import BOARD_PREFIX, CollectConfig, collect
from shards import Dataset, validate

# Two BabyAI tasks: bot episodes and random-policy episodes (the random ones are long enough
# for a unit to be killed mid-way). 6 units, 360 episodes.
SPEC = """
name: collect-test
root: unused
seed: 3
tasks:
  - id: babyai/GoToRedBall
    expert: {kind: scripted}
    rollout_episodes: 40
    episodes_per_unit: 20
    num_envs: 4
  - id: babyai/GoToLocal
    expert: {kind: random}
    random_episodes: 320
    episodes_per_unit: 80
    num_envs: 8
"""
UNITS = 6


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "collect-test.yaml"
    path.write_text(textwrap.dedent(SPEC))
    return path


@pytest.fixture(scope="module")
def baseline(ray_local, spec_file, tmp_path_factory):
    """One uninterrupted collection every other run is compared with."""
    root = tmp_path_factory.mktemp("baseline") / "ds"
    result = collect(CollectConfig(spec=str(spec_file), out=str(root), progress=False))
    assert result.complete and result.units_run == UNITS
    return root


def test_uninterrupted_run_is_valid_and_complete(baseline):
    assert validate(baseline) == []
    ds = Dataset(baseline)
    counts = {}
    for row in ds.index.select(["task", "source"]).to_pylist():
        counts[(row["task"], row["source"])] = counts.get((row["task"], row["source"]), 0) + 1
    assert counts == {("babyai/GoToRedBall", "scripted"): 40, ("babyai/GoToLocal", "random"): 320}
    spec = ds.manifest.tasks["babyai/GoToRedBall"]
    assert spec.expert["kind"] == "scripted" and spec.expert_return > 0.5
    assert ds.manifest.tasks["babyai/GoToLocal"].random_return is not None
    assert ds.manifest.extra["collector"]["complete"] is True
    card = (baseline / "README.md").read_text()
    assert "babyai/GoToRedBall" in card and "from shards import Dataset" in card and "load_dataset" in card


def test_interrupted_then_resumed_equals_uninterrupted(ray_local, spec_file, baseline, tmp_path):
    root = tmp_path / "ds"
    partial = collect(CollectConfig(spec=str(spec_file), out=str(root), progress=False, max_units=2))
    assert partial.units_run == 2 and not partial.complete
    assert validate(root) == []  # a partial collection is a valid dataset
    assert Dataset(root).manifest.extra["collector"]["units_committed"] == 2
    # An orphan step file (a killed attempt) and a temp file: ignored, then overwritten.
    orphan = root / "data" / "babyai" / "GoToLocal" / "random-0003.parquet"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half-written garbage")
    (orphan.parent / ".tmp-deadbeef-random-0003.parquet").write_bytes(b"x")
    assert validate(root) == []

    resumed = collect(CollectConfig(spec=str(spec_file), out=str(root), progress=False))
    assert resumed.units_run == UNITS - 2 and resumed.units_skipped == 2 and resumed.complete
    assert validate(root) == []
    assert not (orphan.parent / ".tmp-deadbeef-random-0003.parquet").exists()
    assert_same_episodes(baseline, root)


def test_rerun_is_a_noop(ray_local, spec_file, baseline):
    watched = [baseline / "episodes.parquet", baseline / "dataset.json", baseline / "README.md"]
    before = [p.stat().st_mtime_ns for p in watched]
    result = collect(CollectConfig(spec=str(spec_file), out=str(baseline), progress=False))
    assert result.units_run == 0 and result.units_skipped == UNITS
    assert [p.stat().st_mtime_ns for p in watched] == before


@pytest.mark.slow
def test_sigkilled_worker_is_retried_without_partial_or_duplicate_episodes(ray_local, spec_file, baseline, tmp_path):
    root = tmp_path / "ds"
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.setdefault(
        "result", collect(CollectConfig(spec=str(spec_file), out=str(root), progress=False))))
    runner.start()
    killed = _kill_a_running_unit(ray_local, runner)
    runner.join(timeout=180)
    assert not runner.is_alive()
    result = outcome["result"]
    assert result.complete and not result.units_failed, result
    assert result.retried.get(killed["unit"], 0) >= 2, f"{killed['unit']} was not retried after SIGKILL of pid {killed['pid']}"
    assert validate(root) == []
    assert_same_episodes(baseline, root)


def _kill_a_running_unit(ray, runner: threading.Thread) -> dict:
    """SIGKILL the worker of a random-episode unit once it has reported some episodes."""
    deadline = time.time() + 90
    while time.time() < deadline and runner.is_alive():
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(BOARD_PREFIX + "collect-test")]
        for name in names:
            try:
                snapshot = ray.get(ray.get_actor(name).snapshot.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - an earlier test's board that is gone
                continue
            for unit_id, unit in snapshot.items():
                if "/random-" in unit_id and not unit["done"] and unit.get("episodes", 0) >= 5:
                    os.kill(unit["pid"], signal.SIGKILL)
                    return {"board": name, "unit": unit_id, "pid": unit["pid"]}
        time.sleep(0.05)
    pytest.fail("no running random-episode unit to kill")


def assert_same_episodes(expected_root, actual_root) -> None:
    """Same index rows (ids, seeds, returns, files, offsets) and the same step rows."""
    expected, actual = Dataset(expected_root), Dataset(actual_root)
    assert actual.index.num_rows == expected.index.num_rows
    assert actual.index.equals(expected.index)
    ids = actual.index["episode_id"].to_pylist()
    assert len(set(ids)) == len(ids)
    for file in sorted(set(expected.index["file"].to_pylist())):
        assert pq.read_table(actual_root / file).equals(pq.read_table(expected_root / file)), file
