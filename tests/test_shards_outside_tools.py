"""The files open in other tools with no GatoForge code involved, and the CLI prints them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from shards import Dataset


def test_plain_pyarrow_reads_an_episode(synth_root):
    index = pq.read_table(synth_root / "episodes.parquet")
    row = index.to_pylist()[5]
    steps = pq.read_table(synth_root / row["file"]).slice(row["row_offset"], row["length"])
    assert set(steps["episode_id"].to_pylist()) == {row["episode_id"]}
    assert steps["step"].to_pylist() == list(range(row["length"]))
    assert float(np.sum(steps["reward"].to_numpy(), dtype=np.float64)) == pytest.approx(row["return"], rel=1e-5)


def test_duckdb_joins_index_and_steps(synth_root):
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    rows = con.execute(
        f"""
        SELECT i.task, count(*) AS steps, sum(s.reward) AS total
        FROM read_parquet('{synth_root}/data/**/*.parquet', union_by_name=true) s
        JOIN read_parquet('{synth_root}/episodes.parquet') i USING (episode_id)
        GROUP BY i.task ORDER BY i.task
        """
    ).fetchall()
    index = Dataset(synth_root).index.to_pandas()
    expected = index.groupby("task").agg(steps=("length", "sum"), total=("return", "sum"))
    assert len(rows) == len(expected)
    for task, steps, total in rows:
        assert steps == expected.loc[task, "steps"]
        assert total == pytest.approx(expected.loc[task, "total"], rel=1e-4)


def test_polars_reads_index(synth_root):
    polars = pytest.importorskip("polars")
    frame = polars.read_parquet(synth_root / "episodes.parquet")
    assert frame.height == len(Dataset(synth_root))
    assert frame["length"].sum() == Dataset(synth_root).index["length"].to_numpy().sum()


def test_hf_datasets_loads_step_files(synth_root, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets  # the library, never our datasets/ folder

    assert hasattr(datasets, "load_dataset")
    index = Dataset(synth_root).index
    task = "synth-grid/task-1"
    files = sorted(str(p) for p in (synth_root / "data" / task).glob("*.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=files, split="train",
                                   cache_dir=str(synth_root.parent / "hf-cache"))
    task_rows = index.filter(pc.equal(index["task"], task))
    assert loaded.num_rows == sum(task_rows["length"].to_pylist())
    assert isinstance(loaded[0]["obs_text"], str) and len(loaded[0]["obs_discrete"]) == 12


def test_info_cli_json_matches_index(synth_root):
    result = subprocess.run([sys.executable, "-m", "shards", "info", str(synth_root), "--json"],
                            capture_output=True, text=True, check=True)
    rows = json.loads(result.stdout)["rows"]
    index = Dataset(synth_root).index.to_pandas()
    assert {r["task"] for r in rows} == set(index["task"])
    for row in rows:
        part = index[index["task"] == row["task"]]
        assert row["episodes"] == len(part) and row["steps"] == part["length"].sum()
        assert row["return_max"] == pytest.approx(part["return"].max())
        assert row["bytes"] > 0
    table = subprocess.run([sys.executable, "-m", "shards", "info", str(synth_root)], capture_output=True, text=True)
    assert "synth-pixels/task-2" in table.stdout


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "shards", "info", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not found" in result.stderr


def test_docs_plain_pyarrow_example_writes_a_valid_dataset(tmp_path, monkeypatch):
    """docs/format.md promises its plain-pyarrow example is enough to write a valid dataset."""
    from pathlib import Path

    from shards import validate

    text = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    section = text.split("## Writing a dataset with plain pyarrow", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/format.md", "exec"), {})
    assert validate(tmp_path / "my-dataset") == []
    assert Dataset(tmp_path / "my-dataset").episode(1).length == 3
