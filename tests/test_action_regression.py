"""The regression head for continuous actions (JAT's action head, ``model.action_regression``):
trained on real pendulum episodes it learns the torques that made them; an agent acting on its
values feeds back the bin its value falls in, acts the same batched as one episode at a time,
and the decoding is refused on a model without the head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shards import Dataset
from test_evaluate_deploy import assert_batching_matches_one_at_a_time, pendulum_checkpoint, pendulum_dataset
from trainer.deploy import GatoAgent, _value_bin, load_agent_model
from trainer.tokenizer import CONTINUOUS_OFFSET, StepLayout, bin_centres, tokenize_steps
from trainer.train import parse_config, train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_value_head_learns_the_demonstrated_torques(tmp_path):
    """200 real steps on pendulum controller episodes: the value head, read where each torque is
    predicted (the training path, teacher-forced), explains most of the torques' variance."""
    pendulum_dataset(tmp_path / "data", episodes=16)
    train(parse_config(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--config",
                        str(REPO / "trainer/configs/gato-tiny.yaml"), "--loader.sequence-length", "64",
                        "--loader.vector-observations", "--model.action-regression", "10", "--batch-size", "8",
                        "--steps", "200", "--warmup-steps", "20", "--lr", "3e-3", "--no-progress", "--threads", "2",
                        "--num-workers", "0"]))
    model, info = load_agent_model(tmp_path / "run")
    assert model.value_head is not None and model.config.action_regression == 10
    dataset = Dataset(tmp_path / "data")
    spec = dataset.manifest.tasks["gym/pendulum"]
    predicted, true = [], []
    for episode_id in dataset.index.to_pydict()["episode_id"]:
        run = tokenize_steps(dataset.episode(episode_id).steps, spec, None, actions=True,
                             layout=StepLayout.of(spec, True))
        tokens = torch.from_numpy(run.tokens[:63].astype(np.int64))[None]  # 21 steps of 3 tokens
        vectors, codes = (torch.from_numpy(a)[None] for a in run.dense_vectors(0, 63))
        with torch.no_grad():
            h = model.hidden_states(tokens, torch.from_numpy(run.local_positions[:63].astype(np.int64))[None],
                                    torch.zeros_like(tokens, dtype=torch.bool), torch.zeros(0, 4, 16, 16),
                                    torch.zeros(0, 2), torch.zeros(0, 2), vectors=vectors, codes=codes)[0, :-1]
        targets = tokens[0, 1:]
        is_action = (targets >= CONTINUOUS_OFFSET) & (targets < CONTINUOUS_OFFSET + 1024)
        predicted.append(model.continuous_values(h[is_action]))
        true.append(bin_centres(targets[is_action] - CONTINUOUS_OFFSET))
    predicted, true = torch.cat(predicted), torch.cat(true)
    assert len(true) == 16 * 21
    explained = 1 - float(((predicted - true) ** 2).mean() / true.var())
    assert explained > 0.8, explained


def test_regression_acting_puts_the_value_in_its_bin_and_batches_like_single_episodes(tmp_path):
    base = pendulum_checkpoint(tmp_path, "--model.action-regression", "1")
    model, info = load_agent_model(base / "run")
    spec = Dataset(info["data_roots"][0]).manifest.tasks["gym/pendulum"]
    agent = GatoAgent(model, spec, None, context=64, continuous_decoding="regression")
    agent.reset()
    states = []
    original = model.next_token_state
    model.next_token_state = lambda *args, **kw: states.append(original(*args, **kw)) or states[-1]
    agent.act({"obs_continuous": np.asarray([1.0, 0.0, 0.3], np.float32)})
    value = model.continuous_values(states[-1])
    token = int(agent.last_action_tokens[0])
    assert token == CONTINUOUS_OFFSET + int(_value_bin(value)[0])
    # the fed-back token's bin holds the value (clipped to the bins' range)
    assert abs(float(bin_centres(torch.tensor(token - CONTINUOUS_OFFSET))) - float(value.clamp(-1, 1))) <= 1 / 1024 + 1e-6
    assert _value_bin(torch.tensor([-5.0, -1.0, 0.0, 0.999, 1.0, 7.0])).tolist() == [0, 0, 512, 1023, 1023, 1023]
    model.next_token_state = original

    assert_batching_matches_one_at_a_time(base, "regression")


def test_regression_decoding_needs_the_head(tmp_path):
    base = pendulum_checkpoint(tmp_path)
    model, info = load_agent_model(base / "run")
    spec = Dataset(info["data_roots"][0]).manifest.tasks["gym/pendulum"]
    with pytest.raises(ValueError, match="continuous_decoding='regression' needs a model trained with a regression"):
        GatoAgent(model, spec, None, context=64, continuous_decoding="regression")
    GatoAgent(model, spec, None, context=64, continuous_decoding="median")  # the other decodings stay
