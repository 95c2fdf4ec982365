"""Atomic writes, validation of every corruption kind, and clear errors on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from shards import Dataset, ManifestError, ShardError, read_manifest, validate
from shards.storage import Root

CHILD_WRITER = """
import sys, numpy as np
from shards import Episode, StepFileWriter
rng = np.random.default_rng(0)
writer = StepFileWriter(sys.argv[1], "toy/big", "part-0", ["obs_image", "act_discrete"], row_group_bytes=1 << 20)
for i in range(10_000):
    n = 50
    writer.add(Episode(task="toy/big", steps={"obs_image": rng.integers(0, 255, (n, 84, 84, 4), dtype=np.uint8),
               "act_discrete": np.zeros((n, 1), np.int32)}, rewards=np.zeros(n, np.float32),
               terminated=np.zeros(n, bool), truncated=np.zeros(n, bool), run_index=i))
    if i == 3:
        print("writing", flush=True)
writer.close()
"""


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_killed_writer_leaves_no_visible_file(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    deadline = time.time() + 30
    task_dir = tmp_path / "data" / "toy" / "big"
    while time.time() < deadline and not any(p.stat().st_size > 2 << 20 for p in task_dir.glob("*")):
        time.sleep(0.05)  # wait until at least one row group went to the temporary file
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    names = [p.name for p in task_dir.iterdir()]
    assert "part-0.parquet" not in names
    assert names and all(name.startswith(".tmp-") for name in names)  # only the hidden temp file
    assert Root.of(tmp_path).list_files("data", ".parquet") == []


def test_writer_error_leaves_nothing(tmp_path):
    from shards import Episode, StepFileWriter

    with pytest.raises(RuntimeError, match="boom"):
        with StepFileWriter(tmp_path, "toy/x", "part-0", ["act_discrete"]) as writer:
            writer.add(Episode(task="toy/x", steps={"act_discrete": np.zeros((3, 1), np.int32)},
                               rewards=np.zeros(3), terminated=np.zeros(3, bool), truncated=np.zeros(3, bool)))
            raise RuntimeError("boom")
    assert list((tmp_path / "data" / "toy" / "x").iterdir()) == []


# --- validate: one test per corruption kind -------------------------------------------------

def first_step_file(root: Path) -> Path:
    return sorted((root / "data").rglob("*.parquet"))[0]


def rewrite_step_file(path: Path, change) -> None:
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def rewrite_index(root: Path, change) -> None:
    path = root / "episodes.parquet"
    pq.write_table(change(pq.read_table(path)), path)


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    position = table.column_names.index(name)
    return table.set_column(position, table.field(name), pa.array(values, table.schema.field(name).type))


def corrupt_missing_file(root):
    first_step_file(root).unlink()


def corrupt_truncated_file(root):
    path = first_step_file(root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_index_length(root):
    rewrite_index(root, lambda t: set_column(t, "length", [t["length"][0].as_py() + 1] + t["length"].to_pylist()[1:]))


def corrupt_index_offset(root):
    rewrite_index(root, lambda t: set_column(t, "row_offset", [t["row_offset"][0].as_py() + 1] + t["row_offset"].to_pylist()[1:]))


def corrupt_step_episode_id(root):
    rewrite_step_file(first_step_file(root), lambda t: set_column(t, "episode_id", [7] + t["episode_id"].to_pylist()[1:]))


def corrupt_duplicate_ids(root):
    rewrite_index(root, lambda t: set_column(t, "episode_id", [t["episode_id"][1].as_py()] + t["episode_id"].to_pylist()[1:]))


def corrupt_step_order(root):
    def swap(t):
        steps = t["step"].to_pylist()
        steps[1], steps[2] = steps[2], steps[1]
        return set_column(t, "step", steps)
    rewrite_step_file(first_step_file(root), swap)


def corrupt_dtype(root):
    rewrite_step_file(first_step_file(root), lambda t: t.set_column(
        t.column_names.index("reward"), "reward", t["reward"].cast(pa.float64())))


def corrupt_shape(root):
    def shorten(t):
        column = [v[:-1] for v in t["obs_continuous"].to_pylist()]
        return set_column(t, "obs_continuous", column)
    rewrite_step_file(first_step_file(root), shorten)


def corrupt_nan(root):
    def poison(t):
        column = t["obs_continuous"].to_pylist()
        column[3][0] = float("nan")
        return set_column(t, "obs_continuous", column)
    rewrite_step_file(first_step_file(root), poison)


def corrupt_manifest_field(root):
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    del data["tasks"][next(iter(data["tasks"]))]["env_id"]
    path.write_text(json.dumps(data))


CORRUPTIONS = {
    "missing file": (corrupt_missing_file, "step file not found"),
    "unreadable file": (corrupt_truncated_file, "unreadable Parquet"),
    "index length": (corrupt_index_length, "sum of rewards|rows up to|overlaps|index covers|carry episode_id|steps out of order"),
    "index offset": (corrupt_index_offset, "carry episode_id|rows up to|index covers|overlaps"),
    "step episode id": (corrupt_step_episode_id, "carry episode_id 7"),
    "duplicate ids": (corrupt_duplicate_ids, "duplicate episode_id"),
    "steps out of order": (corrupt_step_order, "steps out of order"),
    "wrong dtype": (corrupt_dtype, "column reward is double, expected float"),
    "wrong shape": (corrupt_shape, r"obs_continuous has rows of size 8, expected 9 \(shape \[9\]\)"),
    "nan": (corrupt_nan, "obs_continuous has NaN or inf"),
    "manifest field": (corrupt_manifest_field, "missing required field 'env_id'"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_validate_catches(kind, synth_root):
    corrupt, expected = CORRUPTIONS[kind]
    assert validate(synth_root) == []
    corrupt(synth_root)
    problems = validate(synth_root)
    assert problems, f"validate missed: {kind}"
    import re
    assert any(re.search(expected, p) for p in problems), problems


def test_validate_cli_exit_codes(synth_root):
    ok = subprocess.run([sys.executable, "-m", "shards", "validate", str(synth_root)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    corrupt_nan(synth_root)
    corrupt_duplicate_ids(synth_root)
    bad = subprocess.run([sys.executable, "-m", "shards", "validate", str(synth_root), "--json"], capture_output=True, text=True)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and len(report["rows"]) >= 2


# --- one-line errors on bad input; nothing written is changed --------------------------------

def test_truncated_step_file_error_names_file(synth_root):
    before = tree_digest(synth_root)
    path = first_step_file(synth_root)
    path.write_bytes(path.read_bytes()[:100])
    dataset = Dataset(synth_root)
    task = dataset.index.filter(pc.equal(dataset.index["file"], str(path.relative_to(synth_root))))["task"][0].as_py()
    with pytest.raises(ShardError) as error:
        list(dataset.iter_episodes(tasks=[task]))
    message = str(error.value)
    assert str(path) in message and "unreadable Parquet" in message and "\n" not in message
    after = tree_digest(synth_root)
    assert {k: v for k, v in after.items() if k != str(path.relative_to(synth_root))} == \
        {k: v for k, v in before.items() if k != str(path.relative_to(synth_root))}


def test_manifest_missing_field_error(synth_root):
    corrupt_manifest_field(synth_root)
    with pytest.raises(ManifestError, match=r"dataset.json: tasks\.\S+ missing required field 'env_id'"):
        read_manifest(synth_root)


def test_index_pointing_at_missing_file(synth_root):
    corrupt_missing_file(synth_root)
    dataset = Dataset(synth_root)
    with pytest.raises(ShardError, match="step file not found"):
        list(dataset.iter_episodes())


def test_not_a_dataset(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path)
    with pytest.raises(ShardError, match="episodes.parquet: not found"):
        Dataset(tmp_path).index
    problems = validate(tmp_path)
    assert any("dataset.json: not found" in p for p in problems)
