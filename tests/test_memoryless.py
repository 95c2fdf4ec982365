"""Memoryless tasks: a timestep of a task whose expert reads only the current observation
(Meta-World's scripted policies) attends to its own tokens and the prompt, never to earlier
timesteps, from the loader's segments through the model's mask to an agent acting on real
pendulum episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shards import Dataset
from test_evaluate_deploy import assert_batching_matches_one_at_a_time, pendulum_checkpoint, pendulum_dataset
from trainer.data import DataConfig, GatoDataset
from trainer.deploy import GatoAgent, demonstration_prompt, load_agent_model
from trainer.model import Gato, GatoConfig, KVCache, segment_mask
from trainer.tokenizer import SEPARATOR, VECTOR_OBSERVATION, VECTOR_WIDTH

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PENDULUM = "gym/pendulum"


def test_loader_numbers_each_timestep_of_a_memoryless_task_and_leaves_prompts_at_zero(tmp_path):
    pendulum_dataset(tmp_path / "data", episodes=6)
    common = dict(roots=[str(tmp_path / "data")], sequence_length=64, vector_observations=True, seed=1,
                  prompt_probability=0.5, provenance=True)
    batch = next(iter(GatoDataset(DataConfig(**common, memoryless=("gym",)), batch_size=8)))
    tokens, segments, prompt = batch["tokens"].numpy(), batch["segments"].numpy(), batch["is_prompt"].numpy()
    assert prompt.any() and not prompt.all()  # some rows start with a prompt
    assert (segments[prompt] == 0).all() and (segments[~prompt] > 0).all()
    for row in range(len(tokens)):
        ids = segments[row][~prompt[row]]
        starts = np.flatnonzero(tokens[row][~prompt[row]] == VECTOR_OBSERVATION)
        # a pendulum step is 3 tokens (vector, separator, torque): one id each, counting up along the row
        assert starts[0] == 0 and len(np.unique(ids)) == len(starts)
        np.testing.assert_array_equal(ids, np.repeat(np.arange(1, len(starts) + 1), 3)[:len(ids)])
    plain = next(iter(GatoDataset(DataConfig(**common), batch_size=8)))
    assert "segments" not in plain  # tasks with history: the batch is as before
    with pytest.raises(ValueError, match="memoryless names \\['metaworld'\\] match no task of the datasets; "
                                         "known domains \\['gym'\\], tasks \\['gym/pendulum'\\]"):
        GatoDataset(DataConfig(**common, memoryless=("gym", "metaworld")))


def test_a_memoryless_timestep_sees_its_own_tokens_and_the_prompt_only():
    torch.manual_seed(0)
    model = Gato(GatoConfig(n_layer=2, n_embd=32, n_head=2, ff=64, block_size=64, vector_observations=True)).eval()
    step = [VECTOR_OBSERVATION, SEPARATOR, 32600]
    tokens = torch.tensor([step * 3])  # a prompt step, then two steps of an episode
    local = torch.tensor([[0, -1, -1] * 3])
    no_images = (torch.zeros(1, 9, dtype=torch.bool), torch.zeros(0, 4, 16, 16), torch.zeros(0, 2), torch.zeros(0, 2))
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2]])
    vectors = torch.zeros(1, 9, VECTOR_WIDTH)
    vectors[0, [0, 3, 6], 0] = torch.tensor([0.1, 0.2, 0.3])

    def states(v, s=segments):
        return model.hidden_states(tokens, local, *no_images, vectors=v, segments=s)

    base = states(vectors)
    earlier = vectors.clone()
    earlier[0, 3, 0] = -0.5  # the first episode step's observation changes ...
    moved = states(earlier)
    assert torch.equal(moved[0, 6:], base[0, 6:])  # ... the second step cannot see it
    assert (moved[0, 3:6] - base[0, 3:6]).abs().max() > 1e-4  # (its own step does)
    prompt = vectors.clone()
    prompt[0, 0, 0] = -0.5  # the prompt is seen by every step
    assert (states(prompt)[0, 6:] - base[0, 6:]).abs().max() > 1e-4
    with_history = states(earlier, None)
    assert (with_history[0, 6:] - states(vectors, None)[0, 6:]).abs().max() > 1e-4  # without segments it can
    assert torch.equal(states(vectors, torch.zeros_like(segments)), states(vectors, None))  # all 0: plain causal
    mask = segment_mask(segments)[0, 0]
    assert mask[7].tolist() == [True, True, True, False, False, False, True, True, False]


def test_a_truncated_cache_forgets_the_tail_and_refuses_after_wrapping():
    cache = KVCache(n_layer=1, max_tokens=8)
    cache.start(5, torch.device("cpu"))
    cache.truncate(3)
    assert len(cache) == 3 and cache.start(2, torch.device("cpu")).tolist() == [3, 4]
    with pytest.raises(ValueError, match="truncate\\(9\\): the cache holds 5 tokens"):
        cache.truncate(9)
    cache.start(6, torch.device("cpu"))  # 11 tokens through an 8-token ring
    with pytest.raises(ValueError, match="cannot truncate a cache that has wrapped"):
        cache.truncate(3)


@pytest.fixture(scope="module")
def memoryless_run(tmp_path_factory):
    return pendulum_checkpoint(tmp_path_factory.mktemp("pendulum-memoryless"), "--loader.vector-observations",
                               "--loader.memoryless", "gym")


def test_a_memoryless_agent_acts_the_same_whatever_came_before(memoryless_run):
    model, info = load_agent_model(memoryless_run / "run")
    assert info["memoryless"] == ("gym",)
    dataset = Dataset(info["data_roots"][0])
    spec = dataset.manifest.tasks[PENDULUM]
    prompt, _ = demonstration_prompt(dataset, PENDULUM, spec, None, 16, vector_observations=True)
    rng = np.random.default_rng(0)
    states = [{"obs_continuous": rng.normal(size=3).astype(np.float32)} for _ in range(6)]
    target = {"obs_continuous": np.asarray([0.3, -0.9, 1.5], np.float32)}

    def state_after(history: list, memoryless: bool) -> torch.Tensor:
        """The model's state that predicts the torque for ``target`` after ``history``."""
        agent = GatoAgent(model, spec, None, context=64, temperature=0.0, memoryless=memoryless)
        agent.reset(prompt)
        for state in history:
            agent.act(state)
        fed, feed = [], agent._feed
        agent._feed = lambda chunks: fed.append(feed(chunks)) or fed[-1]
        agent.act(target)
        if memoryless:  # the cache holds the prompt, the observation and the separator (the torque is not fed)
            assert len(agent.cache) == len(prompt) + 2 and len(agent.pending[0]) == 0
        return fed[-1]

    assert torch.equal(state_after([], True), state_after(states, True))
    # with its history the same model's state moves with what came before
    assert not torch.equal(state_after([], False), state_after(states, False))
    assert_batching_matches_one_at_a_time(memoryless_run, "median")


def test_a_memoryless_step_must_fit_the_context_after_its_prompt(memoryless_run):
    model, info = load_agent_model(memoryless_run / "run")
    dataset = Dataset(info["data_roots"][0])
    spec = dataset.manifest.tasks[PENDULUM]
    prompt, _ = demonstration_prompt(dataset, PENDULUM, spec, None, 63, vector_observations=True)
    agent = GatoAgent(model, spec, None, context=64, memoryless=True)
    agent.reset(prompt)
    with pytest.raises(ValueError, match="a memoryless step of 3 tokens after a prompt of 63 exceeds the context of 64"):
        agent.act({"obs_continuous": np.zeros(3, np.float32)})
