"""success_step: the first step that reported success, recorded by collectors, kept by shards,
and used by the loader's ``success_tail`` to skip the idle tail of fixed-horizon episodes."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from experts import rollout
from shards import Episode, ModalitySpec, TaskSpec, Manifest, read_index, validate, write_dataset
from trainer.data import DataConfig, GatoDataset


def test_metaworld_rollout_records_the_step_the_hand_reached_the_goal():
    episodes: list[Episode] = []
    rollout("metaworld/reach-v3", "scripted", num_envs=1, episodes=1, seed=3, on_episode=episodes.append)
    (episode,) = episodes
    step = episode.success_step
    assert episode.success and step is not None and 0 < step < 150 < episode.length
    obs = episode.steps["obs_continuous"]
    # hand to goal in the observation (Meta-World measures success from the gripper's centre,
    # a little below the hand, so success is reported some steps after this falls under 5 cm)
    distance = np.linalg.norm(obs[:, 0:3] - obs[:, 36:39], axis=1)
    assert distance[0] > 0.1 and distance[step + 1] <= 0.05


def test_babyai_success_is_the_last_step():
    episodes: list[Episode] = []
    rollout("babyai/GoToRedBall", "scripted", num_envs=2, episodes=4, seed=0, on_episode=episodes.append)
    assert [e.success_step for e in episodes] == [e.length - 1 for e in episodes]


def state_episode(index: int, length: int, success_step: int | None) -> Episode:
    obs = np.arange(length * 2, dtype=np.float32).reshape(length, 2) / (2 * length)
    return Episode(task="toy/arm", steps={"obs_continuous": obs, "act_continuous": np.zeros((length, 1), np.float32)},
                   rewards=np.ones(length, np.float32), terminated=np.zeros(length, bool),
                   truncated=np.eye(1, length, length - 1, dtype=bool)[0], run_index=index, source="scripted",
                   success=success_step is not None, success_step=success_step)


MANIFEST = Manifest(name="toy", tasks={"toy/arm": TaskSpec(
    domain="toy", env_id="toy-v0", observation={"obs_continuous": ModalitySpec([2], "float32")},
    action={"act_continuous": ModalitySpec([1], "float32", low=-1, high=1)})})


@pytest.fixture()
def arm(tmp_path):
    """12 episodes of 200 steps; even ones succeed at step 20 + index, odd ones never."""
    root = tmp_path / "arm"
    write_dataset(root, [state_episode(i, 200, 20 + i if i % 2 == 0 else None) for i in range(12)], MANIFEST)
    return root


def test_shards_keep_success_step_and_read_old_indexes(arm):
    index = read_index(arm)
    assert index["success_step"].to_pylist() == [20 + i if i % 2 == 0 else None for i in range(12)]
    assert validate(arm) == []
    table = pq.read_table(arm / "episodes.parquet").drop(["success_step"])  # an index written before the column
    pq.write_table(table, arm / "episodes.parquet")
    assert read_index(arm)["success_step"].null_count == 12
    assert validate(arm) == []


def test_validate_names_a_success_step_outside_its_episode(arm):
    table = pq.read_table(arm / "episodes.parquet")
    steps = table["success_step"].to_pylist()
    steps[3] = 250
    pq.write_table(table.set_column(table.schema.get_field_index("success_step"), "success_step",
                                    [steps]), arm / "episodes.parquet")
    (problem,) = validate(arm)
    assert "success_step" in problem and "250" in problem and "length 200" in problem


def test_episode_refuses_a_success_step_past_its_end():
    with pytest.raises(ValueError, match="success_step=5"):
        state_episode(0, 5, 5)


def served_offsets(root, tail: int | None) -> dict[int, int]:
    """Last step served per episode (by run index) over one pass without prompts."""
    dataset = GatoDataset(DataConfig(roots=[str(root)], sequence_length=64, passes=1, provenance=True,
                                     prompt_probability=0.0, success_tail=tail))
    last: dict[int, int] = {}
    ids = dataset.catalog.episode_id.tolist()
    run_index = {eid: i for i, eid in enumerate(read_index(root)["episode_id"].to_pylist())}
    for sample in dataset:
        live = sample["attention_mask"]
        for episode, offset in zip(sample["token_episode"][live].tolist(), sample["token_offset"][live].tolist()):
            key = run_index[ids[episode]]
            last[key] = max(last.get(key, -1), offset // 4)  # token offset: a step is 2 values, |, 1 action
    return last


def test_success_tail_trains_only_up_to_the_tail_after_success(arm):
    whole = served_offsets(arm, None)
    trimmed = served_offsets(arm, 5)
    assert whole == {i: 199 for i in range(12)}
    assert trimmed == {i: (20 + i + 5 if i % 2 == 0 else 199) for i in range(12)}
    with pytest.raises(ValueError, match="success_tail=-1"):
        GatoDataset(DataConfig(roots=[str(arm)], success_tail=-1))


def test_evaluation_prompt_ends_where_the_loaders_end_prompts_end(arm):
    from shards.reader import Dataset
    from trainer.deploy import demonstration_prompt

    dataset = Dataset(arm)
    spec = MANIFEST.tasks["toy/arm"]
    whole, episode_id = demonstration_prompt(dataset, "toy/arm", spec, None, max_tokens=8, where="end")
    trimmed, same_id = demonstration_prompt(dataset, "toy/arm", spec, None, max_tokens=8, where="end", success_tail=5)
    assert same_id == episode_id
    step = dataset.episode(episode_id).success_step
    assert step is not None
    # 2 steps of 4 tokens; the second observation value encodes the step number
    from trainer.tokenizer import encode_continuous
    obs = np.arange(400, dtype=np.float32).reshape(200, 2) / 400
    assert trimmed.tokens[1] == encode_continuous(obs[step + 4, 1:2])[0]
    assert whole.tokens[1] == encode_continuous(obs[198, 1:2])[0]
