"""The streaming loader: contract tensors, masks, prompts, sharding, mixture, exact resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shards import Episode, Manifest, ModalitySpec, TaskSpec, write_dataset
from shards.synth import SynthConfig, synth_dataset
from trainer.data import DataConfig, GatoDataset, make_loader
from trainer.text_tokenizer import fit_text_model
from trainer.tokenizer import IMAGE_PLACEHOLDER, PAD, SEPARATOR

CONTRACT = {
    "tokens": (torch.int64, ()), "loss_mask": (torch.bool, ()), "attention_mask": (torch.bool, ()),
    "local_positions": (torch.int64, ()), "is_image": (torch.bool, ()),
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """8 tasks (two per synthetic domain) and a text model fitted on them. 60 episodes a task:
    a pass of 4 streams (2 ranks x 2 workers) ends each stream with part-filled sequences, which
    on 30 BPE-tokenized episodes came to 5.3% of the tokens (the padding test's limit is 5%)."""
    root = tmp_path_factory.mktemp("loader") / "synth"
    synth_dataset(root, SynthConfig(tasks=8, episodes=60, seed=3, min_length=5, max_length=40))
    model = root.parent / "text.model"
    fit_text_model([str(root)], model)
    return str(root), str(model)


def config(synth, **changes) -> DataConfig:
    root, model = synth
    return DataConfig(roots=[root], text_model=model, **{"sequence_length": 256, "shuffle_buffer": 8, **changes})


def take(iterable, count):
    out = []
    for item in iterable:
        out.append(item)
        if len(out) == count:
            break
    return out


def test_batches_follow_the_contract(synth):
    loader = make_loader(config(synth, observation_targets=True), batch_size=4)
    batch = next(iter(loader))
    for key, (dtype, _) in CONTRACT.items():
        assert batch[key].dtype == dtype and batch[key].shape == (4, 256), key
    n = int(batch["num_patches"].sum())  # N image tokens over the batch, in is_image order
    assert n > 0 and n == int(batch["is_image"].sum())
    assert torch.equal(batch["is_image"].sum(1), batch["num_patches"])
    assert batch["patch_rows"].shape == batch["patch_cols"].shape == (n, 2)
    # the frames they come from, as stored: F frames, whose first frame_patches patches are tokens
    shapes, frames = batch["image_shapes"], batch["num_frames"]
    assert shapes.shape == (4, 3) and frames.shape == (4,) and batch["frame_patches"].shape == (int(frames.sum()),)
    assert batch["frames"].dtype == torch.uint8 and len(batch["frames"]) == int((shapes.prod(1) * frames).sum())
    assert int(batch["frame_patches"].sum()) == n
    from trainer.model import real_patches

    patches, _, _ = real_patches(batch)
    assert patches.shape == (n, 4, 16, 16) and patches.abs().max() <= 0.25 + 1e-6
    assert batch["obs_target_mask"].shape == (4, 256)
    # obs targets: observation tokens that are not loss targets
    assert not (batch["obs_target_mask"] & batch["loss_mask"]).any()
    assert (batch["local_positions"][batch["obs_target_mask"]] >= 0).all()
    # per-sequence iteration + collate_sequences gives exactly the batches
    from trainer.data import collate_sequences

    single = GatoDataset(config(synth, observation_targets=True))
    again = collate_sequences(take(single, 4))
    assert again.keys() == batch.keys()
    for key in batch:
        assert torch.equal(again[key], batch[key]), key
    via_loader = next(iter(DataLoader(single, batch_size=4, collate_fn=collate_sequences)))
    assert torch.equal(via_loader["frames"], batch["frames"])


def test_workers_ship_the_same_batches_through_the_ring_and_without_it(synth, monkeypatch):
    """A worker writes batches into shared memory that the training process hands out in
    place; they equal in-process batches, stay intact while held (a later pass reuses the
    ring), and so do batches sent the other way when the ring has no room."""
    from trainer.ring import BatchRing

    def batches(workers):
        return take(make_loader(config(synth, provenance=True, observation_targets=True), batch_size=3,
                                num_workers=workers), 12)

    local = batches(0)
    kept = batches(1)  # held through the next passes
    again = batches(1)  # the same ring, while ``kept`` still lends its memory
    monkeypatch.setattr(BatchRing, "acquire", lambda self, worker, nbytes, timeout=0.05: None)
    fallback = batches(1)
    assert len(kept) == len(again) == len(fallback) == 12
    for expected, *others in zip(local, kept, again, fallback):
        for got in others:
            assert expected.keys() == got.keys()
            for key in expected:
                assert torch.equal(expected[key], got[key]), key
    assert sum(int(b["num_patches"].sum()) for b in kept) > 0


def test_workers_fork_after_arrow_hands_back_its_free_pages(synth, monkeypatch):
    """Before forking workers the loader returns the free pages Arrow's allocator keeps (a
    worker decoding into them takes a copy-on-write fault per page) and freezes the garbage
    collector only around the fork; an in-process loader does neither."""
    import gc

    import pyarrow as pa

    import trainer.data as data

    real = pa.default_memory_pool()
    calls = []

    class Pool:
        def release_unused(self):
            calls.append(gc.get_freeze_count())
            real.release_unused()

    monkeypatch.setattr(data.pa, "default_memory_pool", lambda: Pool())
    frozen_at_fork = []
    real_iter = data.DataLoader.__iter__
    monkeypatch.setattr(data.DataLoader, "__iter__", lambda self: frozen_at_fork.append(gc.get_freeze_count() > 0)
                        or real_iter(self))
    assert len(take(make_loader(config(synth), batch_size=2, num_workers=0), 2)) == 2
    assert calls == [] and frozen_at_fork == [False]
    assert len(take(make_loader(config(synth), batch_size=2, num_workers=1), 2)) == 2
    assert calls == [0] and frozen_at_fork == [False, True]  # released before freezing, frozen for the fork
    assert gc.get_freeze_count() == 0


def test_workers_run_ahead_by_the_prefetch_and_keep_their_freed_heap(synth, monkeypatch):
    """A worker may have PREFETCH_MESSAGES messages out (torch's default of 2 left it waiting
    for requests), a prefetch_factor given to the loader wins, and the ring has room for the
    prefetched messages plus the spare ones; ``keep_freed_heap`` (which workers call) works here."""
    import trainer.data as data
    from trainer.ring import BatchRing

    made, claimed = [], []
    real_loader, real_claim = data.DataLoader, BatchRing.claim

    def loader(*args, **kwargs):
        made.append(kwargs.get("prefetch_factor"))
        return real_loader(*args, **kwargs)

    def claim(workers, arena_bytes, store_bytes=0):
        claimed.append(arena_bytes)
        return real_claim(workers, arena_bytes, store_bytes)

    monkeypatch.setattr(data, "DataLoader", loader)
    monkeypatch.setattr(data.BatchRing, "claim", staticmethod(claim))
    real_keep = data.keep_freed_heap
    assert len(take(make_loader(config(synth), batch_size=2, num_workers=0), 2)) == 2
    assert len(take(make_loader(config(synth), batch_size=2, num_workers=1), 2)) == 2
    assert len(take(make_loader(config(synth), batch_size=2, num_workers=1, prefetch_factor=2), 2)) == 2
    assert made == [None, data.PREFETCH_MESSAGES, 2]
    default, given = claimed  # the in-process loader claims no ring; these are above RING_MIN_BYTES
    assert default * (2 + data.RING_SPARE_MESSAGES) == given * (data.PREFETCH_MESSAGES + data.RING_SPARE_MESSAGES)
    assert real_keep() is True  # glibc on this machine: mallopt took both settings


def test_ring_lends_bytes_until_the_batch_is_gone():
    import gc

    from trainer.ring import BatchRing

    ring = BatchRing(workers=1, arena_bytes=3 * 4096)
    first = ring.acquire(0, 4096)
    second = ring.acquire(0, 8000)
    assert first[:2] == (0, 0) and second[1] == 4096
    assert ring.acquire(0, 4096, timeout=0.01) is None  # full: the caller sends another way
    region = ring.view(0, first[1], 4096)
    ring.lend(region, 0, first[0])
    from trainer.assembly import BatchLayout, as_tensors

    batch = as_tensors(BatchLayout(1, 16, 0, 0, 0), torch.from_numpy(region))  # as the main process does
    held = batch["tokens"][:, 2:5]  # a view of a view keeps the bytes lent
    del region, batch
    gc.collect()
    assert ring.acquire(0, 4096, timeout=0.01) is None  # a tensor still uses the first batch's bytes
    del held
    assert ring.acquire(0, 4096, timeout=0.01)[1] == 0  # free again once it is gone
    assert ring.acquire(0, 4 * 4096) is None  # bigger than the arena


def test_received_batches_keep_their_ring_bytes_lent():
    """The main process's batches over a worker's block hold its ring bytes until the last
    tensor of the block is gone (numpy points a view of the region past it, at the whole
    mapping: a region wrapped that way was released as soon as it was received)."""
    import gc

    from trainer.assembly import BatchLayout
    from trainer.data import GatoDataset
    from trainer.ring import FREE, FULL, BatchRing

    ring = BatchRing(workers=1, arena_bytes=1 << 20)
    layout = BatchLayout(4, 16, 0, 0, 0)
    ticket, offset, buffer = ring.acquire(0, layout.nbytes)
    buffer[:] = 0
    layout.views(buffer)["tokens"][:] = np.arange(64).reshape(4, 16)
    message = {"layout": layout.key(), "batch_rows": [2, 2], "real_tokens": [32, 32], "ring": (0, ticket, offset)}
    first, second = GatoDataset.receive(message, ring)
    del buffer
    gc.collect()
    assert ring.flags[0, ticket] == FULL
    assert first["tokens"].shape == (2, 16) and int(second["tokens"][0, 0]) == 32
    held = second["tokens"][1:]
    del first, second
    gc.collect()
    assert ring.flags[0, ticket] == FULL  # ``held`` still reads the bytes
    assert int(held[0, 15]) == 63
    del held
    gc.collect()
    assert ring.flags[0, ticket] == FREE


def test_ring_steps_over_a_held_batch_instead_of_waiting():
    """A consumer holding one batch must not stall the batches after it: the worker writes
    past the held bytes at once (it waited, then sent every later batch the slow way)."""
    from trainer.ring import BatchRing

    ring = BatchRing(workers=1, arena_bytes=4 * 4096)
    tickets = [ring.acquire(0, 4096) for _ in range(3)]
    assert [t[1] for t in tickets] == [0, 4096, 8192]
    ring.release(0, tickets[0][0])
    ring.release(0, tickets[2][0])  # the batch at 4096 is still held
    fourth = ring.acquire(0, 4096, timeout=0)
    wrapped = ring.acquire(0, 4096, timeout=0)
    assert fourth[1] == 3 * 4096 and wrapped[1] == 0
    stepped = ring.acquire(0, 4096, timeout=0)  # the head is at the held batch: the next free bytes
    assert stepped is not None and stepped[1] == 8192
    assert ring.acquire(0, 4096, timeout=0) is None  # now every byte is out
    ring.release(0, wrapped[0])
    assert ring.acquire(0, 2 * 4096, timeout=0) is None  # no two free pages side by side
    assert ring.acquire(0, 4096, timeout=0)[1] == 0


def test_masks_only_on_actions_and_text(synth):
    dataset = GatoDataset(config(synth, provenance=True))
    catalog = dataset.catalog
    for sample in take(dataset, 60):
        tokens, loss, local = sample["tokens"], sample["loss_mask"], sample["local_positions"]
        real = sample["attention_mask"]
        assert real.all() or (~real[real.sum():]).all()  # padding only at the end
        assert not loss[tokens == SEPARATOR].any() and not loss[tokens == PAD].any()
        assert not loss[tokens == IMAGE_PLACEHOLDER].any()
        action = real & (local == -1) & (tokens != SEPARATOR)
        assert loss[action].all()  # every action token is a target
        task = catalog.task_names[int(catalog.episode_task[int(sample["token_episode"][0])])]
        observed_targets = loss & (local >= 0)
        if catalog.layouts[task].has_text:  # text tokens follow the 12 discrete values of a synth-grid step
            assert (local[observed_targets] >= 12).all() and observed_targets.any()
        else:
            assert not observed_targets.any()  # continuous/discrete/image observations are never targets
        assert (tokens[~loss & real & (local >= 0)] != SEPARATOR).all()


def test_prompt_rate_and_end_uniform_split(synth):
    dataset = GatoDataset(config(synth, sequence_length=128, provenance=True, shuffle_buffer=1))
    catalog = dataset.catalog
    kinds = Counter()
    starts = {}
    for sample in take(dataset, 1600):
        kind = int(sample["prompt_kind"])
        kinds[kind] += 1
        if kind:
            prompt = sample["is_prompt"]
            episode = sample["token_episode"][prompt]
            main_episode = int(sample["token_episode"][~prompt][0])
            assert len(set(episode.tolist())) == 1 and int(episode[0]) != main_episode  # another episode
            number = int(episode[0])
            assert catalog.episode_task[number] == catalog.episode_task[main_episode]
            assert catalog.episode_source[number] == catalog.episode_source[main_episode]
            starts.setdefault(kind, []).append(int(sample["token_offset"][prompt][0]))
            if kind == 1:  # from the end: the prompt's last token is its episode's last
                layout = catalog.layouts[catalog.task_names[int(catalog.episode_task[number])]]
                if not layout.has_text:
                    total = int(catalog.episode_length[number]) * layout.min_step_tokens
                    assert int(sample["token_offset"][prompt][-1]) == total - 1
    prompted = kinds[1] + kinds[2]
    assert 0.21 <= prompted / 1600 <= 0.29, kinds
    assert 0.4 <= kinds[1] / prompted <= 0.6, kinds
    assert np.mean(starts[2]) < np.mean(starts[1])  # uniform prompts start earlier on average


def test_no_window_twice_across_two_workers_and_two_ranks(synth):
    seen = []
    for rank in range(2):
        dataset = GatoDataset(config(synth, passes=1, provenance=True, prompt_probability=0.0), rank=rank, world_size=2)
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        seen += [(rank, s["token_episode"][s["attention_mask"]].numpy(), s["token_offset"][s["attention_mask"]].numpy(),
                  s["local_positions"].numpy()) for s in loader]
    catalog = dataset.catalog
    starts = Counter((int(ep[0]), int(off[0])) for _, ep, off, _ in seen)
    assert max(starts.values()) == 1  # no sequence starts at the same place twice
    coverage = Counter()
    for _, episode, offset, _ in seen:
        coverage.update(zip(episode.tolist(), offset.tolist()))
    # every token of every episode is served; only a sequence's final, cut timestep repeats
    total = 0
    for number in range(catalog.num_episodes):
        task = catalog.task_names[int(catalog.episode_task[number])]
        layout = catalog.layouts[task]
        if not layout.has_text:
            total += int(catalog.episode_length[number]) * layout.min_step_tokens
    covered_no_text = sum(1 for (ep, _) in coverage
                          if not catalog.layouts[catalog.task_names[int(catalog.episode_task[ep])]].has_text)
    assert covered_no_text == total
    assert max(coverage.values()) <= 2
    ranks_of = {}
    for rank, episode, _, _ in seen:
        for number in set(episode.tolist()):
            ranks_of.setdefault(number, set()).add(rank)
    assert all(len(r) == 1 for r in ranks_of.values())  # an episode belongs to one rank per epoch
    padding = sum(len(s[3]) - len(s[1]) for s in seen) / sum(len(s[3]) for s in seen)
    assert padding < 0.05


def test_exact_resume_with_workers(synth):
    def run(loader, count):
        return [b for _, b in zip(range(count), loader)]

    first = make_loader(config(synth, provenance=True), batch_size=3, num_workers=2)
    run(first, 5)
    state = first.state_dict()
    expected = run(first, 4)  # a second iter() continues where the first stopped
    resumed = make_loader(config(synth, provenance=True), batch_size=3, num_workers=2)
    resumed.load_state_dict(state)
    got = run(resumed, 4)
    for a, b in zip(expected, got):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    other = make_loader(config(synth, seed=1), batch_size=3, num_workers=2)
    with pytest.raises(ValueError, match="fingerprint"):
        other.load_state_dict(state)


def test_exact_resume_in_process(synth):
    dataset = GatoDataset(config(synth, provenance=True, shuffle_buffer=16))
    take(dataset, 37)
    state = dataset.state_dict()
    rest = take(dataset, 60)[37:]  # a fresh iter() starts over; sequences 38..60
    again = GatoDataset(config(synth, provenance=True, shuffle_buffer=16))
    again.load_state_dict(state)
    for a, b in zip(rest, take(again, 23)):
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["frames"], b["frames"])


