"""Evaluation: a prompted Gato acting in real envs (a gymnasium CartPole, a registry BabyAI level)."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from shards import Dataset, Episode, Manifest, ModalitySpec, TaskSpec, write_dataset
from trainer.deploy import GatoAgent, demonstration_prompt, load_agent_model
from trainer.evaluate import EvalConfig, evaluate, main, normalized_score
from trainer.tokenizer import action_token_ranges
from trainer.train import parse_config, train

REPO = Path(__file__).resolve().parents[1]
CARTPOLE = "gym/cartpole"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CartPoleEnv:
    """A real gymnasium CartPole speaking shard columns (the EvalEnv protocol)."""

    def __init__(self, seed: int) -> None:
        self.env = gym.make("CartPole-v1", max_episode_steps=60)

    def reset(self, seed: int):
        obs, _ = self.env.reset(seed=seed)
        return {"obs_continuous": obs.astype(np.float32)}

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.env.step(int(action["act_discrete"][0]))
        return {"obs_continuous": obs.astype(np.float32)}, float(reward), terminated or truncated, bool(truncated)

    def close(self):
        self.env.close()


def cartpole_env(task: str, seed: int, spec: TaskSpec) -> CartPoleEnv:
    assert task == CARTPOLE
    return CartPoleEnv(seed)


def cartpole_dataset(root: Path, episodes: int = 12) -> None:
    """Episodes of a simple balancing rule (push towards the pole's lean) and of random actions."""
    env = gym.make("CartPole-v1", max_episode_steps=60)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        observations, actions, rewards = [], [], []
        while True:
            action = int(obs[2] + 0.5 * obs[3] > 0) if i % 3 else int(rng.integers(2))
            observations.append(obs.astype(np.float32))
            actions.append([action])
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            if terminated or truncated:
                break
        n = len(rewards)
        rows.append(Episode(task=CARTPOLE, steps={"obs_continuous": np.stack(observations),
                                                  "act_discrete": np.asarray(actions, np.int32)},
                            rewards=np.asarray(rewards, np.float32), terminated=np.eye(n, dtype=bool)[-1] & (n < 60),
                            truncated=np.eye(n, dtype=bool)[-1] & (n >= 60), run_id="rule" if i % 3 else "random",
                            run_index=i, source="scripted" if i % 3 else "random", policy_steps=-1, seed=i,
                            success=n >= 60))
    spec = TaskSpec(domain="gym", env_id="CartPole-v1", observation={"obs_continuous": ModalitySpec([4], "float32")},
                    action={"act_discrete": ModalitySpec([1], "int32", n=2)}, expert_return=60.0, random_return=20.0)
    write_dataset(root, rows, Manifest(name="cartpole", tasks={CARTPOLE: spec}))


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    cartpole_dataset(base / "data")
    config = parse_config(["--data", str(base / "data"), "--out", str(base / "run"), "--config",
                           str(REPO / "trainer/configs/gato-tiny.yaml"), "--loader.sequence-length", "64",
                           "--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--no-progress", "--threads", "1", "--num-workers", "0"])
    train(config)
    return base


def test_normalized_score_synthetic():
    assert normalized_score(60.0, 60.0, 20.0) == pytest.approx(100.0)
    assert normalized_score(20.0, 60.0, 20.0) == pytest.approx(0.0)
    assert normalized_score(40.0, 60.0, 20.0) == pytest.approx(50.0)
    assert normalized_score(-7.5, -5.0, -10.0) == pytest.approx(50.0)  # negative returns
    assert normalized_score(10.0, None, 0.0) is None and normalized_score(1.0, 3.0, 3.0) is None


def test_evaluation_end_to_end_cartpole(cartpole_run, capsys):
    out = cartpole_run / "report"
    rows = evaluate(EvalConfig(checkpoint=str(cartpole_run / "run"), tasks=[CARTPOLE], episodes=3, out=str(out),
                               progress=False), env_factory=cartpole_env)
    (row,) = rows
    assert row["episodes"] == 3 and row["task"] == CARTPOLE
    assert row["mean_return"] == pytest.approx(row["mean_length"])  # CartPole pays 1 per step
    assert row["normalized_score"] == pytest.approx(100 * (row["mean_return"] - 20.0) / 40.0)
    assert row["prompt_tokens"] > 0 and row["prompt_tokens"] <= 16  # 25% of the 64-token context
    for name in ("eval.csv", "eval.md", "eval.json", "eval.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "eval.json").read_text())["rows"][0]["task"] == CARTPOLE
    # the CLI, with the factory named module:function, prints JSON
    assert main(["--checkpoint", str(cartpole_run / "run"), "--episodes", "1", "--env-factory",
                 f"{__name__}:cartpole_env", "--out", str(out), "--json", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"][0]["episodes"] == 1
    assert main(["--checkpoint", str(cartpole_run / "run"), "--tasks", "atari/pong", "--env-factory",
                 f"{__name__}:cartpole_env"]) == 2
    assert "not in the checkpoint's datasets" in capsys.readouterr().err


def test_agent_samples_only_valid_action_tokens_and_prompts_whole_steps(cartpole_run):
    model, info = load_agent_model(cartpole_run / "run")
    dataset = Dataset(info["data_roots"][0])
    spec = dataset.manifest.tasks[CARTPOLE]
    prompt, episode_id = demonstration_prompt(dataset, CARTPOLE, spec, None, max_tokens=20, where="end")
    assert len(prompt) == 18 and prompt.tokens[4] == 33024  # 3 whole timesteps of 4 obs + | + 1 action
    assert dataset.episode(episode_id).success is True
    agent = GatoAgent(model, spec, None, context=64, temperature=1.0, seed=0)
    agent.reset(prompt)
    env = CartPoleEnv(0)
    obs = env.reset(0)
    seen = set()
    for _ in range(40):  # more tokens than the context: the cache rolls
        action = agent.act(obs)
        low, high = action_token_ranges(spec)[0]
        assert low <= agent.last_action_tokens[0] < high
        seen.add(int(action["act_discrete"][0]))
        obs, _, done, _ = env.step(action)
        if done:
            obs = env.reset(1)
    assert len(agent.cache) == 64 and seen <= {0, 1}


def test_registry_env_babyai(tmp_path):
    """The experts registry's BabyAI level, bot demonstrations, a checkpoint, two episodes."""
    from experts.registry import get_task
    from experts.rollout import rollout
    from trainer.text_tokenizer import fit_text_model

    task = "babyai/GoToRedBall"
    episodes = []
    rollout(task, "scripted", num_envs=1, episodes=3, seed=0, on_episode=episodes.append)
    write_dataset(tmp_path / "data", episodes, Manifest(name="babyai", tasks={task: get_task(task).task_spec()}))
    fit_text_model([str(tmp_path / "data")], str(tmp_path / "text.model"))
    train(parse_config(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--config",
                        str(REPO / "trainer/configs/gato-tiny.yaml"), "--loader.text-model", str(tmp_path / "text.model"),
                        "--loader.sequence-length", "256", "--batch-size", "1", "--steps", "1", "--warmup-steps", "0",
                        "--no-progress", "--threads", "1", "--num-workers", "0"]))
    (row,) = evaluate(EvalConfig(checkpoint=str(tmp_path / "run"), tasks=[task], episodes=2, max_steps=20,
                                 prompt_tokens=200, progress=False))
    assert row["episodes"] == 2 and row["success_rate"] is not None and row["mean_length"] <= 20
    assert row["prompt_tokens"] > 0


def test_registry_env_episode_seed_alone_fixes_the_metaworld_goal():
    """Batched evaluation gives each episode its own env: its seed, not the env's reset count,
    must pick the goal (MT1 draws the goal before the reset seeds the env)."""
    from experts.registry import get_task
    from trainer.evaluate import registry_env

    task = "metaworld/reach-v3"
    spec = get_task(task).task_spec()
    used, fresh = registry_env(task, 0, spec), registry_env(task, 0, spec)
    try:
        goals = [tuple(used.reset(seed=s)["obs_continuous"][-3:]) for s in range(4)]
        assert len(set(goals)) == 4  # a goal per episode seed
        again = fresh.reset(seed=2)["obs_continuous"]
        np.testing.assert_array_equal(again, used.reset(seed=2)["obs_continuous"])
        assert tuple(again[-3:]) == goals[2]
    finally:
        used.close()
        fresh.close()


@pytest.mark.slow
def test_ray_parallel_evaluation_matches_in_process(cartpole_run, ray_local):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    config = dict(checkpoint=str(cartpole_run / "run"), tasks=[CARTPOLE], episodes=2, temperature=0.0,
                  out=str(cartpole_run / "ray-report"), progress=False)
    (on_ray,) = evaluate(EvalConfig(**config, ray=True), env_factory=cartpole_env)
    (local,) = evaluate(EvalConfig(**config), env_factory=cartpole_env)
    assert on_ray["mean_return"] == local["mean_return"] and on_ray["episodes"] == 2


def test_image_prompt_and_acting_on_pixels(synth_root):
    from trainer.model import CONFIGS, Gato
    from trainer.tokenizer import IMAGE_PLACEHOLDER

    dataset = Dataset(synth_root)
    task = next(t for t in dataset.tasks if t.startswith("synth-pixels"))
    spec = dataset.manifest.tasks[task]
    prompt, episode_id = demonstration_prompt(dataset, task, spec, None, max_tokens=40, where="start")
    assert len(prompt) == 36 and prompt.is_image.sum() == len(prompt.patches) == 24  # 6 steps of 4 patches | a
    assert (prompt.tokens[prompt.is_image] == IMAGE_PLACEHOLDER).all()
    assert prompt.patches.shape[1:] == (4, 16, 16) and np.abs(prompt.patches).max() <= 0.25
    torch.manual_seed(0)
    agent = GatoAgent(Gato(CONFIGS["gato-tiny"]), spec, None, context=64, seed=0)
    agent.reset(prompt)
    frames = dataset.episode(episode_id).steps["obs_image"]
    actions = [int(agent.act({"obs_image": frame})["act_discrete"][0]) for frame in frames[:20]]
    assert all(0 <= a < spec.action["act_discrete"].n for a in actions) and len(agent.cache) == 64


def test_median_decoding_picks_the_median_bin_and_ignores_thin_far_mass():
    from trainer.deploy import _median

    logits = torch.full((1, 1024), -1e9)
    logits[0, [500, 510, 520]] = torch.log(torch.tensor([0.3, 0.25, 0.45]))
    assert _median(logits)[0] == 510  # cumulative 0.3, 0.55, 1.0: the half is reached at 510
    logits[0, 1023] = np.log(0.02)  # a thin tail on the far bin (decodes to +256) moves the mean, not the median
    assert _median(logits)[0] == 510
    assert list(_median(torch.zeros(2, 8))) == [3, 3]  # uniform over 8: cumulative 0.5 at index 3, per row


def pendulum_dataset(root: Path, episodes: int = 4) -> None:
    """Real Pendulum-v1 episodes with a proportional controller's continuous torques."""
    env = gym.make("Pendulum-v1", max_episode_steps=40)
    rows = []
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        observations, actions, rewards = [], [], []
        for _ in range(40):
            action = np.clip([-2.0 * obs[1] - 0.5 * obs[2]], -2, 2).astype(np.float32)
            observations.append(obs.astype(np.float32))
            actions.append(action)
            obs, reward, *_ = env.step(action)
            rewards.append(reward)
        rows.append(Episode(task="gym/pendulum", steps={"obs_continuous": np.stack(observations),
                                                        "act_continuous": np.stack(actions)},
                            rewards=np.asarray(rewards, np.float32), terminated=np.zeros(40, bool),
                            truncated=np.eye(40, dtype=bool)[-1], run_id="rule", run_index=i, source="scripted",
                            policy_steps=-1, seed=i))
    spec = TaskSpec(domain="gym", env_id="Pendulum-v1", observation={"obs_continuous": ModalitySpec([3], "float32")},
                    action={"act_continuous": ModalitySpec([1], "float32", low=-2, high=2)})
    write_dataset(root, rows, Manifest(name="pendulum", tasks={"gym/pendulum": spec}))


class PendulumEnv:
    """A real gymnasium Pendulum speaking shard columns; every episode lasts 40 steps."""

    def __init__(self) -> None:
        self.env = gym.make("Pendulum-v1", max_episode_steps=40)

    def reset(self, seed: int):
        obs, _ = self.env.reset(seed=seed)
        return {"obs_continuous": obs.astype(np.float32)}

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.env.step(action["act_continuous"].astype(np.float32))
        return {"obs_continuous": obs.astype(np.float32)}, float(reward), terminated or truncated, None

    def close(self):
        self.env.close()


def pendulum_env(task: str, seed: int, spec: TaskSpec) -> PendulumEnv:
    return PendulumEnv()


def pendulum_checkpoint(base: Path, *flags: str) -> Path:
    """Pendulum episodes under ``base``/data and a 2-step gato-tiny checkpoint under ``base``/run."""
    pendulum_dataset(base / "data")
    train(parse_config(["--data", str(base / "data"), "--out", str(base / "run"), "--config",
                        str(REPO / "trainer/configs/gato-tiny.yaml"), "--loader.sequence-length", "64", *flags,
                        "--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--no-progress", "--threads", "1",
                        "--num-workers", "0"]))
    return base


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    return pendulum_checkpoint(tmp_path_factory.mktemp("pendulum"))


def assert_batching_matches_one_at_a_time(base: Path, decoding: str, widths: tuple[int, ...] = (4,),
                                          episodes: int = 4) -> None:
    """Evaluating ``base``/run on pendulum with ``widths`` episodes in lockstep returns what the
    same episodes return one at a time (a deterministic decoding acts the same either way)."""
    def run(width: int) -> dict:
        (row,) = evaluate(EvalConfig(checkpoint=str(base / "run"), tasks=["gym/pendulum"], episodes=episodes,
                                     batch_episodes=width, continuous_decoding=decoding, progress=False,
                                     out=str(base / f"eval-{decoding}-{width}")), env_factory=pendulum_env)
        return row

    one = run(1)
    for width in widths:
        row = run(width)
        assert row["episodes"] == episodes and row["mean_length"] == one["mean_length"] == 40
        assert row["mean_return"] == pytest.approx(one["mean_return"], rel=1e-3)
        assert row["std_return"] == pytest.approx(one["std_return"], rel=1e-2)


def test_batched_evaluation_matches_one_episode_at_a_time(pendulum_run):
    assert_batching_matches_one_at_a_time(pendulum_run, "median", widths=(3, 8), episodes=5)  # groups of 3+2; all 5


def test_act_batch_checks_its_batch_and_act_serves_one_episode(pendulum_run):
    model, info = load_agent_model(pendulum_run / "run")
    spec = Dataset(info["data_roots"][0]).manifest.tasks["gym/pendulum"]
    agent = GatoAgent(model, spec, None, context=64)
    agent.reset(batch=2)
    with pytest.raises(ValueError, match="1 observations for a batch of 2"):
        agent.act_batch([{"obs_continuous": np.zeros(3, np.float32)}])
    with pytest.raises(ValueError, match="act\\(\\) serves one episode"):
        agent.act({"obs_continuous": np.zeros(3, np.float32)})
    agent.reset(batch=2)
    actions = agent.act_batch([{"obs_continuous": np.zeros(3, np.float32)}, {"obs_continuous": np.ones(3, np.float32)}])
    assert len(actions) == 2 and agent.last_action_tokens.shape == (2, 1)


def test_median_decoding_is_deterministic_and_sampling_is_not(pendulum_run):
    model, info = load_agent_model(pendulum_run / "run")
    spec = Dataset(info["data_roots"][0]).manifest.tasks["gym/pendulum"]
    obs = {"obs_continuous": np.asarray([0.6, 0.8, 0.3], np.float32)}

    def tokens(decoding: str, seed: int) -> int:
        agent = GatoAgent(model, spec, None, context=64, seed=seed, continuous_decoding=decoding)
        agent.reset()
        agent.act(obs)
        return int(agent.last_action_tokens[0])

    medians = {tokens("median", seed) for seed in range(6)}
    samples = {tokens("sample", seed) for seed in range(6)}
    assert len(medians) == 1 and 32000 <= medians.pop() < 33024
    assert len(samples) > 1  # a barely trained model's distribution is wide
    with pytest.raises(ValueError, match="continuous_decoding='mode'"):
        GatoAgent(model, spec, None, context=64, continuous_decoding="mode")
