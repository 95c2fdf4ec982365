"""The training loop: CLI smoke run, exact resume, config errors, DDP on CPU with gloo."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import CHECKPOINT_DIR, LATEST, load_checkpoint
from trainer.schedule import warmup_cosine
from trainer.train import TrainConfig, config_from_yaml, main, parse_config, train

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_and_text(tmp_path_factory):
    from shards.synth import SynthConfig, synth_dataset
    from trainer.text_tokenizer import fit_text_model

    root = tmp_path_factory.mktemp("train") / "synth"
    synth_dataset(root, SynthConfig(tasks=4, episodes=16, seed=0, max_length=30))
    text = root.parent / "text.model"
    fit_text_model([str(root)], str(text))
    return root, text


def tiny_config(root, text, out, **overrides) -> TrainConfig:
    config = parse_config(["--data", str(root), "--out", str(out), "--config", str(REPO / "trainer/configs/gato-tiny.yaml"),
                           "--loader.text-model", str(text), "--loader.sequence-length", "64", "--batch-size", "2",
                           "--warmup-steps", "2", "--log-every", "1", "--no-progress", "--threads", "1", "--num-workers", "0"])
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def read_losses(run: Path) -> list[tuple[int, float]]:
    with (run / "metrics.csv").open() as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_resume_gives_the_same_loss_curve(data_and_text, tmp_path):
    root, text = data_and_text
    straight = tmp_path / "straight"
    summary = train(tiny_config(root, text, straight, steps=8, checkpoint_every=4))
    assert summary["step"] == 8
    interrupted = tmp_path / "interrupted"
    train(tiny_config(root, text, interrupted, steps=8, checkpoint_every=2, stop_after_steps=5))
    # simulate a crash after step 5 but before its checkpoint: latest is step 4 again
    folder = interrupted / CHECKPOINT_DIR
    (folder / "step-000005.pt").unlink()
    (folder / LATEST).write_text("step-000004.pt")
    assert [s for s, _ in read_losses(interrupted)] == [1, 2, 3, 4, 5]
    train(tiny_config(root, text, interrupted, steps=8, checkpoint_every=2))
    assert read_losses(interrupted) == read_losses(straight)  # bit-identical, row 5 redone once
    state = load_checkpoint(interrupted)
    assert state["step"] == 8 and state["data_roots"] == [str(root.resolve())]
    assert torch.equal(state["model"]["blocks.0.attn.qkv.weight"], load_checkpoint(straight)["model"]["blocks.0.attn.qkv.weight"])


def test_resume_accepts_a_checkpoint_older_than_a_model_field_but_not_another_model(data_and_text, tmp_path):
    """A checkpoint written before a model field existed (no ``action_regression`` in its config)
    resumes with the field's default; a run asking for a different model is refused."""
    root, text = data_and_text
    run = tmp_path / "old"
    train(tiny_config(root, text, run, steps=2, checkpoint_every=2))
    path = run / CHECKPOINT_DIR / "step-000002.pt"
    state = torch.load(path, weights_only=False)
    del state["model_config"]["action_regression"]
    torch.save(state, path)
    assert train(tiny_config(root, text, run, steps=3, checkpoint_every=2))["step"] == 3
    other = tiny_config(root, text, run, steps=4)
    other.model.action_regression = 1.0
    with pytest.raises(ValueError, match="model config differs"):
        train(other)


def test_cli_smoke_with_accumulation_and_clear_errors(data_and_text, tmp_path, capsys):
    root, text = data_and_text
    out = tmp_path / "cli"
    args = ["--data", str(root), "--config", str(REPO / "trainer/configs/gato-tiny.yaml"), "--out", str(out),
            "--loader.text-model", str(text), "--loader.sequence-length", "64", "--batch-size", "2", "--steps", "3",
            "--grad-accum", "2", "--warmup-steps", "1", "--log-every", "1", "--no-progress", "--threads", "1", "--num-workers", "0"]
    assert main(args) == 0
    rows = read_losses(out)
    assert [s for s, _ in rows] == [1, 2, 3]
    assert (out / "tensorboard").is_dir() and list((out / "tensorboard").iterdir())
    assert main(args + ["--no-resume"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(args[:-2] + ["--steps", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--steps=0" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: gato-tiny\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        config_from_yaml(bad)


def test_warmup_cosine_schedule():
    f = warmup_cosine(warmup=10, total=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(10, 120))
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine(20, 10)


DDP_SCRIPT = textwrap.dedent('''
    import copy, sys, torch
    import torch.distributed as dist
    from trainer.model import Gato
    from trainer.train import parse_config, Trainer
    root, text, out = sys.argv[1:4]
    config = parse_config(["--data", root, "--out", out, "--loader.text-model", text, "--loader.sequence-length", "64",
                           "--batch-size", "2", "--grad-clip", "0", "--warmup-steps", "0", "--steps", "3",
                           "--no-progress", "--threads", "1", "--num-workers", "0"])
    config.validate()
    trainer = Trainer(config)
    initial = copy.deepcopy(trainer.model.state_dict())
    trainer.train_step()
    synced = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in trainer.model.parameters()])
    local_model = Gato(config.model)
    local_model.load_state_dict(initial)
    local_model.train()
    local_model(trainer.last_batch).loss.backward()
    local = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in local_model.parameters()])
    torch.save({"tokens": trainer.last_batch["tokens"], "synced": synced, "local": local,
                "weights": torch.cat([p.detach().flatten() for p in trainer.model.parameters()])},
               f"{out}/rank{trainer.rank}.pt")
    trainer.config.log_every, trainer.config.checkpoint_every = 1, 2
    trainer.run()  # the whole loop: logs reduced over ranks, checkpoints gathered from both
    trainer.close()
''')


@pytest.mark.slow
def test_ddp_two_processes_gloo(data_and_text, tmp_path):
    root, text = data_and_text
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                    str(script), str(root), str(text), str(tmp_path)], check=True, env=env, cwd=tmp_path,
                   capture_output=True, timeout=300)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert not torch.equal(r0["tokens"], r1["tokens"])  # each rank drew its own sequences
    assert torch.equal(r0["synced"], r1["synced"])  # all-reduced gradients agree exactly
    # ... and they are the mean of the two ranks' own gradients (patch positions are sampled,
    # so the local recomputation draws different noise: compare loosely)
    mean = (r0["local"] + r1["local"]) / 2
    assert torch.nn.functional.cosine_similarity(mean, r0["synced"], dim=0) > 0.99
    assert not torch.allclose(r0["local"], r1["local"])
    assert torch.equal(r0["weights"], r1["weights"])  # same step applied on both ranks
    state = load_checkpoint(tmp_path)
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["loader"]["rank"] == 0 and state["ranks"][1]["loader"]["rank"] == 1
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])
    assert [s for s, _ in read_losses(tmp_path)] == [1, 2, 3]
