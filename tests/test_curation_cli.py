"""python -m curation select/stats end to end on small real datasets written by shards.

Every test checks that nothing under SRC changed (a hash of every file, before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from curation.__main__ import main
from curation.report import CUTOFF, KEPT, WINDOW, plot_name
from shards import Dataset, read_manifest, validate, write_manifest
from shards.synth import SynthConfig, synth_dataset


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("curation") / "src"
    synth_dataset(root, SynthConfig(tasks=4, episodes=50, seed=3, runs=2, max_length=30))
    return root


@pytest.fixture(autouse=True)
def src_never_changes(src):
    before = tree_hash(src)
    yield
    assert tree_hash(src) == before, "curation changed a file under SRC"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def select_json(capsys, *argv) -> dict:
    code, out, err = run(capsys, "select", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_threshold_view_validates_and_records_lineage(src, tmp_path, capsys):
    dst = tmp_path / "view"
    summary = select_json(capsys, src, "--out", dst)
    assert validate(dst) == []
    manifest = read_manifest(dst)
    lineage = manifest.lineage
    assert lineage["source"] == str(src) and lineage["mode"] == "threshold" and lineage["threshold"] == 0.8
    assert "R_random" in lineage["negative_return_rule"]
    src_index = Dataset(src).index
    index = Dataset(dst).index
    assert index.num_rows == summary["episodes_kept"] == lineage["episodes_kept"]
    assert all(os.path.isabs(f) and f.startswith(str(src)) for f in index["file"].to_pylist())
    for row in summary["rows"]:
        task, record = row["task"], lineage["tasks"][row["task"]]
        randoms = src_index.filter(pc.and_(pc.equal(src_index["task"], task), pc.equal(src_index["source"], "random")))
        assert record["random_return"] == pytest.approx(pc.mean(randoms["return"]).as_py())
        assert record["random_return_from"] == "episodes"
        assert manifest.tasks[task].expert_return == pytest.approx(record["expert_return"])
        assert manifest.tasks[task].random_return == pytest.approx(record["random_return"])
        mine = index.filter(pc.equal(index["task"], task))
        assert mine.num_rows == record["episodes_kept"] == row["kept"]
        assert pc.min(mine["return"]).as_py() >= record["cutoff"]
        assert record["cutoff"] == pytest.approx(
            record["random_return"] + 0.8 * (record["expert_return"] - record["random_return"]))
        assert set(mine["source"].to_pylist()) <= {"training", "rollout"}
    # A view reads the very same steps as SRC.
    episode_id = index["episode_id"][0].as_py()
    ours, theirs = Dataset(dst).episode(episode_id), Dataset(src).episode(episode_id)
    np.testing.assert_array_equal(ours.rewards, theirs.rewards)
    for column in theirs.steps:
        np.testing.assert_array_equal(np.asarray(ours.steps[column]), np.asarray(theirs.steps[column]))


def test_materialize_copies_the_same_episodes(src, tmp_path, capsys):
    view, copy = tmp_path / "view", tmp_path / "copy"
    select_json(capsys, src, "--out", view, "--mode", "window", "--window", "4")
    select_json(capsys, src, "--out", copy, "--mode", "window", "--window", "4", "--materialize")
    assert validate(copy) == []
    v, c = Dataset(view), Dataset(copy)
    assert v.index["episode_id"].to_pylist() == c.index["episode_id"].to_pylist()  # same collection order
    assert all(not f.startswith("/") for f in c.index["file"].to_pylist())
    assert read_manifest(copy).lineage["materialized"] is True
    for ours in c.iter_episodes():
        theirs = v.episode(ours.episode_id)
        np.testing.assert_array_equal(ours.rewards, theirs.rewards)
        for column in theirs.steps:
            np.testing.assert_array_equal(np.asarray(ours.steps[column]), np.asarray(theirs.steps[column]))
    assert len(list(c.iter_episodes())) == 4 * 4
    # The copy stands alone: moving SRC aside would not break it.
    assert validate(shutil.copytree(copy, tmp_path / "moved")) == []


def test_window_mode_keeps_exactly_w_consecutive_episodes(src, tmp_path, capsys):
    dst = tmp_path / "win"
    summary = select_json(capsys, src, "--out", dst, "--mode", "window", "--window", "6")
    assert validate(dst) == []
    assert all(row["kept"] == 6 for row in summary["rows"])
    lineage = read_manifest(dst).lineage
    index = Dataset(src).index
    for task, record in lineage["tasks"].items():
        order = index.filter(pc.and_(pc.equal(index["task"], task), pc.not_equal(index["source"], "random")))
        order = order.sort_by([("run_id", "ascending"), ("run_index", "ascending")])
        ids = order["episode_id"].to_pylist()
        kept = Dataset(dst).index.filter(pc.equal(Dataset(dst).index["task"], task))["episode_id"].to_pylist()
        start = ids.index(kept[0])
        assert ids[start:start + 6] == kept  # one contiguous stretch in collection order
        returns = order["return"].to_numpy()
        assert returns[start:start + 6].mean() == pytest.approx(record["expert_return"])
        best = max(returns[j:j + 6].mean() for j in range(len(returns) - 5))
        assert record["expert_return"] == pytest.approx(best)


def test_group_run_and_filters(src, tmp_path, capsys):
    dst = tmp_path / "runs"
    select_json(capsys, src, "--out", dst, "--mode", "window", "--group", "run", "--window", "2",
                "--tasks", "synth-grid/*", "synth-arm/*", "--sources", "training", "--min-length", "6")
    assert validate(dst) == []
    index = Dataset(dst).index
    assert set(index["task"].to_pylist()) == {"synth-grid/task-1", "synth-arm/task-3"}
    assert set(index["source"].to_pylist()) == {"training"}
    assert pc.min(index["length"]).as_py() >= 6
    per_run = index.group_by(["task", "run_id"]).aggregate([("episode_id", "count")])
    assert per_run["episode_id_count"].to_pylist() == [2] * 4  # 2 tasks x 2 training runs
    groups = read_manifest(dst).lineage["groups"]
    assert sorted((g["task"], g["run_id"]) for g in groups) == sorted(
        zip(per_run["task"].to_pylist(), per_run["run_id"].to_pylist()))


def test_max_episodes_per_task(src, tmp_path, capsys):
    dst = tmp_path / "cap"
    summary = select_json(capsys, src, "--out", dst, "--threshold", "0", "--max-episodes-per-task", "3")
    assert [row["kept"] for row in summary["rows"]] == [3] * 4
    assert validate(dst) == []


def test_report_renders_plots_that_show_the_selection(src, tmp_path, capsys):
    import matplotlib.image as mpimg

    dst = tmp_path / "rep"
    summary = select_json(capsys, src, "--out", dst, "--report")
    html = (dst / "report.html").read_text()
    assert validate(dst) == []
    for row in summary["rows"]:
        png = dst / "report" / plot_name(row["task"])
        assert f"report/{plot_name(row['task'])}" in html and row["task"] in html
        image = mpimg.imread(png)[..., :3]
        assert image.shape[0] > 200 and image.shape[1] > 600

        def pixels(colour: str, tol: float = 0.02) -> int:
            rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
            return int((np.abs(image - rgb).max(axis=-1) < tol).sum())

        assert pixels(KEPT) > 20  # kept points
        assert pixels(CUTOFF) > 20  # the cutoff line
        shade = 1 - 0.18 * (1 - np.array([int(WINDOW[i:i + 2], 16) / 255 for i in (1, 3, 5)]))
        assert int((np.abs(image - shade).max(axis=-1) < 0.02).sum()) > 200  # the shaded window
        assert f"<td>{row['kept']}</td>" in html


def test_stats_table(src, tmp_path, capsys):
    dst = tmp_path / "stats"
    summary = select_json(capsys, src, "--out", dst)
    code, out, _ = run(capsys, "stats", dst, "--json")
    assert code == 0
    rows = {r["task"]: r for r in json.loads(out)["rows"]}
    for row in summary["rows"]:
        stats = rows[row["task"]]
        assert stats["episodes"] == row["kept"] and stats["steps"] == row["kept_steps"]
        assert stats["kept_fraction"] == pytest.approx(row["kept"] / row["episodes"])
        assert stats["expert_return"] == pytest.approx(row["expert_return"])
    code, out, _ = run(capsys, "stats", src, "--json")
    raw = json.loads(out)
    assert sum(r["episodes"] for r in raw["rows"]) == Dataset(src).index.num_rows
    assert all(r["kept_fraction"] is None for r in raw["rows"])
    code, out, _ = run(capsys, "stats", dst)
    assert code == 0 and "kept_fraction" in out


def test_overwrite_is_refused_unless_asked_and_replaces_atomically(src, tmp_path, capsys):
    dst = tmp_path / "out"
    select_json(capsys, src, "--out", dst, "--mode", "window", "--window", "3")
    before = tree_hash(dst)
    code, _, err = run(capsys, "select", src, "--out", dst)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert tree_hash(dst) == before
    select_json(capsys, src, "--out", dst, "--overwrite")
    assert read_manifest(dst).lineage["mode"] == "threshold" and validate(dst) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or trash folders left


def test_a_failed_write_leaves_no_destination(src, tmp_path, capsys, monkeypatch):
    import curation.output

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(curation.output, "write_manifest", broken)
    code, _, err = run(capsys, "select", src, "--out", tmp_path / "new")
    assert code == 2 and "disk full" in err
    assert list(tmp_path.iterdir()) == []


def test_selecting_from_a_view(src, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    select_json(capsys, src, "--out", first, "--threshold", "0.5")
    select_json(capsys, first, "--out", second, "--mode", "window", "--window", "2", "--materialize")
    assert validate(second) == []
    assert read_manifest(second).lineage["parent"]["source"] == str(src)


@pytest.fixture
def with_empty_task(src, tmp_path) -> Path:
    root = Path(shutil.copytree(src, tmp_path / "empty-task"))
    manifest = read_manifest(root)
    spec = next(iter(manifest.tasks.values()))
    manifest.tasks["synth-state/never-collected"] = spec
    write_manifest(root, manifest)
    return root


@pytest.mark.parametrize("case, argv, message", [
    ("not a dataset", ["{tmp}", "--out", "{dst}"], "not found (is"),
    ("window too big", ["{src}", "--out", "{dst}", "--window", "46"], "--window 46 is larger than"),
    ("run window too big", ["{src}", "--out", "{dst}", "--group", "run", "--window", "20"], "run 'rollout-0'"),
    ("keeps nothing", ["{src}", "--out", "{dst}", "--tasks", "synth-arm/*", "--threshold", "3", "--baseline", "zero"],
     "keeps no episode"),
    ("no task matches", ["{src}", "--out", "{dst}", "--tasks", "atari/*"], "matches no task"),
    ("all filtered", ["{src}", "--out", "{dst}", "--min-length", "1000"], "none of its"),
    ("empty task", ["{empty}", "--out", "{dst}"], "'synth-state/never-collected' has no episodes"),
    ("both windows", ["{src}", "--out", "{dst}", "--window", "3", "--window-frac", "0.2"], "exclude each other"),
    ("bad threshold", ["{src}", "--out", "{dst}", "--threshold", "-1"], "--threshold -1.0"),
    ("out inside src", ["{src}", "--out", "{src}/curated"], "is SRC or inside it"),
    ("out is src", ["{src}", "--out", "{src}", "--overwrite"], "is SRC or inside it"),
])
def test_bad_input_is_one_clear_line(src, tmp_path, capsys, with_empty_task, case, argv, message):
    (tmp_path / "not-a-dataset").mkdir()
    values = {"src": src, "dst": tmp_path / "dst", "tmp": tmp_path / "not-a-dataset", "empty": with_empty_task}
    before = tree_hash(with_empty_task)
    code, out, err = run(capsys, "select", *(a.format(**values) for a in argv))
    assert code == 2, case
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "dst").exists() and not (src / "curated").exists()
    assert tree_hash(with_empty_task) == before


def test_select_reads_only_the_index(src, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("dataset.json", "episodes.parquet"):  # no step files at all
        shutil.copy(src / name, bare / name)
    summary = select_json(capsys, bare, "--out", tmp_path / "dst", "--group", "run")
    assert summary["episodes_kept"] > 0
    assert Dataset(tmp_path / "dst").index.num_rows == summary["episodes_kept"]


def test_python_dash_m_smoke(src, tmp_path):
    import subprocess
    import sys

    dst = tmp_path / "smoke"
    done = subprocess.run([sys.executable, "-m", "curation", "select", str(src), "--out", str(dst), "--mode", "window"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert validate(dst) == []
    again = subprocess.run([sys.executable, "-m", "curation", "select", str(src), "--out", str(dst)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: ")
    shards_check = subprocess.run([sys.executable, "-m", "shards", "validate", str(dst)], capture_output=True, text=True)
    assert shards_check.returncode == 0, shards_check.stdout


def test_uri_roots(src, tmp_path, capsys):
    dst = tmp_path / "uri"
    summary = select_json(capsys, f"file://{src}", "--out", f"file://{dst}", "--mode", "window")
    assert validate(dst) == [] and summary["episodes_kept"] == Dataset(dst).index.num_rows
    assert read_manifest(dst).lineage["source"] == f"file://{src}"


def test_dictionary_index_round_trip(src, tmp_path):
    """shards.read_index(dictionary=True) + write_index, the path select takes, keep plain strings on disk."""
    import pyarrow as pa

    from shards import INDEX_SCHEMA, read_index, write_index

    encoded = read_index(src, dictionary=True)
    assert pa.types.is_dictionary(encoded.schema.field("task").type)
    write_index(tmp_path, encoded.take(np.arange(0, encoded.num_rows, 2)))
    back = read_index(tmp_path)
    assert back.schema.equals(INDEX_SCHEMA)
    assert back.to_pylist() == read_index(src).take(np.arange(0, encoded.num_rows, 2)).to_pylist()


def test_overwrite_refuses_to_destroy_the_files_a_view_src_reads(src, tmp_path, capsys):
    base, view = Path(shutil.copytree(src, tmp_path / "base")), tmp_path / "view"
    select_json(capsys, base, "--out", view)
    before = tree_hash(base)
    code, _, err = run(capsys, "select", view, "--out", base, "--overwrite")
    assert code == 2 and "refers to" in err
    assert tree_hash(base) == before and validate(view) == []