def test_mixture_default_and_upweighted(synth, tmp_path):
    dataset = GatoDataset(config(synth, provenance=True, shuffle_buffer=1, sequence_length=64))
    assert all(w == pytest.approx(1 / 8) for w in dataset.weights.values())
    mixture = tmp_path / "mixture.yaml"
    mixture.write_text("domains:\n  synth-state: 3\ntasks:\n  synth-grid/task-1: 0\n")
    weighted = GatoDataset(config(synth, mixture=str(mixture), weight=("synth-arm/task-3=3",), provenance=True,
                                  shuffle_buffer=1, sequence_length=64))
    w = weighted.weights
    assert w["synth-state/task-0"] == pytest.approx(3 / 12) and w["synth-grid/task-1"] == 0
    assert w["synth-grid/task-5"] == pytest.approx(1 / 6) and w["synth-arm/task-3"] == pytest.approx(1 / 6 * 3 / 4)
    counts = Counter()
    catalog = weighted.catalog
    for sample in take(weighted, 1200):
        counts[catalog.task_names[int(catalog.episode_task[int(sample["token_episode"][~sample["is_prompt"]][0])])]] += 1
    assert counts["synth-grid/task-1"] == 0
    assert abs(counts["synth-state/task-0"] / 1200 - 0.25) < 0.05
    with pytest.raises(ValueError, match="not in the datasets"):
        GatoDataset(config(synth, weight=("atari=2",)))


