"""Vector observations (JAT's embedding): a continuous observation is one token carrying its raw
values, from the tokenizer through the loader and the model to an agent acting in a real env."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shards import Dataset, ModalitySpec, TaskSpec
from test_evaluate_deploy import (
    CARTPOLE,
    assert_batching_matches_one_at_a_time,
    cartpole_dataset,
    cartpole_env,
    pendulum_checkpoint,
    pendulum_dataset,
    pendulum_env,
)
from trainer.data import DataConfig, GatoDataset
from trainer.deploy import GatoAgent, demonstration_prompt, load_agent_model
from trainer.evaluate import EvalConfig, evaluate
from trainer.model import Gato, GatoConfig
from trainer.tokenizer import SEPARATOR, VECTOR_OBSERVATION, VECTOR_WIDTH, StepLayout, tokenize_steps
from trainer.train import parse_config, train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARM = TaskSpec(domain="metaworld", env_id="reach-v3", observation={"obs_continuous": ModalitySpec([39], "float32")},
               action={"act_continuous": ModalitySpec([4], "float32", low=-1, high=1)})


def test_a_step_is_one_vector_token_the_separator_and_the_actions():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(5, 39)).astype(np.float32)
    steps = {"obs_continuous": obs, "act_continuous": rng.uniform(-1, 1, (5, 4)).astype(np.float32)}
    gato = tokenize_steps(steps, ARM)
    jat = tokenize_steps(steps, ARM, layout=StepLayout.of(ARM, vector_observations=True))
    assert gato.num_tokens == 5 * 44 and jat.num_tokens == 5 * 6
    rows = jat.tokens.reshape(5, 6)
    assert (rows[:, 0] == VECTOR_OBSERVATION).all() and (rows[:, 1] == SEPARATOR).all()
    assert (rows[:, 2:] == gato.tokens.reshape(5, 44)[:, 40:]).all()  # the same action tokens
    np.testing.assert_array_equal(jat.vectors, obs)  # exact values, no bins
    assert jat.loss_mask.reshape(5, 6)[:, 2:].all() and not jat.loss_mask.reshape(5, 6)[:, :2].any()
    dense, codes = jat.dense_vectors(6, 18)  # steps 1 and 2
    assert dense.shape == codes.shape == (12, VECTOR_WIDTH) and (codes == -1).all()
    np.testing.assert_array_equal(dense[0, :39], obs[1])
    np.testing.assert_array_equal(dense[6, :39], obs[2])
    assert not dense[[1, 2, 3, 4, 5, 7]].any() and not dense[:, 39:].any()


def test_a_grid_is_one_vector_token_carrying_its_cells():
    grid = TaskSpec(domain="babyai", env_id="GoTo", action={"act_discrete": ModalitySpec([1], "int32", n=7)},
                    observation={"obs_discrete": ModalitySpec([50], "int32")})
    rng = np.random.default_rng(1)
    cells = rng.integers(0, 198, (4, 50)).astype(np.int32)
    steps = {"obs_discrete": cells, "act_discrete": rng.integers(0, 7, (4, 1)).astype(np.int32)}
    gato = tokenize_steps(steps, grid)
    jat = tokenize_steps(steps, grid, layout=StepLayout.of(grid, vector_observations=True))
    assert gato.num_tokens - jat.num_tokens == 4 * 49  # 50 cell tokens became one
    first = jat.tokens[:jat.step_offsets[1]]
    assert first[0] == VECTOR_OBSERVATION and first[-2] == SEPARATOR and first[-1] == cells_action(steps)
    np.testing.assert_array_equal(jat.codes, cells)
    values, codes = jat.dense_vectors(0, jat.num_tokens)
    at = np.flatnonzero(jat.tokens == VECTOR_OBSERVATION)
    np.testing.assert_array_equal(codes[at, :50], cells)
    assert (codes[at, 50:] == -1).all() and (np.delete(codes, at, axis=0) == -1).all() and not values.any()
    too_big = dict(steps, obs_discrete=np.full((4, 50), 300, np.int32))
    with pytest.raises(ValueError, match="value 300 is outside \\[0, 256\\)"):
        tokenize_steps(too_big, grid, layout=StepLayout.of(grid, vector_observations=True))


def cells_action(steps: dict) -> int:
    return int(steps["act_discrete"][0, 0])


def test_bad_vector_inputs_name_the_problem():
    wide = TaskSpec(domain="x", env_id="y", observation={"obs_continuous": ModalitySpec([65], "float32")},
                    action={"act_discrete": ModalitySpec([1], "int32", n=2)})
    with pytest.raises(ValueError, match="65 values; a vector observation holds at most 64"):
        StepLayout.of(wide, vector_observations=True)
    bad = np.zeros((3, 39), np.float32)
    bad[1, 7] = np.nan
    with pytest.raises(ValueError, match="obs_continuous: 1 non-finite value"):
        tokenize_steps({"obs_continuous": bad, "act_continuous": np.zeros((3, 4), np.float32)}, ARM,
                       layout=StepLayout.of(ARM, vector_observations=True))


def test_loader_batches_carry_each_steps_values_at_its_vector_token(tmp_path):
    pendulum_dataset(tmp_path / "data")
    dataset = Dataset(tmp_path / "data")
    observations = {tuple(row) for episode_id in dataset.index["episode_id"].to_pylist()
                    for row in dataset.episode(episode_id).steps["obs_continuous"].tolist()}
    config = DataConfig(roots=[str(tmp_path / "data")], sequence_length=64, vector_observations=True, seed=3)
    batch = next(iter(GatoDataset(config, batch_size=4)))
    tokens, vectors = batch["tokens"].numpy(), batch["obs_vectors"].numpy()
    is_vector = tokens == VECTOR_OBSERVATION
    assert is_vector.sum() >= 4 * 64 // 3 - 4  # a pendulum step is 3 tokens: vector, separator, torque
    assert not vectors[~is_vector].any() and not vectors[..., 3:].any() and (batch["obs_codes"].numpy() == -1).all()
    for row in vectors[is_vector]:
        assert tuple(row[:3].tolist()) in observations
    # consecutive steps of an episode carry consecutive observations, not one repeated
    assert len({tuple(row[:3].tolist()) for row in vectors[0][is_vector[0]]}) > 10


def test_the_model_reads_the_values_and_refuses_them_without_the_encoder():
    torch.manual_seed(0)
    model = Gato(GatoConfig(n_layer=1, n_embd=32, n_head=2, ff=64, block_size=64, vector_observations=True)).eval()
    tokens = torch.tensor([[VECTOR_OBSERVATION, SEPARATOR]])
    local = torch.tensor([[0, -1]])
    no_images = (torch.zeros(1, 2, dtype=torch.bool), torch.zeros(0, 4, 16, 16), torch.zeros(0, 2), torch.zeros(0, 2))
    a, b = torch.zeros(1, 2, VECTOR_WIDTH), torch.zeros(1, 2, VECTOR_WIDTH)
    b[0, 0, 0] = 0.01  # one value moved by a centimetre
    ha = model.hidden_states(tokens, local, *no_images, vectors=a)
    hb = model.hidden_states(tokens, local, *no_images, vectors=b)
    assert (ha - hb).abs().max() > 1e-4
    codes = torch.full((1, 2, VECTOR_WIDTH), -1, dtype=torch.int16)
    assert torch.equal(model.hidden_states(tokens, local, *no_images, vectors=a, codes=codes), ha)  # -1: no code
    codes[0, 0, 12] = 5  # a red ball in cell 12 ...
    h12 = model.hidden_states(tokens, local, *no_images, vectors=a, codes=codes)
    codes[0, 0, 12], codes[0, 0, 13] = -1, 5  # ... is not a red ball in cell 13
    h13 = model.hidden_states(tokens, local, *no_images, vectors=a, codes=codes)
    assert (h12 - ha).abs().max() > 1e-4 and (h12 - h13).abs().max() > 1e-4
    plain = Gato(GatoConfig(n_layer=1, n_embd=32, n_head=2, ff=64, block_size=64)).eval()
    with pytest.raises(ValueError, match="built without vector_observations"):
        plain.hidden_states(tokens, local, *no_images, vectors=a)


@pytest.fixture(scope="module")
def pendulum_vector_run(tmp_path_factory):
    return pendulum_checkpoint(tmp_path_factory.mktemp("pendulum-vector"), "--loader.vector-observations")


def test_agent_feeds_the_values_and_batched_acting_matches_one_at_a_time(pendulum_vector_run):
    model, info = load_agent_model(pendulum_vector_run / "run")
    assert model.config.vector_observations
    dataset = Dataset(info["data_roots"][0])
    spec = dataset.manifest.tasks["gym/pendulum"]
    prompt, episode_id = demonstration_prompt(dataset, "gym/pendulum", spec, None, 16, vector_observations=True)
    at = np.flatnonzero(prompt.tokens == VECTOR_OBSERVATION)
    assert len(at) == 5  # 16 tokens hold five 3-token steps
    np.testing.assert_array_equal(prompt.vectors[at, :3], dataset.episode(episode_id).steps["obs_continuous"][-5:])

    assert_batching_matches_one_at_a_time(pendulum_vector_run, "median")
    # the agent's observations reach the model: two different states, two different action distributions
    agent = GatoAgent(model, spec, None, context=64)
    agent.reset()
    agent.act({"obs_continuous": np.asarray([1.0, 0.0, 0.0], np.float32)})
    assert len(agent.pending[0]) == 1  # the last action token waits for the next observation
    fed = []
    agent.model.next_token_state = lambda *args, vectors=None, **kw: fed.append(vectors) or torch.zeros(1, agent.model.config.n_embd)
    agent.act({"obs_continuous": np.asarray([-1.0, 0.5, 8.0], np.float32)})
    # the action token, then the observation's vector token and the separator, with the values
    np.testing.assert_array_equal(fed[0][0, :, :3].numpy(), [[0, 0, 0], [-1.0, 0.5, 8.0], [0, 0, 0]])


def test_babyai_grid_vectors_train_and_act_in_the_real_level(tmp_path):
    """BabyAI-bot episodes with their grids as vector observations: the loader's codes are the
    shards' cells, and the trained model acts in the real level through the registry env."""
    from experts.registry import get_task
    from experts.rollout import rollout
    from shards import Manifest, write_dataset
    from trainer.text_tokenizer import fit_text_model

    task = "babyai/GoToRedBall"
    episodes = []
    rollout(task, "scripted", num_envs=1, episodes=3, seed=0, on_episode=episodes.append)
    write_dataset(tmp_path / "data", episodes, Manifest(name="babyai", tasks={task: get_task(task).task_spec()}))
    fit_text_model([str(tmp_path / "data")], str(tmp_path / "text.model"))
    cells = {tuple(row) for episode in episodes for row in np.asarray(episode.steps["obs_discrete"]).tolist()}
    config = DataConfig(roots=[str(tmp_path / "data")], sequence_length=64, vector_observations=True,
                        text_model=str(tmp_path / "text.model"))
    batch = next(iter(GatoDataset(config, batch_size=2)))
    is_vector = batch["tokens"].numpy() == VECTOR_OBSERVATION
    codes = batch["obs_codes"].numpy()
    width = len(next(iter(cells)))
    assert is_vector.sum() >= 2 * 64 // 12 - 2 and (codes[~is_vector] == -1).all() and (codes[..., width:] == -1).all()
    assert all(tuple(row[:width].tolist()) in cells for row in codes[is_vector])
    train(parse_config(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--config",
                        str(REPO / "trainer/configs/gato-tiny.yaml"), "--loader.text-model", str(tmp_path / "text.model"),
                        "--loader.sequence-length", "64", "--loader.vector-observations", "--batch-size", "2",
                        "--steps", "2", "--warmup-steps", "0", "--no-progress", "--threads", "1", "--num-workers", "0"]))
    (row,) = evaluate(EvalConfig(checkpoint=str(tmp_path / "run"), tasks=[task], episodes=2, max_steps=20,
                                 prompt_tokens=40, progress=False, out=str(tmp_path / "eval")))
    assert row["episodes"] == 2 and row["mean_length"] <= 20 and row["prompt_tokens"] > 0



