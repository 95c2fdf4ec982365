"""Round trips through the shard writer and reader, on local paths and file:// URIs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from shards import (
    Dataset,
    Episode,
    Manifest,
    ModalitySpec,
    StepFileWriter,
    TaskSpec,
    index_table,
    validate,
    write_dataset,
    write_index,
    write_manifest,
)
from shards.format import INDEX_SCHEMA

ALL_MODALITIES_TASK = "toy/everything"


def everything_spec() -> TaskSpec:
    return TaskSpec(
        domain="toy", env_id="Toy-v0",
        observation={
            "obs_continuous": ModalitySpec([3], "float32"),
            "obs_discrete": ModalitySpec([5], "int32", n=10),
            "obs_image": ModalitySpec([16, 24, 2], "uint8"),
            "obs_text": ModalitySpec([], "string"),
        },
        action={"act_continuous": ModalitySpec([2], "float32", low=-1, high=1),
                "act_discrete": ModalitySpec([1], "int32", n=4)},
    )


def everything_episode(rng: np.random.Generator, run_index: int, length: int) -> Episode:
    rewards = rng.normal(size=length).astype(np.float32)
    terminated = np.zeros(length, bool)
    terminated[-1] = True
    return Episode(
        task=ALL_MODALITIES_TASK,
        steps={
            "obs_continuous": rng.normal(size=(length, 3)).astype(np.float32),
            "obs_discrete": rng.integers(0, 10, size=(length, 5)).astype(np.int32),
            "obs_image": rng.integers(0, 256, size=(length, 16, 24, 2)).astype(np.uint8),
            "obs_text": [f"mission {run_index} step {t} é✓" for t in range(length)],
            "act_continuous": rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
            "act_discrete": rng.integers(0, 4, size=(length, 1)).astype(np.int32),
        },
        rewards=rewards, terminated=terminated, truncated=np.zeros(length, bool),
        run_id="run-a", run_index=run_index, source="training", policy_steps=100 * run_index,
        seed=1000 + run_index, success=bool(run_index % 2),
    )


def assert_same_episode(a: Episode, b: Episode) -> None:
    assert a.episode_id == b.episode_id and a.task == b.task
    assert (a.run_id, a.run_index, a.source, a.policy_steps, a.seed, a.success) == \
        (b.run_id, b.run_index, b.source, b.policy_steps, b.seed, b.success)
    assert set(a.steps) == set(b.steps)
    for column in a.steps:
        if column == "obs_text":
            assert list(a.steps[column]) == list(b.steps[column])
        else:
            np.testing.assert_array_equal(np.asarray(a.steps[column]), np.asarray(b.steps[column]))
    np.testing.assert_array_equal(a.rewards, b.rewards)
    np.testing.assert_array_equal(a.terminated, b.terminated)
    np.testing.assert_array_equal(a.truncated, b.truncated)


@pytest.mark.parametrize("as_uri", [False, True])
def test_every_modality_round_trips(tmp_path, as_uri):
    rng = np.random.default_rng(0)
    episodes = [everything_episode(rng, i, length) for i, length in enumerate([1, 7, 30, 3])]
    manifest = Manifest(name="toy", tasks={ALL_MODALITIES_TASK: everything_spec()})
    root = f"file://{tmp_path}/ds" if as_uri else tmp_path / "ds"
    write_dataset(root, episodes, manifest)

    dataset = Dataset(root)
    assert len(dataset) == 4
    assert validate(root) == []
    for original in episodes:
        assert_same_episode(original, dataset.episode(original.episode_id))
    streamed = list(dataset.iter_episodes())
    assert [e.episode_id for e in streamed] == [e.episode_id for e in episodes]
    for original, read in zip(episodes, streamed):
        assert_same_episode(original, read)
    row = dataset.index.to_pylist()[2]
    assert row["return"] == pytest.approx(float(episodes[2].rewards.astype(np.float64).sum()))
    assert row["length"] == 30 and row["success"] is False and row["domain"] == "toy"


def test_episodes_span_row_groups_and_stream(tmp_path):
    """Tiny row groups force episodes across group boundaries; reads must still be exact."""
    rng = np.random.default_rng(1)
    manifest = Manifest(name="toy", tasks={ALL_MODALITIES_TASK: everything_spec()})
    episodes = [everything_episode(rng, i, int(rng.integers(1, 40))) for i in range(12)]
    with StepFileWriter(tmp_path, ALL_MODALITIES_TASK, "part-0", everything_spec().modalities,
                        row_group_bytes=4_000) as writer:
        for episode in episodes:
            writer.add(episode)
    write_index(tmp_path, index_table(writer.index_rows))
    write_manifest(tmp_path, manifest)
    groups = pq.ParquetFile(tmp_path / writer.file).metadata.num_row_groups
    assert groups >= 6
    dataset = Dataset(tmp_path)
    for original in reversed(episodes):
        assert_same_episode(original, dataset.episode(original.episode_id))
    assert [e.episode_id for e in dataset.iter_episodes()] == [e.episode_id for e in episodes]
    assert validate(tmp_path) == []


def test_episode_ids_are_stable_and_repr_shows_shapes():
    rng = np.random.default_rng(2)
    a = everything_episode(rng, 3, 5)
    b = everything_episode(rng, 3, 9)
    assert a.episode_id == b.episode_id > 0  # same task, run and index
    assert everything_episode(rng, 4, 5).episode_id != a.episode_id
    text = repr(a)
    assert "obs_image=uint8[5, 16, 24, 2]" in text and "length=5" in text


def test_episode_rejects_bad_input():
    with pytest.raises(ValueError, match="source"):
        Episode(task="t/x", steps={}, rewards=np.zeros(2), terminated=np.zeros(2, bool),
                truncated=np.zeros(2, bool), source="expert")
    with pytest.raises(ValueError, match="obs_continuous.*3 rows"):
        Episode(task="t/x", steps={"obs_continuous": np.zeros((3, 2))}, rewards=np.zeros(2),
                terminated=np.zeros(2, bool), truncated=np.zeros(2, bool))


def test_synth_writes_every_modality_and_validates(synth_root):
    dataset = Dataset(synth_root)
    columns = {c for spec in dataset.manifest.tasks.values() for c in spec.modalities}
    assert columns == {"obs_continuous", "obs_discrete", "obs_image", "obs_text", "act_continuous", "act_discrete"}
    index = dataset.index
    assert index.schema.equals(INDEX_SCHEMA)
    assert set(index["source"].to_pylist()) == {"training", "rollout", "random"}
    assert len(set(index["run_id"].to_pylist())) >= 3
    assert min(index["return"].to_pylist()) < 0 < max(index["return"].to_pylist())
    assert len(set(index["length"].to_pylist())) > 5
    assert validate(synth_root) == []
    manifest = json.loads((synth_root / "dataset.json").read_text())
    assert manifest["format_version"] == 1 and "pyarrow" in manifest["software"]
