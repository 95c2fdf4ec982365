"""Training through SB3 and sample-factory: in-order training episodes written as shards,
checkpoints with provenance that reload (locally, from a hub cache offline) and reproduce."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from experts import ExpertError, load_expert, rollout
from experts.train import train
from shards import Dataset, validate

TASK = "babyai/GoToRedBall"


def _train(tmp_path_factory, trainer: str):
    out = tmp_path_factory.mktemp(trainer)
    episodes = []
    checkpoint = train(TASK, budget="smoke", out_dir=out, seed=3, on_episode=episodes.append, trainer=trainer,
                       steps=512, eval_episodes=2, eval_seed=40)
    return out, checkpoint, episodes


@pytest.fixture(scope="module")
def sb3_run(tmp_path_factory):
    return _train(tmp_path_factory, "sb3")


@pytest.fixture(scope="module")
def sf_run(tmp_path_factory):
    pytest.importorskip("sample_factory")
    return _train(tmp_path_factory, "sample-factory")


def _check_training_episodes(out, episodes):
    assert len(episodes) >= 8
    assert [e.run_index for e in episodes] == list(range(len(episodes)))
    assert all(e.source == "training" and e.seed == 3 for e in episodes)
    assert min(e.policy_steps for e in episodes) == 0
    assert max(e.policy_steps + e.length for e in episodes) <= 512 + 512
    dataset = Dataset(out / "episodes")
    assert validate(out / "episodes") == []
    index = dataset.index.to_pandas() if hasattr(dataset.index, "to_pandas") else dataset.index
    assert list(index["run_index"]) == list(range(len(episodes)))
    assert np.allclose(list(index["return"]), [e.episode_return for e in episodes])
    first = next(dataset.iter_episodes())
    assert np.array_equal(first.steps["obs_discrete"], episodes[0].steps["obs_discrete"])
    assert first.steps["obs_text"] == episodes[0].steps["obs_text"]
    curve = (out / "curve.csv").read_text().splitlines()
    assert len(curve) == len(episodes) + 1


def test_sb3_records_training_episodes_in_order(sb3_run):
    out, checkpoint, episodes = sb3_run
    assert checkpoint.name == "model.zip"
    _check_training_episodes(out, episodes)
    provenance = json.loads((out / "model.json").read_text())
    assert provenance["algorithm"] == "ppo" and provenance["trainer"] == "sb3"
    assert provenance["budget"] == "smoke" and provenance["seed"] == 3 and provenance["steps_done"] >= 512
    assert provenance["hyperparams"]["n_steps"] == 64 and "stable-baselines3" in provenance["versions"]


def test_sb3_checkpoint_reproduces_its_evaluation(sb3_run):
    out, checkpoint, _ = sb3_run
    trained = json.loads((out / "model.json").read_text())["final_eval"]
    assert len(trained["returns"]) == 2
    reloaded = rollout(TASK, load_expert(TASK, str(checkpoint.parent)), num_envs=2, episodes=2, seed=trained["seed"])
    assert reloaded.returns == trained["returns"] and reloaded.lengths == trained["lengths"]


def test_sb3_checkpoint_from_hub_cache_offline(sb3_run, tmp_path, monkeypatch):
    _, checkpoint, _ = sb3_run
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--gatoforge--redball-ppo" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(checkpoint, snapshot / "model.zip")
    shutil.copy(checkpoint.with_suffix(".json"), snapshot / "model.json")
    (cache / "models--gatoforge--redball-ppo" / "refs").mkdir()
    (cache / "models--gatoforge--redball-ppo" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub = rollout(TASK, "hf://gatoforge/redball-ppo", num_envs=2, episodes=2, seed=5)
    local = rollout(TASK, str(checkpoint), num_envs=2, episodes=2, seed=5)
    assert hub.returns == local.returns


def test_checkpoint_for_other_spaces_says_which_shapes_differ(sb3_run):
    _, checkpoint, _ = sb3_run
    with pytest.raises(ExpertError, match=r"observation shape mismatch: task has \(5,\), checkpoint expects \(148,\)"):
        load_expert("dmc/cartpole-swingup", str(checkpoint))


@pytest.mark.slow
def test_sample_factory_records_and_reloads(sf_run):
    out, checkpoint, episodes = sf_run
    assert (checkpoint / "config.json").exists() and list(checkpoint.glob("checkpoint_p0/*.pth"))
    _check_training_episodes(out, episodes)
    provenance = json.loads((out / "sample_factory.json").read_text())
    assert provenance["algorithm"] == "appo" and provenance["trainer"] == "sample-factory"
    trained = provenance["final_eval"]
    reloaded = rollout(TASK, str(checkpoint), num_envs=2, episodes=2, seed=trained["seed"])
    assert reloaded.returns == trained["returns"] and reloaded.lengths == trained["lengths"]
    with pytest.raises(ExpertError, match="shapes differ"):
        load_expert("dmc/cartpole-swingup", str(checkpoint))


def test_cli_list_and_evaluate(capsys):
    from experts.__main__ import main

    assert main(["list", "--domain", "procgen", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["rows"]) == 16 and listed["counts"] == {"procgen": 16}
    assert main(["evaluate", "babyai/GoToRedBall", "--expert", "scripted", "--episodes", "4", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["episodes"] == 4 and row["success_rate"] == 1.0 and row["steps_per_second"] > 0
    assert main(["evaluate", "babyai/GoToRedBal", "--episodes", "1"]) == 2
    assert "babyai/GoToRedBall" in capsys.readouterr().err


def test_sb3_resume_continues_steps_and_run_index(sb3_run, tmp_path):
    out, checkpoint, episodes = sb3_run
    before = json.loads((out / "model.json").read_text())
    assert before["next_run_index"] == len(episodes)
    more = []
    resumed = train(TASK, budget="smoke", out_dir=tmp_path / "resumed", seed=3, on_episode=more.append,
                    trainer="sb3", steps=1024, resume_from=checkpoint, eval_episodes=0)
    after = json.loads(resumed.with_suffix(".json").read_text())
    assert after["resumed_from"] == str(checkpoint) and after["steps_done"] >= 1024
    assert [e.run_index for e in more] == list(range(len(episodes), len(episodes) + len(more)))
    assert more and min(e.policy_steps for e in more) >= before["steps_done"]
