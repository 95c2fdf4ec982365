"""The instruction-conditioned reading of a grid (model.instruction_film): a step's separator gets
its grid read in the light of the step's own mission, nothing else moves, and acting on a cache
sees what training saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.deploy import KVCache
from trainer.model import Gato, GatoConfig
from trainer.tokenizer import SEPARATOR, VECTOR_OBSERVATION, VECTOR_WIDTH
from trainer.train import parse_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MISSIONS = {"red ball": [11, 12], "purple key": [13, 14]}


def two_steps(first: str, second: str, cells: tuple[int, int] = (5, 5)):
    """Tokens of two BabyAI-like timesteps: [vector][mission text][separator][action] each, a
    lone action token before them (a window can start mid-step), and each step's codes."""
    tokens, local, codes = [3], [-1], [[-1] * VECTOR_WIDTH]
    for mission, cell in ((first, cells[0]), (second, cells[1])):
        words = MISSIONS[mission]
        grid = [-1] * VECTOR_WIDTH
        grid[:50] = [0] * 50
        grid[12] = cell
        tokens += [VECTOR_OBSERVATION, *words, SEPARATOR, 2]
        local += [0, *range(1, len(words) + 1), -1, -1]
        codes += [grid] + [[-1] * VECTOR_WIDTH] * (len(words) + 2)
    n = len(tokens)
    images = (torch.zeros(1, n, dtype=torch.bool), torch.zeros(0, 4, 16, 16), torch.zeros(0, 2), torch.zeros(0, 2))
    return (torch.tensor([tokens]), torch.tensor([local]), *images,
            torch.zeros(1, n, VECTOR_WIDTH), torch.tensor([codes], dtype=torch.int16))


def embed(model: Gato, inputs) -> torch.Tensor:
    tokens, local, is_image, patches, rows, cols, vectors, codes = inputs
    return model.embed(tokens, local, is_image, patches, rows, cols, vectors, codes)[0]


@pytest.fixture(scope="module")
def model() -> Gato:
    torch.manual_seed(0)
    return Gato(GatoConfig(n_layer=2, n_embd=32, n_head=2, ff=64, block_size=64, vector_observations=True,
                           instruction_film=16)).eval()


def test_a_separator_reads_its_own_steps_grid_with_its_own_mission(model):
    base = embed(model, two_steps("red ball", "red ball"))
    separators = np.flatnonzero(two_steps("red ball", "red ball")[0][0].numpy() == SEPARATOR)
    # the same grid under another mission: only that step's separator moves
    other = embed(model, two_steps("red ball", "purple key")) - base
    moved = other.abs().amax(-1) > 1e-5
    text = np.flatnonzero(two_steps("red ball", "red ball")[0][0].numpy() != two_steps("red ball", "purple key")[0][0].numpy())
    assert set(np.flatnonzero(moved.numpy())) == {separators[1], *text}
    # another cell in the first step's grid: its vector token and its separator, not the second step's
    cell = embed(model, two_steps("red ball", "red ball", cells=(7, 5))) - base
    vector = np.flatnonzero(two_steps("red ball", "red ball")[0][0].numpy() == VECTOR_OBSERVATION)
    assert set(np.flatnonzero((cell.abs().amax(-1) > 1e-5).numpy())) == {vector[0], separators[0]}
    # without the module the separators carry nothing of the grid
    plain = Gato(GatoConfig(n_layer=2, n_embd=32, n_head=2, ff=64, block_size=64, vector_observations=True)).eval()
    cell = embed(plain, two_steps("red ball", "red ball", cells=(7, 5))) - embed(plain, two_steps("red ball", "red ball"))
    assert set(np.flatnonzero((cell.abs().amax(-1) > 1e-5).numpy())) == {vector[0]}


def test_acting_on_a_cache_sees_what_the_whole_window_sees(model):
    """An agent feeds a step's observation and separator in one call and the action alone: the
    separator's state must match the one a training window computes."""
    inputs = two_steps("red ball", "purple key", cells=(7, 9))
    tokens, local, is_image, patches, rows, cols, vectors, codes = inputs
    with torch.no_grad():
        whole = model.hidden_states(tokens, local, is_image, patches, rows, cols, vectors=vectors, codes=codes)[0]
        cache = KVCache(model.config.n_layer, 64)
        pieces, at = [], 0
        for end in (1, 5, 6, 10, 11):  # action | step 1's observation + separator | action | step 2 | action
            part = slice(at, end)
            pieces.append(model.hidden_states(tokens[:, part], local[:, part], is_image[:, part], patches, rows, cols,
                                              cache, vectors=vectors[:, part], codes=codes[:, part])[0])
            at = end
    torch.testing.assert_close(torch.cat(pieces), whole, atol=1e-5, rtol=1e-4)


def test_instruction_film_without_vector_observations_is_an_error_naming_both_fields(tmp_path):
    config = tmp_path / "film.yaml"
    config.write_text("model:\n  preset: gato-tiny\n  instruction_film: 32\n")
    with pytest.raises(ValueError, match="instruction_film=32 reads vector observations: set loader.vector_observations"):
        parse_config(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(config)]).validate()
    config.write_text("model:\n  preset: gato-tiny\n  instruction_film: -1\n")
    with pytest.raises(ValueError, match="instruction_film=-1 must be >= 0"):
        parse_config(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(config)])


def test_the_reading_starts_at_pytorch_scale_and_a_cells_reading_does_not_depend_on_its_batch(model):
    """The FiLM's tables start at unit scale (at the trunk's 0.02 a per-step network so
    initialised learned 73% of the bot's actions, not 93%); its output layer keeps the trunk's."""
    film = model.embed.instruction
    assert 0.8 < film.value.weight[:-1].std().item() < 1.2
    assert 0.8 < film.words.weight.std().item() < 1.2
    assert film.value.weight[-1].abs().max().item() == 0.0  # the padding code reads nothing
    assert 0.015 < film.out.weight.std().item() < 0.025
    # columns no row uses are skipped: a 10-code row reads the same beside a 50-code row
    short = torch.full((1, VECTOR_WIDTH), -1, dtype=torch.int16)
    short[0, :10] = torch.arange(10)
    long = torch.full((1, VECTOR_WIDTH), -1, dtype=torch.int16)
    long[0, :50] = torch.arange(50) + 3
    mission = torch.randn(2, film.value.embedding_dim)
    with torch.no_grad():
        alone = film(short, mission[:1])
        together = film(torch.cat([short, long]), mission)
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(together[1:], alone, atol=1e-3)