def test_vector_cartpole_learns_to_balance(tmp_path):
    """A few hundred real steps on vector observations beat the random episodes by a wide margin."""
    cartpole_dataset(tmp_path / "data", episodes=30)
    train(parse_config(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--config",
                        str(REPO / "trainer/configs/gato-tiny.yaml"), "--loader.sequence-length", "64",
                        "--loader.vector-observations", "--batch-size", "8", "--steps", "400", "--warmup-steps", "20",
                        "--lr", "3e-3", "--no-progress", "--threads", "2", "--num-workers", "0"]))
    (row,) = evaluate(EvalConfig(checkpoint=str(tmp_path / "run"), tasks=[CARTPOLE], episodes=20, temperature=0.0,
                                 progress=False, out=str(tmp_path / "eval")), env_factory=cartpole_env)
    random = Dataset(tmp_path / "data").index.to_pydict()
    random_returns = [r for r, s in zip(random["return"], random["source"]) if s == "random"]
    assert row["mean_return"] >= np.mean(random_returns) + 12, (row, np.mean(random_returns))


def test_a_config_file_describes_the_model_its_loader_switch_builds(tmp_path):
    from trainer.model import describe, load_model_config

    plain, vector = tmp_path / "plain.yaml", tmp_path / "vector.yaml"
    plain.write_text("model:\n  preset: gato-tiny\n")
    vector.write_text("model:\n  preset: gato-tiny\nloader:\n  vector_observations: true\n")
    assert not load_model_config(str(plain)).vector_observations
    assert load_model_config(str(vector)).vector_observations
    extra = describe(load_model_config(str(vector)))["params"] - describe(load_model_config(str(plain)))["params"]
    assert extra == (64 * 256 + 1) * 64 + (64 * 17 + 1) * 64 + (64 + 1) * 64  # codes, inp, out of gato-tiny's width


