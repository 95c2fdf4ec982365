"""The Gato model: paper sizes without allocation, learning, the KV cache, embeddings, losses."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.model import main as model_main
from trainer.model import CONFIGS, Gato, GatoConfig, KVCache, describe, interval_bins, load_model_config, real_patches
from trainer.synthetic_batch import SyntheticBatchConfig, synthetic_batch

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name, paper", [("gato-79m", 79e6), ("gato-364m", 364e6), ("gato-1.18b", 1.18e9)])
def test_paper_sizes_within_five_percent_without_allocating(name, paper):
    before = torch.empty(0).untyped_storage().nbytes()  # the meta device never touches memory
    row = describe(CONFIGS[name], name)
    assert before == 0
    assert abs(row["params"] - paper) / paper < 0.05, row
    spec = {"gato-79m": (8, 768, 24), "gato-364m": (12, 1536, 12), "gato-1.18b": (24, 2048, 16)}[name]
    assert (row["layers"], row["width"], row["heads"]) == spec


def test_small_configs_are_cpu_sized():
    for name in ("gato-tiny", "gato-small", "gato-base-cpu"):
        assert 1e6 <= describe(CONFIGS[name])["params"] <= 10e6, name


def test_model_cli_json_and_yaml(tmp_path):
    out = subprocess.run([sys.executable, "-m", "trainer.model", "gato-1.18b", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    row = json.loads(out.stdout)
    assert row["layers"] == 24 and abs(row["params"] - 1.18e9) / 1.18e9 < 0.05
    yaml_file = tmp_path / "m.yaml"
    yaml_file.write_text("model:\n  preset: gato-tiny\n  n_layer: 3\n")
    assert load_model_config(str(yaml_file)).n_layer == 3
    yaml_file.write_text("model:\n  n_layers: 3\n")
    with pytest.raises(ValueError, match="n_layers"):
        load_model_config(str(yaml_file))
    with pytest.raises(SystemExit, match="gato-79m"):
        model_main(["gato-7b"])


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="n_head"):
        GatoConfig(n_embd=100, n_head=3)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = Gato(CONFIGS["gato-tiny"])
    batch = synthetic_batch(SyntheticBatchConfig(batch_size=2, seq_len=64, image_patches=4, padding=6))
    optimizer = model.configure_optimizer(1e-2, 0.0, (0.9, 0.95))
    first = None
    for _ in range(40):
        out = model(batch)
        first = first if first is not None else out.loss.item()
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.targets == int((batch["loss_mask"][:, 1:] & batch["attention_mask"][:, 1:]).sum())
    assert out.loss.item() < 0.1 * first, (first, out.loss.item())


def test_compiled_blocks_train_like_eager_and_keep_checkpoint_names():
    """--compile on a CPU compiles the transformer blocks in place: the same loss and gradients as
    eager (to float rounding), a loss that falls, and checkpoints an eager model loads by name."""
    torch.manual_seed(0)
    eager = Gato(CONFIGS["gato-tiny"])
    compiled = Gato(CONFIGS["gato-tiny"])
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    batch = synthetic_batch(SyntheticBatchConfig(batch_size=2, seq_len=64, image_patches=4, padding=6))
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(1)  # the same patch-position draws (the embedding samples them in training)
        loss = model(batch).loss
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6, msg=lambda text: f"{name}: {text}")
    optimizer = compiled.configure_optimizer(1e-2, 0.0, (0.9, 0.95))
    first = compiled(batch).loss.item()
    for _ in range(10):
        optimizer.zero_grad()
        compiled(batch).loss.backward()
        optimizer.step()
    assert compiled(batch).loss.item() < 0.7 * first
    Gato(CONFIGS["gato-tiny"]).load_state_dict(compiled.state_dict())  # strict: the same names


def test_head_only_at_loss_positions_and_padding_ignored():
    torch.manual_seed(0)
    model = Gato(CONFIGS["gato-tiny"]).eval()
    batch = synthetic_batch(SyntheticBatchConfig(batch_size=2, seq_len=64, padding=10))
    loss = model(batch).loss
    changed = {k: v.clone() for k, v in batch.items()}
    changed["tokens"][:, -10:] = 5  # padding content must not matter
    assert torch.allclose(model(changed).loss, loss)
    changed["tokens"][0, 20] = (changed["tokens"][0, 20] + 1 - 32000) % 1024 + 32000  # a real token does
    assert not torch.allclose(model(changed).loss, loss)


def test_head_vocab_softmax_runs_over_the_target_ids_only():
    torch.manual_seed(0)
    full = Gato(CONFIGS["gato-tiny"]).eval()
    small = Gato(dataclasses.replace(CONFIGS["gato-tiny"], head_vocab=1024)).eval()
    small.load_state_dict(full.state_dict())
    for continuous in (True, False):
        batch = synthetic_batch(SyntheticBatchConfig(batch_size=2, seq_len=64, padding=4, continuous=continuous))
        h = full.hidden_states(batch["tokens"], batch["local_positions"], batch["is_image"], *real_patches(batch))
        target = batch["loss_mask"][:, 1:] & batch["attention_mask"][:, 1:]
        logits = full.lm_head(h[:, :-1][target])
        keep = torch.cat((torch.arange(1024), torch.arange(32000, 33024)))  # text/discrete ids, continuous bins
        targets = batch["tokens"][:, 1:][target]
        expected = torch.nn.functional.cross_entropy(logits[:, keep], torch.searchsorted(keep, targets))
        assert torch.allclose(small(batch).loss, expected, atol=1e-5)
        assert small(batch).loss < full(batch).loss  # fewer competitors in the softmax
    text = synthetic_batch(SyntheticBatchConfig(batch_size=1, seq_len=32, continuous=False))
    text["tokens"][text["loss_mask"]] = 5000  # a text id past head_vocab
    with pytest.raises(ValueError, match="head_vocab=1024"):
        small(text)
    with pytest.raises(ValueError, match="head_vocab=40000"):
        GatoConfig(head_vocab=40000)


def test_kv_cache_matches_full_forward_and_rolls():
    torch.manual_seed(0)
    model = Gato(GatoConfig(n_layer=2, n_embd=32, n_head=2, ff=128, block_size=64, patch_hidden=8)).eval()
    batch = synthetic_batch(SyntheticBatchConfig(batch_size=1, seq_len=40, image_patches=4))
    patches, rows, cols = real_patches(batch)
    args = (batch["tokens"], batch["local_positions"], batch["is_image"], patches, rows, cols)
    with torch.no_grad():
        full = model.hidden_states(*args)  # (1, 40, C)
        cache = KVCache(model.config.n_layer, max_tokens=64)
        pieces, used = [], 0
        for chunk in (17, 1, 1, 21):  # a prompt, then tokens one by one, then a chunk
            sl = slice(used, used + chunk)
            n_before, n_here = int(batch["is_image"][0, :used].sum()), int(batch["is_image"][0, sl].sum())
            p = slice(n_before, n_before + n_here)
            pieces.append(model.hidden_states(batch["tokens"][:, sl], batch["local_positions"][:, sl],
                                              batch["is_image"][:, sl], patches[p], rows[p], cols[p], cache))
            used += chunk
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    # a rolling window: with room for 16 tokens, the last token attends to exactly the last 16.
    # (With one layer the cached keys depend on their own token only; deeper layers' keys also
    # carry what their tokens saw before the window, as in Transformer-XL.)
    model = Gato(GatoConfig(n_layer=1, n_embd=32, n_head=2, ff=128, block_size=64, patch_hidden=8)).eval()
    small = KVCache(model.config.n_layer, max_tokens=16)
    with torch.no_grad():
        for i in range(40):
            n_before = int(batch["is_image"][0, :i].sum())
            n_here = int(batch["is_image"][0, i])
            last = model.hidden_states(batch["tokens"][:, i:i + 1], batch["local_positions"][:, i:i + 1],
                                       batch["is_image"][:, i:i + 1], patches[n_before:n_before + n_here],
                                       rows[n_before:n_before + n_here], cols[n_before:n_before + n_here], small)
        n0 = int(batch["is_image"][0, :24].sum())
        window = model.hidden_states(batch["tokens"][:, 24:], batch["local_positions"][:, 24:], batch["is_image"][:, 24:],
                                     patches[n0:], rows[n0:], cols[n0:])
    assert len(small) == 16
    assert torch.allclose(last[0, -1], window[0, -1], atol=1e-5)
    # chunks of 5 that wrap the ring: a chunk's last token attends to exactly the last 16 tokens,
    # its earlier ones causally within the chunk (the mask goes by position, not by slot)
    ring = KVCache(model.config.n_layer, max_tokens=16)
    with torch.no_grad():
        for end in range(5, 41, 5):
            n_before, n_here = int(batch["is_image"][0, :end - 5].sum()), int(batch["is_image"][0, end - 5:end].sum())
            p = slice(n_before, n_before + n_here)
            chunk = model.hidden_states(batch["tokens"][:, end - 5:end], batch["local_positions"][:, end - 5:end],
                                        batch["is_image"][:, end - 5:end], patches[p], rows[p], cols[p], ring)
            lo = end - 16 if end > 16 else 0
            n0, n1 = int(batch["is_image"][0, :lo].sum()), int(batch["is_image"][0, :end].sum())
            window = model.hidden_states(batch["tokens"][:, lo:end], batch["local_positions"][:, lo:end],
                                         batch["is_image"][:, lo:end], patches[n0:n1], rows[n0:n1], cols[n0:n1])
            assert torch.allclose(chunk[0, -1], window[0, -1], atol=1e-5), end
            if end <= 16:  # nothing evicted yet: every token of the chunk matches the full forward
                assert torch.allclose(chunk[0], window[0, -5:], atol=1e-5), end
    assert len(ring) == 16 and sorted(ring.positions.tolist()) == list(range(24, 40))


def test_position_bins_sample_inside_interval_and_mean_at_eval():
    intervals = torch.tensor([[0.0, 0.25], [0.5, 0.75], [0.9, 1.0]]).repeat(200, 1)
    sampled = interval_bins(intervals, 128, sample=True).view(200, 3)
    assert sampled[:, 0].min() == 0 and sampled[:, 0].max() == 31
    assert sampled[:, 1].min() == 64 and sampled[:, 1].max() == 95
    assert interval_bins(intervals[:3], 128, sample=False).tolist() == [16, 80, 121]


def test_images_and_local_positions_change_the_embedding():
    torch.manual_seed(0)
    model = Gato(CONFIGS["gato-tiny"]).eval()
    batch = synthetic_batch(SyntheticBatchConfig(batch_size=2, seq_len=64, image_patches=4))
    base = model(batch).loss
    other = dict(batch, frames=batch["frames"].flip(0))
    assert not torch.allclose(model(other).loss, base)
    other = dict(batch, local_positions=batch["local_positions"].roll(1, 1))
    assert not torch.allclose(model(other).loss, base)


def test_next_observation_loss_weight():
    torch.manual_seed(0)
    batch = synthetic_batch(SyntheticBatchConfig(batch_size=2, seq_len=64, image_patches=4))
    model = Gato(GatoConfig(n_layer=1, n_embd=32, n_head=2, ff=64, patch_hidden=8, kappa=0.25))
    out = model(batch)
    assert out.observation_loss is not None and out.observation_loss > 0
    assert torch.allclose(out.loss, 0.75 * out.action_loss + 0.25 * out.observation_loss)
    out.loss.backward()
    assert model.patch_head.weight.grad.abs().sum() > 0
    assert Gato(GatoConfig(n_layer=1, n_embd=32, n_head=2, ff=64, patch_hidden=8))(batch).observation_loss is None


def test_smooth_bins_start_neighbouring_continuous_bins_alike():
    from trainer.model import smooth_bin_code
    from trainer.tokenizer import CONTINUOUS_BINS, CONTINUOUS_OFFSET

    code = smooth_bin_code(CONTINUOUS_BINS, 64)
    cosine = torch.nn.functional.cosine_similarity
    near, far = cosine(code[:-1], code[1:]).mean(), cosine(code[:-300], code[300:]).abs().mean()
    assert near > 0.9 and far < 0.2 and code.std() == pytest.approx(0.02, rel=0.05)
    torch.manual_seed(0)
    plain, smooth = Gato(GatoConfig(n_layer=1, n_embd=64, n_head=4, ff=256)), Gato(
        GatoConfig(n_layer=1, n_embd=64, n_head=4, ff=256, smooth_bins=True))
    bins = slice(CONTINUOUS_OFFSET, CONTINUOUS_OFFSET + CONTINUOUS_BINS)
    assert torch.equal(smooth.embed.wte.weight[bins], code)
    assert smooth.lm_head.weight.data_ptr() == smooth.embed.wte.weight.data_ptr()  # the head sees the same code
    # the plain table's neighbours are unrelated noise
    assert cosine(plain.embed.wte.weight[bins][:-1], plain.embed.wte.weight[bins][1:]).mean().abs() < 0.1


def test_action_regression_head_learns_continuous_values_and_adds_its_weighted_mse():
    """The value head's loss is the MSE against the targets' bin centres, weighted into the loss;
    discrete targets are not in it, and a few steps fit the values far better than the start."""
    from trainer.tokenizer import CONTINUOUS_OFFSET, bin_centres

    torch.manual_seed(0)
    batch = synthetic_batch(SyntheticBatchConfig(batch_size=2, seq_len=64, image_patches=0, continuous=True))
    model = Gato(GatoConfig(n_layer=1, n_embd=32, n_head=2, ff=64, action_regression=4.0))
    out = model(batch)
    mask = batch["loss_mask"][:, 1:] & batch["attention_mask"][:, 1:]
    h = model.hidden_states(batch["tokens"], batch["local_positions"], batch["is_image"],
                            *real_patches(batch))[:, :-1][mask]
    targets = batch["tokens"][:, 1:][mask]
    assert (targets >= CONTINUOUS_OFFSET).all()
    expected = torch.nn.functional.mse_loss(model.value_head(h).squeeze(-1), bin_centres(targets - CONTINUOUS_OFFSET))
    assert torch.allclose(out.regression_loss, expected)
    assert torch.allclose(out.loss, out.action_loss + 4.0 * out.regression_loss)
    # bin centres are the mu-law values the tokenizer binned: bin 0 -> -1 + 1/1024, the last -> 1 - 1/1024
    assert bin_centres(torch.tensor([0, 1023])).tolist() == pytest.approx(
        [-1 + 1 / 1024, 1 - 1 / 1024])
    optimizer = model.configure_optimizer(1e-2, 0.0, (0.9, 0.95))
    first = out.regression_loss.item()
    for _ in range(60):
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.regression_loss.item() < 0.2 * first, (first, out.regression_loss.item())
    # only discrete targets: the term is 0 and still backpropagates
    tokens = batch["tokens"].clone()
    tokens[batch["loss_mask"]] -= CONTINUOUS_OFFSET  # the same targets as discrete ids
    assert model(dict(batch, tokens=tokens)).regression_loss.item() == 0.0
    # no head without the weight; a negative weight names the field
    assert Gato(GatoConfig(n_layer=1, n_embd=32, n_head=2, ff=64)).value_head is None
    with pytest.raises(ValueError, match="action_regression=-1"):
        GatoConfig(action_regression=-1)
