"""Gato's tokenizer against the paper's formulas: values, patches, timesteps, text models."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shards import Episode, Manifest, StepFileWriter, index_table, write_index, write_manifest
from shards.manifest import ModalitySpec, TaskSpec
from trainer.patches import image_to_patches
from trainer.text_tokenizer import TextTokenizer, fit_text_model
from trainer.tokenizer import (
    IMAGE_PLACEHOLDER,
    LAYOUT,
    PAD,
    SEPARATOR,
    VOCAB_SIZE,
    action_token_count,
    action_token_ranges,
    decode_action,
    decode_continuous,
    encode_action,
    encode_continuous,
    encode_discrete,
    tokenize_observation,
    tokenize_steps,
)

REPO = Path(__file__).resolve().parents[1]


def paper_token(x: float) -> int:
    """The paper's recipe for one value, written out with scalar math."""
    f = math.copysign(math.log(abs(x) * 100 + 1) / math.log(256 * 100 + 1), x)
    f = min(1.0, max(-1.0, f))
    return 32000 + min(1023, int(math.floor((f + 1) / 2 * 1024)))


def test_layout_ids_are_disjoint_and_in_one_place():
    assert (LAYOUT.continuous_offset, LAYOUT.separator, LAYOUT.image_placeholder, LAYOUT.pad,
            LAYOUT.vector_observation) == (32000, 33024, 33025, 33026, 33027)
    assert LAYOUT.vocab_size == VOCAB_SIZE == 33028
    assert len({SEPARATOR, IMAGE_PLACEHOLDER, PAD, LAYOUT.vector_observation}) == 4


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 1e6, -1e6, 1e-12, -1e-12, 3e-7, 0.5, -7.25, 255.9, 256.0, 257.0])
def test_continuous_matches_the_formula(value):
    assert int(encode_continuous(np.array([value]))[0]) == paper_token(value)


def test_continuous_edges():
    tokens = encode_continuous(np.array([0.0, 1e6, -1e6, 1e-12, -1e-12]))
    assert tokens.dtype == np.int64
    # 0 sits on the edge between bins 511 and 512; tiny values fall either side by sign
    assert tokens.tolist() == [32512, 33023, 32000, 32512, 32511]
    assert encode_continuous(np.zeros((3, 4, 5))).shape == (3, 4, 5)


def test_every_bin_centre_round_trips_to_its_own_bin():
    tokens = np.arange(32000, 33024)
    centres = decode_continuous(tokens)
    assert np.all(np.diff(centres) > 0)  # monotonic
    assert np.array_equal(encode_continuous(centres), tokens)
    # decoding inverts mu-law: the edge bins decode near +-M
    assert 200 < centres[-1] < 256 and -256 < centres[0] < -200


def test_decode_is_close_for_values_in_range():
    values = np.linspace(-3, 3, 1001)
    decoded = decode_continuous(encode_continuous(values))
    assert np.max(np.abs(decoded - values)) < 0.05


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise(bad):
    with pytest.raises(ValueError, match="non-finite"):
        encode_continuous(np.array([0.0, bad]))


def test_discrete_range():
    assert encode_discrete(np.array([0, 5, 1023], np.int32)).tolist() == [0, 5, 1023]
    for bad in ([-1], [1024], [0.5]):
        with pytest.raises(ValueError, match=r"\[0, 1024\)"):
            encode_discrete(np.array(bad))


def test_patches_raster_order_scaling_and_intervals():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    patches, rows, cols = image_to_patches(frame)
    assert patches.shape == (6, 3, 16, 16) and patches.dtype == np.float32
    for p in range(6):
        r, c = divmod(p, 3)
        expected = frame[16 * r:16 * r + 16, 16 * c:16 * c + 16].transpose(2, 0, 1) / 255.0 * 2 - 1
        np.testing.assert_allclose(patches[p], expected / 4, atol=1e-6)
        np.testing.assert_allclose(rows[p], [r / 2, (r + 1) / 2])
        np.testing.assert_allclose(cols[p], [c / 3, (c + 1) / 3])
    extremes, _, _ = image_to_patches(np.array([[0, 255]] * 8, np.uint8).reshape(4, 4, 1))
    assert extremes.min() == pytest.approx(-0.25) and extremes.max() == pytest.approx(0.25)


