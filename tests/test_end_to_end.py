"""The whole pipeline at toy scale: collect -> validate -> curate -> tokenizer -> train -> evaluate.

    .venv/bin/python -m pytest tests/test_end_to_end.py -q

One easy task (babyai/GoToRedBall): the BabyAI bot's episodes plus random-policy episodes,
collected on the session's local Ray, curated with Gato's filter, a tiny Gato trained for a few
hundred steps by the real trainer CLI, then evaluated back in the environment by the real
evaluation CLI. The trained model must beat the random policy by a clear margin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shards import Dataset, validate

REPO = Path(__file__).resolve().parents[1]
TASK = "babyai/GoToRedBall"
EPISODES = 50
SPEC = f"""
name: e2e
root: unused
seed: 0
defaults:
  random_episodes: {EPISODES}
domains:
  babyai:
    expert: {{kind: scripted}}
    episodes_per_unit: 200
    num_envs: 8
tasks:
  - id: {TASK}
    rollout_episodes: 400
"""
# The tiny Gato of the test: gato-tiny's blocks, short sequences so a step is cheap.
TRAIN_FLAGS = ["--config", str(REPO / "trainer" / "configs" / "gato-tiny.yaml"), "--steps", "300",
               "--batch-size", "8", "--lr", "0.003", "--warmup-steps", "30", "--checkpoint-every", "300",
               "--loader.sequence-length", "256", "--num-workers", "0", "--threads", "2", "--seed", "0",
               "--no-progress"]


@pytest.mark.slow
def test_pipeline_trains_a_gato_that_beats_the_random_policy(ray_local, tmp_path):
    from collectors.collect import CollectConfig, collect

    spec = tmp_path / "e2e.yaml"
    spec.write_text(SPEC)
    data, curated, run = tmp_path / "data", tmp_path / "curated", tmp_path / "run"

    result = collect(CollectConfig(spec=str(spec), out=str(data), progress=False))
    assert result.complete, result
    assert validate(data) == []

    _cli("-m", "curation", "select", str(data), "--out", str(curated), "--report")
    assert (curated / "report.html").exists()
    index = Dataset(curated).index.to_pandas()
    assert set(index.source) == {"scripted"}  # random episodes only give the reference return

    _cli("-m", "trainer.tokenizer", "fit", str(curated), "--out", str(tmp_path / "text.model"))
    _cli("-m", "trainer.train", "--data", str(curated), "--out", str(run),
         "--loader.text-model", str(tmp_path / "text.model"), *TRAIN_FLAGS)
    losses = [float(line.split(",")[1]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert losses[-1] < 0.3 * losses[0], losses

    table = json.loads(_cli("-m", "trainer.evaluate", "--checkpoint", str(run), "--tasks", TASK,
                            "--episodes", str(EPISODES), "--seed", "1000", "--json", "--no-progress"))
    row = table["rows"][0]
    randoms = Dataset(data).index.to_pandas().query("source == 'random'")
    random_success = float(randoms.success.mean())
    # Measured on this machine (two runs, bit-identical: seeded data, 2 torch threads): the random
    # episodes succeed 18% (return 0.077), the trained model 54% (return 0.347, 31 normalized).
    # A 0.2 success margin is about 3 standard deviations of 50 Bernoulli episodes (sd <= 0.07)
    # and leaves the measured model 0.16 of headroom; the return margin likewise.
    assert row["success_rate"] >= random_success + 0.2, (row, random_success)
    assert row["mean_return"] > float(randoms["return"].mean()) + 0.15, (row, float(randoms["return"].mean()))


def _cli(*args: str) -> str:
    """Run ``python ARGS`` as a user would; fail the test with its stderr on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout
