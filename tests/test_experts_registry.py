"""The task registry: ids per domain, clear errors, env building and column mapping."""

from __future__ import annotations

import numpy as np
import pytest

from experts import get_task, list_tasks, reference_scores
from shards import Episode


def test_every_domain_has_its_full_suite():
    counts = {d: len(list_tasks(d)) for d in ("atari", "dmc", "metaworld", "babyai", "procgen")}
    assert counts == {"atari": 57, "dmc": 51, "metaworld": 50, "babyai": 96, "procgen": 16}
    assert len(set(list_tasks())) == sum(counts.values())
    for task in ("atari/pong", "dmc/cartpole-swingup", "metaworld/peg-insert-side-v3", "babyai/BossLevel",
                 "procgen/coinrun"):
        assert task in list_tasks()


def test_unknown_task_names_closest_ids():
    with pytest.raises(ValueError, match="babyai/GoToLocal") as info:
        get_task("babyai/GoToLocl")
    assert "unknown task id 'babyai/GoToLocl'" in str(info.value)
    with pytest.raises(ValueError, match="metaworld/reach-v3"):
        get_task("metaworld/reach")
    with pytest.raises(ValueError, match="unknown domain"):
        list_tasks("mujoco")


def test_reference_scores_come_from_jat_where_the_task_exists():
    assert reference_scores("atari/pong")["expert"] == pytest.approx(20.99, abs=0.01)
    assert reference_scores("babyai/GoToLocal")["key"] == "babyai-go-to-local"
    assert reference_scores("metaworld/reach-v3")["key"] == "metaworld-reach"
    assert reference_scores("dmc/cartpole-swingup") == {}
    spec = get_task("atari/breakout").task_spec()
    assert spec.expert_return is not None and spec.random_return is not None


@pytest.mark.parametrize("task", ["babyai/GoToLocal", "dmc/cartpole-balance", "procgen/coinrun", "atari/pong"])
def test_columns_match_the_task_spec(task):
    entry = get_task(task)
    spec = entry.task_spec()
    env = entry.make_env(num_envs=2, seed=3)
    obs, _ = env.reset(seed=3)
    actions = env.action_space.sample()
    columns = {**entry.to_columns(obs), **entry.action_columns(actions)}
    env.close()
    assert set(columns) == set(spec.observation) | set(spec.action)
    for name, mod in {**spec.observation, **spec.action}.items():
        if name == "obs_text":
            assert len(columns[name]) == 2 and all(isinstance(s, str) and s for s in columns[name])
            continue
        assert columns[name].shape == (2, *mod.shape), name
        assert str(columns[name].dtype) == mod.dtype, name


def test_atari_spec_records_preprocessing_and_action_set():
    spec = get_task("atari/pong").task_spec()
    assert spec.env_id == "ALE/Pong-v5"
    assert spec.action["act_discrete"].n == 6
    assert spec.extra["full_action_space"] is False and spec.extra["sticky_action_p"] == 0.25
    assert spec.observation["obs_image"].shape == [84, 84, 4]


def test_vector_env_autoresets_in_the_same_step():
    entry = get_task("babyai/GoToRedBall")
    env = entry.make_env(num_envs=2, seed=0)
    obs, _ = env.reset(seed=0)
    for _ in range(200):
        obs, _, terminated, truncated, infos = env.step(np.array([0, 0]))  # turn left forever: time limit
        done = terminated | truncated
        if done.any():
            break
    assert done.any() and "final_obs" in infos
    i = int(np.flatnonzero(done)[0])
    assert infos["final_obs"][i] is not None
    assert infos["final_info"]["success"][i] == False  # noqa: E712 (numpy bool)
    env.close()


def test_dmc_reset_seed_is_reproducible():
    env = get_task("dmc/walker-walk").make_single_env(0)
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    c, _ = env.reset(seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0


def test_episode_from_columns_is_a_valid_shard_episode():
    entry = get_task("procgen/coinrun")
    env = entry.make_env(num_envs=1, seed=0)
    obs, _ = env.reset(seed=0)
    cols = entry.to_columns(np.repeat(obs, 3, axis=0))
    acts = entry.action_columns(np.array([1, 2, 3]))
    episode = Episode(task="procgen/coinrun", steps={**cols, **acts}, rewards=np.zeros(3, np.float32),
                      terminated=np.array([0, 0, 1], bool), truncated=np.zeros(3, bool))
    assert episode.steps["obs_image"].shape == (3, 64, 64, 3)
    assert episode.steps["act_discrete"].tolist() == [[1], [2], [3]]


def test_babyai_columns_pack_each_cell_into_one_code_and_unpack_to_jat_layout():
    from experts.envs.babyai import CELL_CODES, jat_layout, pack_cells

    entry = get_task("babyai/GoToLocal")
    env = entry.make_env(num_envs=2, seed=5)
    obs, _ = env.reset(seed=5)
    raw = [np.asarray(obs["discrete"])]
    for _ in range(20):
        obs, *_ = env.step(env.action_space.sample())
        raw.append(np.asarray(obs["discrete"]))
    env.close()
    raw = np.concatenate(raw)  # (42, 148): what experts see
    stored = entry.to_columns({"discrete": raw, "mission": ("m",) * len(raw)})["obs_discrete"]
    assert stored.shape == (len(raw), 50) and stored.dtype == np.int32
    assert stored[:, :49].max() < CELL_CODES and stored.min() >= 0
    np.testing.assert_array_equal(stored[:, 49], raw[:, 147])  # the direction, unchanged
    cells = raw[:, :147].reshape(-1, 49, 3)
    np.testing.assert_array_equal(stored[:, :49], cells[..., 0] + 11 * (cells[..., 1] + 6 * cells[..., 2]))
    np.testing.assert_array_equal(jat_layout(stored), raw)  # lossless
    assert len(np.unique(stored[:, :49])) > 3  # walls, floor, objects: not a constant grid
    with pytest.raises(ValueError, match=r"expected \(N, 148\)"):
        pack_cells(raw[:, :100])
