"""Each expert kind acting in real envs: random, the BabyAI bot, Meta-World scripted."""

from __future__ import annotations

import numpy as np
import pytest

from experts import ExpertError, get_task, load_expert, rollout
from experts.base import RandomExpert


def test_babyai_bot_solves_gotolocal():
    result = rollout("babyai/GoToLocal", "scripted", num_envs=4, episodes=24, seed=0)
    assert len(result.returns) == 24
    assert result.success_rate == 1.0
    assert result.mean_return > 0.8


def test_babyai_bot_needs_the_env():
    with pytest.raises(ExpertError, match="needs the sync vector env"):
        load_expert("babyai/GoToLocal", "scripted")


def test_metaworld_scripted_reaches_goal():
    result = rollout("metaworld/reach-v3", "scripted", num_envs=1, episodes=1, seed=0)
    assert result.lengths == [500]
    assert result.successes == [True]


def test_random_expert_batches_and_respects_bounds():
    entry = get_task("dmc/cartpole-swingup")
    expert = load_expert("dmc/cartpole-swingup", "random", seed=1)
    assert isinstance(expert, RandomExpert)
    actions = expert.act(np.zeros((5, 5), np.float32))
    assert actions.shape == (5, 1) and actions.min() >= -1 and actions.max() <= 1
    assert len(set(actions.ravel().tolist())) == 5
    discrete = load_expert("procgen/coinrun", "random").act(np.zeros((7, 64, 64, 3), np.uint8))
    assert discrete.shape == (7,) and discrete.max() < 15
    assert entry.task_spec().action["act_continuous"].shape == [1]


def test_random_rollout_is_reproducible_for_a_seed():
    a = rollout("babyai/GoToRedBall", "random", num_envs=2, episodes=6, seed=11)
    b = rollout("babyai/GoToRedBall", "random", num_envs=2, episodes=6, seed=11)
    c = rollout("babyai/GoToRedBall", "random", num_envs=2, episodes=6, seed=12)
    assert a.returns == b.returns and a.lengths == b.lengths
    assert a.lengths != c.lengths or a.returns != c.returns


def test_no_scripted_expert_for_atari():
    with pytest.raises(ExpertError, match="no scripted expert for domain 'atari'"):
        load_expert("atari/pong", "scripted")


def test_bad_spec_is_explained(tmp_path):
    with pytest.raises(ExpertError, match="not 'random', 'scripted', an hf://org/repo id, or an existing path"):
        load_expert("babyai/GoToLocal", str(tmp_path / "missing.zip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExpertError, match="expected one SB3 .zip or a sample-factory dir"):
        load_expert("babyai/GoToLocal", str(tmp_path / "empty"))
    with pytest.raises(ExpertError, match="hf://org/repo"):
        load_expert("babyai/GoToLocal", "hf://just-a-name")


def test_action_noise_perturbs_the_executed_actions_and_records_the_experts_own():
    """DART rollouts: the states drift away from the clean run's, yet every recorded action is what
    the scripted policy says for the recorded observation."""
    from experts.base import load_expert

    def run(noise):
        episodes = []
        rollout("metaworld/reach-v3", "scripted", num_envs=1, episodes=1, seed=4, on_episode=episodes.append,
                action_noise=noise)
        return episodes[0]

    clean, noisy = run(None), run(0.3)
    obs_clean, obs_noisy = clean.steps["obs_continuous"], noisy.steps["obs_continuous"]
    np.testing.assert_allclose(obs_clean[0], obs_noisy[0])  # same seed, same start and goal
    assert np.abs(obs_clean[1:50, :3] - obs_noisy[1:50, :3]).max() > 1e-3  # the hand went elsewhere
    expert = load_expert("metaworld/reach-v3", "scripted", seed=4)
    expert.reset([0])
    relabelled = np.concatenate([expert.act(o[None].astype(np.float64)) for o in obs_noisy[:100]])
    np.testing.assert_allclose(noisy.steps["act_continuous"][:100], relabelled, atol=1e-3)
    with pytest.raises(ValueError, match="for discrete actions it is a probability"):
        rollout("babyai/GoToLocal", "scripted", num_envs=1, episodes=1, seed=0, action_noise=1.5)


def test_babyai_bot_replans_from_random_actions_it_is_told_about():
    """Discrete DART: 30% of the executed actions are random; the bot, told each one, still
    solves the episodes, in more steps. 160 episodes include random toggles that open boxes,
    which minigrid's bot refuses to continue from (DisappearedBoxError): a fresh bot takes over."""
    clean = rollout("babyai/GoToLocal", "scripted", num_envs=8, episodes=160, seed=3)
    noisy = rollout("babyai/GoToLocal", "scripted", num_envs=8, episodes=160, seed=3, action_noise=0.3)
    assert clean.success_rate == 1.0 and noisy.success_rate >= 0.95
    assert np.mean(noisy.lengths) > np.mean(clean.lengths) + 1
