"""Benchmark: training throughput of the CPU Gato configs, their MFU, and the loader's cost.

    python bench/train.py                         # writes bench/results/train.json
    python bench/train.py --configs gato-tiny --steps 10 --threads 2

For each config, in the same run:
- the matmul peak of this CPU: float32 torch.mm of 1024x1024 matrices, best of several,
  measured before and after each config (the best is kept: other jobs share the machine);
- FLOPs of one training step (forward + backward) counted by torch's FlopCounterMode on a
  real batch, so MFU = (step FLOPs / step time) / matmul peak;
- step time on batches from the real loader (trainer.data, reading a synthetic shard
  dataset) and on the very same batches drained beforehand into memory; they alternate step by step so both see the
  same machine load, and the ratio real / in-memory is reported (target <= 1.05);
- deployment: seconds per env step of GatoAgent with its KV cache vs recomputing the
  512-token window for every action token (gato-small, a 9-token continuous-control step).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shards.synth import SynthConfig, synth_dataset  # noqa: E402
from trainer.data import DataConfig, make_loader  # noqa: E402
from trainer.model import CONFIGS, Gato  # noqa: E402
from trainer.text_tokenizer import fit_text_model  # noqa: E402


@dataclass
class BenchConfig:
    """Tokens/s, FLOP/s and MFU of small Gato configs; real loader vs in-memory batch."""

    configs: list[str] = field(default_factory=lambda: ["gato-tiny", "gato-small"])
    sequence_length: list[int] = field(default_factory=lambda: [256, 512])
    """sequence length per config (same order as --configs)"""
    batch_size: int = 8
    steps: int = 12
    """measured steps per mode (after 2 warm-up steps)"""
    threads: int = 1
    """torch threads (the machine is shared; one thread gives stable numbers)"""
    num_workers: list[int] = field(default_factory=lambda: [0, 1])
    """loader worker processes to measure (0 = load in the training process); the first
    worker count above 0 (else 0) gives the headline loader_ratio"""
    deploy_steps: int = 40
    """env steps timed for the deployment comparison (KV cache vs recomputing the window)"""
    out: str = str(REPO / "bench/results/train.json")


def main(argv: list[str] | None = None) -> dict:
    config = tyro.cli(BenchConfig, args=argv)
    torch.set_num_threads(config.threads)
    peak = matmul_peak()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        synth_dataset(root, SynthConfig(tasks=4, episodes=48, seed=0, max_length=80))
        text = Path(tmp) / "text.model"
        fit_text_model([str(root)], str(text))
        for name, length in zip(config.configs, config.sequence_length):
            results.append(bench_config(name, length, root, text, config))
            peak = max(peak, matmul_peak())  # the machine is shared: keep the best peak seen
        deploy = bench_deploy(root, config)
    for row in results:
        row["mfu"] = row["achieved_flops"] / peak
    report = {
        "bench": "train", "threads": config.threads, "batch_size": config.batch_size,
        "matmul_peak_flops": peak, "configs": results,
        "loader_ratio_max": max(r["loader_ratio"] for r in results),
        "target": "loader_ratio <= 1.05",
        "deploy": deploy,
    }
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(config.out).with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(config.out)
    print(json.dumps(report, indent=2))
    return report


def bench_deploy(root: Path, config: BenchConfig) -> dict:
    """Seconds per env step of acting with the KV cache vs recomputing the whole window for
    every action token (what a deployment without a cache does), on a full context."""
    from shards import Dataset
    from trainer.deploy import GatoAgent, TokenChunk

    dataset = Dataset(root)
    task = next(t for t in dataset.tasks if t.startswith("synth-state"))
    spec = dataset.manifest.tasks[task]
    episode = dataset.episode(int(dataset.index.to_pydict()["episode_id"][0]))
    observations = [{"obs_continuous": row} for row in episode.steps["obs_continuous"]]
    torch.manual_seed(0)
    model = Gato(CONFIGS["gato-small"]).eval()
    context = 512
    agent = GatoAgent(model, spec, None, context=context, seed=0)
    agent.reset()
    for i in range(context // 9 + 5):  # fill the window first (9 tokens per step)
        agent.act(observations[i % len(observations)])
    start = time.perf_counter()
    for i in range(config.deploy_steps):
        agent.act(observations[i % len(observations)])
    cached = (time.perf_counter() - start) / config.deploy_steps

    # without a cache: the window is recomputed for each of the step's action tokens
    window = TokenChunk.empty()
    for i in range(context // 9 + 1):
        window = window + _step_chunk(agent, observations[i % len(observations)])
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(config.deploy_steps):
            window = window + _step_chunk(agent, observations[i % len(observations)])
            tail = window.tokens[-context:], window.local_positions[-context:], window.is_image[-context:]
            no_patches = [torch.from_numpy(a[:0]) for a in (window.patches, window.patch_rows, window.patch_cols)]
            for _ in range(len(agent.ranges)):
                t = [torch.from_numpy(np.ascontiguousarray(a))[None] for a in tail]
                model.hidden_states(*t, *no_patches)
    recomputed = (time.perf_counter() - start) / config.deploy_steps
    return {"config": "gato-small", "context": context, "task": task, "tokens_per_step": 9,
            "step_s_kv_cache": cached, "step_s_recompute": recomputed, "speedup": recomputed / cached}


def _step_chunk(agent, observation: dict):
    from trainer.deploy import TokenChunk
    from trainer.tokenizer import tokenize_observation

    obs = tokenize_observation(observation, agent.spec, None)
    action = np.full(len(agent.ranges), 32512, dtype=np.int64)
    return TokenChunk(np.concatenate((obs.tokens, action)), np.concatenate((obs.local_positions, np.full(len(action), -1))),
                      np.zeros(len(obs.tokens) + len(action), bool), obs.patches, obs.patch_rows, obs.patch_cols)


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    """Best float32 matmul FLOP/s over ``repeats`` products of n x n matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def bench_config(name: str, length: int, root: Path, text: Path, config: BenchConfig) -> dict:
    torch.manual_seed(0)
    model = Gato(CONFIGS[name])
    optimizer = model.configure_optimizer(1e-3, 0.1, (0.9, 0.95))
    data = DataConfig(roots=[str(root)], text_model=str(text), sequence_length=length)
    # Two loaders with the same settings yield the same batches: one is drained into memory
    # first, the other is read while training, so both modes compute on identical batches.
    preloaded = make_loader(data, config.batch_size, 0)
    stream = iter(preloaded)
    in_memory = [next(stream) for _ in range(config.steps + 2)]
    loaders = {w: make_loader(data, config.batch_size, w) for w in config.num_workers}
    streams = {w: iter(loader) for w, loader in loaders.items()}

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    from torch.utils.flop_counter import FlopCounterMode

    step_flops = []
    for batch in in_memory:
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(batch)
            out.loss.backward()
        step_flops.append(counter.get_total_flops())
    for i in range(2):  # warm-up
        for stream in streams.values():
            step(next(stream))
        step(in_memory[i])
    real_times: dict[int, list[float]] = {w: [] for w in streams}
    memory_times: list[float] = []
    tokens = 0
    for i in range(2, config.steps + 2):  # interleaved, so every mode sees the same machine load
        for w, stream in streams.items():
            start = time.perf_counter()
            batch = next(stream)
            step(batch)
            real_times[w].append(time.perf_counter() - start)
            assert torch.equal(batch["tokens"], in_memory[i]["tokens"])
        start = time.perf_counter()
        step(in_memory[i])
        memory_times.append(time.perf_counter() - start)
        tokens += int(in_memory[i]["attention_mask"].sum())
    memory = statistics.median(memory_times)
    ratios = {w: statistics.median(times) / memory for w, times in real_times.items()}
    headline = next((w for w in config.num_workers if w > 0), config.num_workers[0])
    flops = statistics.mean(step_flops[2:])
    achieved = flops / memory
    return {
        "config": name, "params": model.num_params(), "sequence_length": length, "batch_size": config.batch_size,
        "step_flops": flops, "step_s_in_memory": memory,
        "step_s_real_loader": {str(w): statistics.median(t) for w, t in real_times.items()},
        "loader_ratio_by_workers": {str(w): r for w, r in ratios.items()},
        "loader_ratio": ratios[headline], "loader_workers": headline,
        "tokens_per_s": tokens / sum(memory_times),
        "achieved_flops": achieved,
        "padding_fraction": loaders[headline].padding_fraction,
    }


if __name__ == "__main__":
    main()
