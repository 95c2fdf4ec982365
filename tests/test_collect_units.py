"""One unit at a time, in-process: the writer thread, episode cuts, an object-store root."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from collectors.merge import merge, read_committed
from collectors.spec import parse_spec
from collectors.units import plan_units
from collectors.worker import read_fragment, run_unit
from collectors.writer_thread import BackgroundWriter
from shards import Dataset, Episode, Root, validate


def _episode(i: int, length: int) -> Episode:
    return Episode(task="babyai/GoToLocal", steps={"act_discrete": np.full((length, 1), i, dtype=np.int32)},
                   rewards=np.ones(length, dtype=np.float32), terminated=np.eye(1, length, length - 1, dtype=bool)[0],
                   truncated=np.zeros(length, dtype=bool), run_id="t", run_index=i, source="random")


def test_background_writer_keeps_order_and_abort_leaves_nothing(tmp_path):
    writer = BackgroundWriter(tmp_path, "babyai/GoToLocal", "w-0000", ["act_discrete"], max_queue=2)
    for i in range(50):
        writer.put(_episode(i, 1 + i % 7))
    rows = writer.close()
    assert [r["run_index"] for r in rows] == list(range(50))
    assert rows[-1]["row_offset"] == sum(1 + i % 7 for i in range(49))
    assert (tmp_path / "data" / "babyai" / "GoToLocal" / "w-0000.parquet").exists()

    aborted = BackgroundWriter(tmp_path, "babyai/GoToLocal", "w-0001", ["act_discrete"])
    aborted.put(_episode(0, 3))
    aborted.abort()
    assert not list((tmp_path / "data" / "babyai" / "GoToLocal").glob("*w-0001*"))


def test_a_unit_on_an_object_store_root_commits_and_merges():
    """pyarrow's mock:// filesystem takes the object-store code paths (no temp-file renames)."""
    spec = parse_spec({"name": "mock", "root": "mock:///ds", "tasks": [
        {"id": "babyai/GoToRedBall", "expert": {"kind": "scripted"}, "rollout_episodes": 12,
         "random_episodes": 4, "episodes_per_unit": 6, "num_envs": 3}]},
        list_tasks=lambda: ["babyai/GoToRedBall"])
    root = Root.of(spec.root)  # one in-memory filesystem for the whole test
    assert not root.is_local
    units = plan_units(spec)
    summaries = [run_unit(root, unit) for unit in units]
    assert [s["episodes"] for s in summaries] == [6, 6, 4]
    again = run_unit(root, units[0])  # a committed unit is not run twice
    assert again == read_fragment(root, units[0].fragment)[1]
    merge(root, spec, units, read_committed(root, units))
    assert validate(root) == []
    ds = Dataset(root)
    assert len(ds) == 16 and ds.manifest.tasks["babyai/GoToRedBall"].expert["kind"] == "scripted"
    episode = next(iter(ds.iter_episodes()))
    assert episode.steps["obs_discrete"].shape[1] == 50  # 49 packed grid cells, then the direction
    assert root.exists("README.md")


def test_cut_after_success_ends_metaworld_episodes_soon_after_success(tmp_path):
    spec = parse_spec({"name": "cut", "root": str(tmp_path), "tasks": [
        {"id": "metaworld/reach-v3", "expert": {"kind": "scripted"}, "rollout_episodes": 2, "num_envs": 2,
         "cut_after_success": 5}]}, list_tasks=lambda: ["metaworld/reach-v3"])
    (unit,) = plan_units(spec)
    summary = run_unit(str(tmp_path), unit)
    assert summary["episodes"] == 2
    table, _ = read_fragment(Root.of(str(tmp_path)), unit.fragment)
    lengths = table["length"].to_pylist()
    assert all(length < 500 for length in lengths), lengths  # full episodes are 500 steps
    assert table["success"].to_pylist() == [True, True]
    assert table["success_step"].to_pylist() == [length - 1 - 5 for length in lengths]  # the cut's own count
    steps = pq.read_table(tmp_path / table["file"][0].as_py())
    ends = np.cumsum(lengths) - 1
    assert steps["truncated"].to_numpy()[ends].all()  # a cut is a truncation, not a termination