def atari_like_episode(task: str, index: int, length: int) -> Episode:
    rng = np.random.default_rng(index)
    frames = np.zeros((length, 84, 84, 4), np.uint8)
    frames[:, 10:20, 30:40, :] = rng.integers(0, 255, (length, 1, 1, 4), dtype=np.uint8)
    return Episode(task=task, steps={"obs_image": frames, "act_discrete": rng.integers(0, 6, (length, 1)).astype(np.int32)},
                   rewards=np.zeros(length, np.float32), terminated=np.eye(1, length, length - 1, dtype=bool)[0],
                   truncated=np.zeros(length, bool), run_id="run", run_index=index, source="training")


def test_row_group_units_images_and_uri_roots(tmp_path):
    """An image task whose step file has many row groups, read through a file:// URI root."""
    task = "atari/pong"
    spec = TaskSpec(domain="atari", env_id="ALE/Pong-v5", observation={"obs_image": ModalitySpec([84, 84, 4], "uint8")},
                    action={"act_discrete": ModalitySpec([1], "int32", n=6)})
    root = tmp_path / "atari"
    from shards import StepFileWriter, index_table, write_index, write_manifest

    with StepFileWriter(root, task, "part-0", spec.modalities, row_group_bytes=3_000_000) as writer:
        for i in range(12):
            writer.add(atari_like_episode(task, i, 40 + i))
    write_index(root, index_table(writer.index_rows))
    write_manifest(root, Manifest(name="atari", tasks={task: spec}))
    dataset = GatoDataset(DataConfig(roots=[f"file://{root}"], sequence_length=512, passes=1, provenance=True,
                                     prompt_probability=0.0, shuffle_buffer=4))
    units = dataset.catalog.units(task, 1)
    assert 2 <= len(units) < 12  # grouped by row group, several episodes each
    samples = list(dataset)
    served = sum(int(s["attention_mask"].sum()) for s in samples)
    assert served >= sum(40 + i for i in range(12)) * 38  # 36 patches + separator + action per step
    sample = samples[0]
    n = int(sample["num_patches"])
    assert n == int(sample["is_image"].sum()) and n > 36
    episode = int(sample["token_episode"][0])
    first_offset = int(sample["token_offset"][0])
    assert first_offset % 38 == 0  # sequences start on a timestep
    step = first_offset // 38
    run_index = _run_index(dataset, episode)
    frames = atari_like_episode(task, run_index, 40 + run_index).steps["obs_image"]
    from trainer.data import collate_sequences
    from trainer.model import real_patches
    from trainer.patches import image_to_patches

    expected, rows, cols = image_to_patches(frames[step])
    assert sample["image_shapes"].tolist() == [84, 84, 4]
    assert torch.equal(sample["frames"][:84 * 84 * 4], torch.from_numpy(frames[step].reshape(-1)))  # as stored
    patches, got_rows, got_cols = real_patches(collate_sequences([sample]))
    torch.testing.assert_close(patches[:36], torch.from_numpy(expected))
    assert torch.equal(got_rows[:36], torch.from_numpy(rows)) and torch.equal(got_cols[:36], torch.from_numpy(cols))
    # a sequence's last timestep may be cut inside its image: the patches stop with the tokens
    cut = [s for s in samples if int(s["frame_patches"][-1]) < 36]
    assert cut, "some sequence ends inside an image"
    for s in cut:
        assert len(real_patches(collate_sequences([s]))[0]) == int(s["num_patches"]) == int(s["is_image"].sum())
    assert sample["local_positions"][:38].tolist() == list(range(36)) + [-1, -1]


