"""EpisodeRecorder: episodes in completion order, step counts, success, raw rewards."""

from __future__ import annotations

import numpy as np

from experts import EpisodeRecorder, get_task, rollout


def _obs(n: int, value: float) -> np.ndarray:
    return np.full((n, 39), value, dtype=np.float64)


def test_recorder_emits_in_completion_order_with_step_counts():
    entry = get_task("metaworld/reach-v3")
    episodes = []
    recorder = EpisodeRecorder(entry, num_envs=2, source="training", run_id="r", seed=7, on_episode=episodes.append)
    no = np.zeros(2, bool)
    # step 0: env 1 succeeds mid-episode (top-level info)
    recorder.add_step(_obs(2, 0), np.zeros((2, 4)), [1, 2], no, no, {"success": np.array([0.0, 1.0]),
                                                                      "_success": np.array([True, True])})
    # step 1: env 1 ends (truncated); its step info is in final_info, the reset info at top level
    recorder.add_step(_obs(2, 1), np.ones((2, 4)), [1, 5], no, np.array([False, True]),
                      {"final_info": {"success": np.array([0.0, 0.0]), "_success": np.array([False, True])},
                       "_final_info": np.array([False, True])})
    # step 2: env 0 ends (terminated) with a clipped reward whose raw value is in the info
    recorder.add_step(_obs(2, 2), np.ones((2, 4)), [1, 1], np.array([True, False]), no,
                      {"final_info": {"raw_reward": np.array([9.0, 0.0]), "_raw_reward": np.array([True, False])},
                       "_final_info": np.array([True, False])})
    assert [e.run_index for e in episodes] == [0, 1]
    first, second = episodes
    assert first.length == 2 and first.episode_return == 7.0 and first.success is True  # success at any step
    assert first.truncated.tolist() == [False, True] and first.policy_steps == 0
    assert second.length == 3 and second.episode_return == 11.0 and second.success is False
    assert second.terminated.tolist() == [False, False, True]
    assert second.steps["obs_continuous"][:, 0].tolist() == [0.0, 1.0, 2.0]
    assert second.source == "training" and second.seed == 7 and second.run_id == "r"
    # env 1's next episode began after 2 vector steps of 2 envs
    recorder.add_step(_obs(2, 3), np.ones((2, 4)), [0, 0], np.array([False, True]), no, {})
    assert episodes[-1].policy_steps == 4 and episodes[-1].run_index == 2


def test_recorder_accepts_sb3_style_info_lists():
    entry = get_task("babyai/GoToRedBall")
    recorder = EpisodeRecorder(entry, num_envs=2, source="training", run_id="r", seed=0)
    obs = {"discrete": np.zeros((2, 148), np.int64), "mission": ("go to the red ball", "go to the red ball")}
    done = recorder.add_step(obs, np.array([1, 2]), [0.0, 0.9], np.array([False, True]), np.zeros(2, bool),
                             [{}, {"success": True}])
    assert len(done) == 1 and done[0].success is True
    assert done[0].steps["obs_text"] == ["go to the red ball"]
    assert done[0].steps["act_discrete"].tolist() == [[2]]


def test_rollout_splits_episodes_evenly_and_orders_them():
    seen = []
    result = rollout("babyai/GoToLocal", "scripted", num_envs=3, episodes=7, seed=2, on_episode=seen.append)
    assert [e.run_index for e in seen] == list(range(7))
    assert len(result.returns) == 7 and result.env_steps > 0
    starts = [e.policy_steps for e in seen]
    assert min(starts) == 0 and all(s % 3 == 0 for s in starts)
    assert all(e.source == "scripted" for e in seen)