def test_token_observations_keep_a_task_on_tokens_in_training_and_acting(tmp_path):
    """cartpole on a token per value beside pendulum on vectors: the loader, the checkpoint and
    evaluation all tokenize each task the same way."""
    from trainer.catalog import Catalog

    pendulum_dataset(tmp_path / "pendulum")
    cartpole_dataset(tmp_path / "cartpole", episodes=6)
    roots = [str(tmp_path / "pendulum"), str(tmp_path / "cartpole")]
    catalog = Catalog(roots, vector_observations=True, token_observations=(CARTPOLE,))
    assert catalog.layouts[CARTPOLE].min_step_tokens == 4 + 1 + 1  # 4 values, separator, action
    assert catalog.layouts["gym/pendulum"].min_step_tokens == 1 + 1 + 1
    with pytest.raises(ValueError, match="token_observations=\\['gym'\\]: only means something with"):
        DataConfig(roots=roots, token_observations=("gym",)).validate()
    train(parse_config(["--data", *roots, "--out", str(tmp_path / "run"), "--config",
                        str(REPO / "trainer/configs/gato-tiny.yaml"), "--loader.sequence-length", "64",
                        "--loader.vector-observations", "--loader.token-observations", CARTPOLE, "--batch-size", "4",
                        "--steps", "2", "--warmup-steps", "1", "--no-progress", "--threads", "1", "--num-workers", "0"]))
    model, info = load_agent_model(tmp_path / "run")
    assert model.config.vector_observations and info["token_observations"] == (CARTPOLE,)

    def env(task, seed, spec):
        return cartpole_env(task, seed, spec) if task == CARTPOLE else pendulum_env(task, seed, spec)

    rows = evaluate(EvalConfig(checkpoint=str(tmp_path / "run"), tasks=[CARTPOLE, "gym/pendulum"], episodes=2,
                               progress=False, out=str(tmp_path / "eval")), env_factory=env)
    assert [row["episodes"] for row in rows] == [2, 2]
    # a cartpole prompt is whole 6-token steps of bin tokens, a pendulum one whole 3-token vector steps
    assert rows[0]["prompt_tokens"] % 6 == 0 and rows[1]["prompt_tokens"] % 3 == 0