def _run_index(dataset: GatoDataset, episode: int) -> int:
    from shards.reader import Dataset

    root = Dataset(dataset.catalog.roots[0])
    index = root.index.to_pylist()
    wanted = int(dataset.catalog.episode_id[episode])
    return next(r["run_index"] for r in index if r["episode_id"] == wanted)


def test_bad_inputs_give_clear_errors(synth, tmp_path):
    root, _ = synth
    with pytest.raises(ValueError, match="obs_text"):
        GatoDataset(DataConfig(roots=[root]))
    with pytest.raises(ValueError, match="prompt_probability"):
        GatoDataset(config(synth, prompt_probability=2.0))
    with pytest.raises(ValueError, match="too small"):
        dataset = GatoDataset(config(synth, passes=1), rank=0, world_size=1)
        from trainer.sequences import ShardSampler

        ShardSampler(dataset.catalog, dataset.weights, dataset.settings, shard=299, num_shards=300)


def test_model_input_of_loader_frames_is_their_cut_and_scaled_patches(synth):
    """The model cuts the shipped frames on its device exactly as the host cutter does."""
    from trainer.model import real_patches
    from trainer.patches import cut_patches, normalize_patches

    batch = next(iter(make_loader(config(synth, seed=5), batch_size=6)))
    patches, rows, cols = real_patches(batch)
    n = int(batch["num_patches"].sum())
    assert n > 0 and patches.shape == (n, 4, 16, 16) and patches.dtype == torch.float32
    expected, offset, frame = [], 0, 0
    for (h, w, c), count in zip(batch["image_shapes"].tolist(), batch["num_frames"].tolist()):
        pixels = batch["frames"][offset:offset + count * h * w * c].numpy().reshape(count, h, w, c)
        offset += count * h * w * c
        for cut in cut_patches(pixels):
            expected.append(normalize_patches(cut[:int(batch["frame_patches"][frame])]))
            frame += 1
    assert torch.equal(patches, torch.from_numpy(np.concatenate(expected)))
    assert torch.equal(rows, batch["patch_rows"]) and torch.equal(cols, batch["patch_cols"])