def test_stacked_frames_are_channels_and_odd_sizes_are_padded():
    frames = np.stack([np.full((84, 84), 10 * k, np.uint8) for k in range(4)], axis=-1)  # Atari 84x84x4
    patches, rows, cols = image_to_patches(frames)
    assert patches.shape == (36, 4, 16, 16)  # padded to 96x96
    np.testing.assert_allclose(patches[0, 2], (20 / 255 * 2 - 1) / 4, atol=1e-6)
    corner = patches[35]  # last patch: rows/cols 80..95, of which 84..95 are padding
    np.testing.assert_allclose(corner[:, 4:, :], -0.25)
    np.testing.assert_allclose(corner[:, :4, :4], (np.arange(4)[:, None, None] * 10 / 255 * 2 - 1) / 4 * np.ones((4, 4, 4)), atol=1e-6)
    np.testing.assert_allclose(rows[35], [5 / 6, 1.0])


def reference_patches(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) -> (T, P, 16, 16, C) by the obvious route: pad with black, reshape, transpose."""
    t, h, w, c = frames.shape
    padded = np.zeros((t, -(-h // 16) * 16, -(-w // 16) * 16, c), np.uint8)
    padded[:, :h, :w] = frames
    gh, gw = padded.shape[1] // 16, padded.shape[2] // 16
    return padded.reshape(t, gh, 16, gw, 16, c).transpose(0, 1, 3, 2, 4, 5).reshape(t, gh * gw, 16, 16, c)


@pytest.mark.parametrize("shape", [(3, 84, 84, 4), (2, 64, 64, 3), (1, 16, 16, 1), (2, 20, 33, 2), (2, 15, 7, 3)])
def test_cut_patches_matches_the_obvious_route_into_dirty_memory(shape):
    from trainer.patches import cut_patches

    rng = np.random.default_rng(sum(shape))
    frames = rng.integers(0, 256, shape, dtype=np.uint8)
    expected = reference_patches(frames)
    assert np.array_equal(cut_patches(frames), expected)
    out = rng.integers(0, 256, (*expected.shape[:4], 4), dtype=np.uint8)  # reused memory, channels padded to 4
    cut_patches(frames, out=out)
    assert np.array_equal(out[..., :shape[3]], expected) and not out[..., shape[3]:].any()


def test_model_cuts_loader_frames_as_the_host_does():
    """frames_to_patches (the model's, on the batch's device) == cut_patches + normalize_patches."""
    import torch

    from trainer.patches import cut_patches, frames_to_patches, normalize_patches

    rng = np.random.default_rng(4)
    atari = rng.integers(0, 256, (3, 84, 84, 4), dtype=np.uint8)
    rgb = rng.integers(0, 256, (2, 20, 33, 3), dtype=np.uint8)
    # sequence 0: three Atari frames, the last cut after 10 of its 36 patches; 1: no images; 2: two RGB frames
    batch = {"frames": torch.from_numpy(np.concatenate([atari.reshape(-1), rgb.reshape(-1)])),
             "image_shapes": torch.tensor([[84, 84, 4], [0, 0, 0], [20, 33, 3]]),
             "num_frames": torch.tensor([3, 0, 2]), "frame_patches": torch.tensor([36, 36, 10, 6, 6])}
    got = frames_to_patches(batch["frames"], batch["image_shapes"], batch["num_frames"], batch["frame_patches"])
    expected = np.concatenate([normalize_patches(cut_patches(atari).reshape(-1, 16, 16, 4)[:82]),
                               normalize_patches(cut_patches(rgb).reshape(-1, 16, 16, 3))])
    assert got.shape == (82 + 12, 4, 16, 16)
    assert torch.equal(got, torch.from_numpy(expected))
    pixels = reference_patches(rgb).reshape(-1, 16, 16, 3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(expected[82:, :3], (pixels / 255 * 2 - 1) / 4, atol=1e-6)  # [-1, 1] / 4
    assert not expected[82:, 3:].any()  # channels beyond C are zero
    masked = normalize_patches(cut_patches(atari)[0, :2], channels=np.array([2, 4]))
    assert not masked[0, 2:].any() and masked[1, 3].any()


def reference_step_tokens(steps: dict, t: int, spec: TaskSpec, text_model, cap: int = 128) -> tuple[list, list, list]:
    """One timestep written out from the paper's recipe: tokens, loss mask, local positions."""
    obs, loss = [], []
    if "obs_continuous" in spec.observation:
        obs += encode_continuous(steps["obs_continuous"][t].reshape(-1)).tolist()
    if "obs_discrete" in spec.observation:
        obs += steps["obs_discrete"][t].reshape(-1).tolist()
    if "obs_image" in spec.observation:
        h, w = spec.observation["obs_image"].shape[:2]
        obs += [IMAGE_PLACEHOLDER] * (-(-h // 16) * -(-w // 16))
    loss += [False] * len(obs)
    if "obs_text" in spec.observation:
        text = text_model.encode(steps["obs_text"][t] or "")[:cap]
        obs += list(text)
        loss += [True] * len(text)
    action = []
    if "act_continuous" in spec.action:
        action += encode_continuous(steps["act_continuous"][t].reshape(-1)).tolist()
    if "act_discrete" in spec.action:
        action += steps["act_discrete"][t].reshape(-1).tolist()
    return (obs + [SEPARATOR] + action, loss + [False] + [True] * len(action),
            list(range(len(obs))) + [-1] * (1 + len(action)))


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("kind", ["grid", "babyai", "metaworld"])
def test_vectorized_tokenization_equals_the_per_step_recipe(kind, pooled, text_model, monkeypatch):
    """tokenize_steps over a whole row group == each timestep tokenized on its own, byte for byte;
    also into recycled buffers that hold stale bytes (as a loader worker's pool hands out)."""
    from trainer.buffers import BufferPool

    buffer_for = None
    if pooled:
        pool = BufferPool(keep_bytes=1 << 30, most_buffers=64)
        stale = [pool.take(n) for n in (1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20) * 3]
        for buffer in stale:
            buffer.fill(0xAB)
        del stale, buffer
        buffer_for = pool.take
    rng = np.random.default_rng(7)
    t = 300
    monkeypatch.setattr("trainer.tokenizer.KEEP_CELLS", 500)  # text rows are compacted in several chunks
    missions = ["go to the red ball", "", "pick up the blue key next to the door", "open"]
    if kind == "grid":
        spec = grid_spec()
        steps = {"obs_discrete": rng.integers(0, 11, (t, 3)).astype(np.int32),
                 "obs_continuous": (rng.normal(size=(t, 2)) * 10 ** rng.uniform(-4, 4, (t, 2))).astype(np.float32),
                 "obs_image": rng.integers(0, 256, (t, 16, 32, 2), dtype=np.uint8),
                 "obs_text": [missions[i] for i in rng.integers(0, 4, t)],
                 "act_discrete": rng.integers(0, 7, (t, 1)).astype(np.int32),
                 "act_continuous": rng.uniform(-1, 1, (t, 2)).astype(np.float32)}
    elif kind == "babyai":
        spec = TaskSpec(domain="babyai", env_id="b", observation={"obs_discrete": ModalitySpec([148], "int32", n=11),
                                                                  "obs_text": ModalitySpec([], "string")},
                        action={"act_discrete": ModalitySpec([1], "int32", n=7)})
        steps = {"obs_discrete": rng.integers(0, 11, (t, 148)).astype(np.int32),
                 "obs_text": [missions[i // 60 % 4] for i in range(t)],
                 "act_discrete": rng.integers(0, 7, (t, 1)).astype(np.int32)}
    else:
        spec = TaskSpec(domain="metaworld", env_id="m", observation={"obs_continuous": ModalitySpec([39], "float32")},
                        action={"act_continuous": ModalitySpec([4], "float32", low=-1, high=1)})
        steps = {"obs_continuous": rng.normal(size=(t, 39)).astype(np.float32),
                 "act_continuous": rng.uniform(-1, 1, (t, 4)).astype(np.float32)}
    run = tokenize_steps(steps, spec, text_model, buffer_for=buffer_for)
    if kind == "babyai":  # the loader hands over the Arrow column itself (nulls count as "")
        import pyarrow as pa

        arrow = dict(steps, obs_text=pa.array([None if i % 97 == 5 else m for i, m in enumerate(steps["obs_text"])]))
        steps["obs_text"] = [None if i % 97 == 5 else m for i, m in enumerate(steps["obs_text"])]
        run = tokenize_steps(arrow, spec, text_model, buffer_for=buffer_for)
    tokens, loss, local, offsets = [], [], [], [0]
    for step in range(t):
        ids, mask, positions = reference_step_tokens(steps, step, spec, text_model)
        tokens += ids
        loss += mask
        local += positions
        offsets.append(len(tokens))
    assert run.tokens.tobytes() == np.array(tokens, np.int32).tobytes()
    assert run.loss_mask.tobytes() == np.array(loss, bool).tobytes()
    assert run.local_positions.tobytes() == np.array(local, np.int16).tobytes()
    assert run.step_offsets.tolist() == offsets
    if "obs_image" in steps:
        assert run.frames.shape == (t, 16, 32, 2) and np.array_equal(run.frames, steps["obs_image"])


def grid_spec() -> TaskSpec:
    return TaskSpec(domain="grid", env_id="grid-v0",
                    observation={"obs_discrete": ModalitySpec([3], "int32", n=11), "obs_continuous": ModalitySpec([2], "float32"),
                                 "obs_image": ModalitySpec([16, 32, 2], "uint8"), "obs_text": ModalitySpec([], "string")},
                    action={"act_discrete": ModalitySpec([1], "int32", n=7), "act_continuous": ModalitySpec([2], "float32", low=-1, high=1)})


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    from shards.synth import SynthConfig, synth_dataset

    root = tmp_path_factory.mktemp("text") / "synth"
    synth_dataset(root, SynthConfig(tasks=2, episodes=4, seed=1))
    out = root.parent / "text.model"
    summary = fit_text_model([str(root)], out)
    assert summary["vocab_size"] < 32000  # small corpus -> small vocabulary
    return TextTokenizer.load(out)


def test_timestep_layout_and_masks(text_model):
    spec = grid_spec()
    rng = np.random.default_rng(0)
    steps = {"obs_discrete": rng.integers(0, 11, (3, 3)).astype(np.int32),
             "obs_continuous": rng.normal(size=(3, 2)).astype(np.float32),
             "obs_image": rng.integers(0, 256, (3, 16, 32, 2), dtype=np.uint8),
             "obs_text": ["go to the red ball", "", "go to the red ball"],
             "act_discrete": np.array([[1], [2], [6]], np.int32),
             "act_continuous": rng.uniform(-1, 1, (3, 2)).astype(np.float32)}
    run = tokenize_steps(steps, spec, text_model)
    text = text_model.encode("go to the red ball")
    first = run.tokens[run.step_offsets[0]:run.step_offsets[1]]
    # key order: continuous, discrete, image, text | separator | continuous, discrete actions
    expected = np.concatenate([encode_continuous(steps["obs_continuous"][0]), steps["obs_discrete"][0],
                               [IMAGE_PLACEHOLDER] * 2, text, [SEPARATOR],
                               encode_continuous(steps["act_continuous"][0]), [1]])
    assert first.tolist() == expected.tolist()
    assert np.diff(run.step_offsets).tolist() == [len(expected), len(expected) - len(text), len(expected)]
    loss = run.loss_mask[:len(expected)]
    assert loss.tolist() == [False] * 7 + [True] * len(text) + [False] + [True] * 3
    local = run.local_positions[:len(expected)]
    assert local.tolist() == list(range(7 + len(text))) + [-1] * 4
    obs = tokenize_observation({k: v[0] for k, v in steps.items() if k.startswith("obs_")}, spec, text_model)
    assert obs.tokens.tolist() == expected[:7 + len(text) + 1].tolist()
    assert obs.is_image.sum() == 2 and obs.patches.shape == (2, 4, 16, 16)
    np.testing.assert_allclose(obs.patches[1, :2], image_to_patches(steps["obs_image"][0])[0][1])
    assert not obs.patches[:, 2:].any()  # channels zero-padded to 4


def test_actions_round_trip_and_ranges():
    spec = grid_spec()
    action = {"act_continuous": np.array([0.3, -0.9], np.float32), "act_discrete": np.array([5], np.int32)}
    tokens = encode_action(action, spec)
    assert action_token_count(spec) == 3 == len(tokens)
    decoded = decode_action(tokens, spec)
    np.testing.assert_allclose(decoded["act_continuous"], action["act_continuous"], atol=0.02)
    assert decoded["act_discrete"].tolist() == [5]
    assert action_token_ranges(spec).tolist() == [[32000, 33024], [32000, 33024], [0, 7]]
    assert decode_action(np.array([33023, 32000, 999]), spec)["act_discrete"].tolist() == [6]  # clipped to n
    with pytest.raises(ValueError, match="needs 3"):
        decode_action(np.array([1, 2]), spec)


def test_text_model_missing_raises():
    steps = {"obs_discrete": np.zeros((1, 3), np.int32), "obs_continuous": np.zeros((1, 2), np.float32),
             "obs_image": np.zeros((1, 16, 32, 2), np.uint8), "obs_text": ["hi"]}
    with pytest.raises(ValueError, match="no text model"):
        tokenize_steps(steps, grid_spec(), None, actions=False)


def test_text_model_from_hub_cache_offline(text_model, tmp_path, monkeypatch):
    """The hub path runs hf_hub_download for real, served from a cache laid out as the hub's."""
    snapshot = tmp_path / "hub" / "models--gatoforge--text" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.model").write_bytes(text_model.model_bytes)
    (tmp_path / "hub" / "models--gatoforge--text" / "refs").mkdir()
    (tmp_path / "hub" / "models--gatoforge--text" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    loaded = TextTokenizer.load("gatoforge/text")
    assert loaded.encode("go to the red ball").tolist() == text_model.encode("go to the red ball").tolist()
    with pytest.raises(ValueError, match="hub could not provide"):
        TextTokenizer.load("gatoforge/absent")
    with pytest.raises(ValueError, match="not a hub id"):
        TextTokenizer.load(str(tmp_path / "missing.model"))


def test_fit_cli(synth_root, tmp_path):
    out = tmp_path / "cli.model"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "trainer.tokenizer", "fit", str(synth_root), "--out", str(out), "--json"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"vocab_size"' in result.stdout and out.is_file()
    ids = TextTokenizer.load(out).encode("pick up the blue key")
    assert len(ids) and ids.max() < 32000


def test_fitted_text_model_keeps_the_words_of_a_small_mission_corpus(tmp_path):
    """BabyAI-sized corpus: BPE (the default) gives one piece per word, unigram only characters."""
    colours, objects = ("red", "green", "blue", "purple", "yellow", "grey"), ("ball", "box", "key")
    missions = [f"go to {article} {c} {o}" for article in ("a", "the") for c in colours for o in objects]
    root = tmp_path / "missions"
    spec = TaskSpec(domain="babyai", env_id="BabyAI-GoToLocal-v0",
                    observation={"obs_discrete": ModalitySpec([2], "int32", n=4), "obs_text": ModalitySpec([], "string")},
                    action={"act_discrete": ModalitySpec([1], "int32", n=7)})
    with StepFileWriter(root, "babyai/GoToLocal", "part-00000", spec.modalities) as writer:
        for i, mission in enumerate(missions):
            writer.add(Episode(task="babyai/GoToLocal", steps={"obs_discrete": np.zeros((2, 2), np.int32),
                                                              "obs_text": [mission] * 2,
                                                              "act_discrete": np.zeros((2, 1), np.int32)},
                               rewards=np.zeros(2, np.float32), terminated=np.array([False, True]),
                               truncated=np.zeros(2, bool), run_id="bot", run_index=i, source="scripted"))
    write_index(root, index_table(writer.index_rows))
    write_manifest(root, Manifest(name="missions", tasks={"babyai/GoToLocal": spec}))
    fit_text_model([str(root)], tmp_path / "bpe.model")
    fit_text_model([str(root)], tmp_path / "unigram.model", model_type="unigram")
    bpe, unigram = TextTokenizer.load(tmp_path / "bpe.model"), TextTokenizer.load(tmp_path / "unigram.model")
    assert len(bpe.encode("go to the red ball")) == 5
    assert bpe.decode(bpe.encode("go to a purple key")) == "go to a purple key"
    assert len(unigram.encode("go to the red ball")) > 8  # what the old default did to every step