def test_inspect_cli_prints_json(synth, capsys):
    import json

    from trainer.data import main

    root, model = synth
    assert main([root, "--text-model", model, "--sequences", "40", "--sequence-length", "128", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(row["sequences"] for row in report["rows"]) == 40
    assert {row["task"] for row in report["rows"]} == set(GatoDataset(config(synth)).weights)
    assert main([root, "--sequences", "5"]) == 2  # text tasks without a text model: one-line error
    assert "obs_text" in capsys.readouterr().err


def state_episode(task: str, index: int, length: int, bad: bool = False) -> Episode:
    obs = np.linspace(-2, 2, length * 3, dtype=np.float32).reshape(length, 3)
    if bad:
        obs[length // 2, 1] = np.nan
    return Episode(task=task, steps={"obs_continuous": obs, "act_continuous": np.zeros((length, 2), np.float32)},
                   rewards=np.zeros(length, np.float32), terminated=np.eye(1, length, length - 1, dtype=bool)[0],
                   truncated=np.zeros(length, bool), run_index=index, source="scripted")


def state_manifest(*tasks: str) -> Manifest:
    spec = TaskSpec(domain="toy", env_id="toy-v0", observation={"obs_continuous": ModalitySpec([3], "float32")},
                    action={"act_continuous": ModalitySpec([2], "float32", low=-1, high=1)})
    return Manifest(name="toy", tasks={task: TaskSpec(**{**vars(spec), "domain": task.split("/")[0]}) for task in tasks})


def test_several_roots_and_bad_values(tmp_path):
    write_dataset(tmp_path / "a", [state_episode("toy/a", i, 30) for i in range(6)], state_manifest("toy/a"))
    write_dataset(tmp_path / "b", [state_episode("other/b", i, 30) for i in range(6)], state_manifest("other/b"))
    dataset = GatoDataset(DataConfig(roots=[str(tmp_path / "a"), str(tmp_path / "b")], sequence_length=64,
                                     passes=1, provenance=True))
    assert dataset.weights == {"other/b": 0.5, "toy/a": 0.5}  # two domains, one task each
    served, tasks = set(), Counter()
    for sample in dataset:
        real = sample["attention_mask"] & ~sample["is_prompt"]
        episodes, offsets = sample["token_episode"][real].tolist(), sample["token_offset"][real].tolist()
        served.update(zip(episodes, offsets))
        tasks.update(dataset.catalog.episode_task[episodes].tolist())
    assert len(served) == 12 * 30 * 6  # every token of both roots (6 tokens per step) served
    assert tasks[0] > 0 and tasks[1] > 0
    write_dataset(tmp_path / "bad", [state_episode("toy/a", 0, 30), state_episode("toy/a", 1, 30, bad=True)],
                  state_manifest("toy/a"))
    with pytest.raises(ValueError, match="non-finite") as error:
        list(GatoDataset(DataConfig(roots=[str(tmp_path / "bad")], sequence_length=64, passes=1)))
    assert "toy/a" in str(error.value) and "episode" in str(error.value)
