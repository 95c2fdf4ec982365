"""Benchmark: the Gato sequence loader vs plain pyarrow decoding the same step files.

    .venv/bin/python bench/loader.py                    # quickstart-like data + a 2 GB stream
    .venv/bin/python bench/loader.py --big-gb 0.5 --repeats 1
    .venv/bin/python bench/loader.py --root runs/demo/data   # a dataset you collected

Data (written to a temp dir with shards' own writer, deleted afterwards): the quickstart's
composition as collected on 2026-12-05 (``QUICKSTART``: its tasks, sources, files of
episodes and episode lengths, ~710k steps), with synthetic values shaped and compressible
like the real ones: BabyAI, 12k bot episodes of 1-34 steps (one code per grid cell, 50
discrete values, a mission string, 1 discrete action); Meta-World, 820 episodes of 500 steps
(39 continuous values, 4 continuous actions); DMC cartpole, 184 episodes of 1000 steps (5
continuous values, 1 continuous action); Atari, 8 episodes of ~850 steps (84x84x4 stacked
frames); Procgen coinrun, 123 episodes of 31-1000 steps (64x64x3 frames). Until 2026-12-04
the BabyAI part was the layout before cell packing (148 discrete values a step, 24k
episodes of 6-20 steps: 300k of the 523k steps and most of the tokens), DMC had 20
episodes and there was no Procgen; on that data a 1-worker pass reached 0.26 of raw.

Measured in one run (medians of ``repeats``):
- raw: pyarrow reading every row group of the same step files (all columns, one thread),
  steps/s and decoded MB/s: the ceiling for anything that reads these bytes; measured at the
  start and again right before each loader setting (each setting's ratio uses its own);
- loader: one full pass (``passes=1``, so every step is served once) through
  ``make_loader`` with 0 (in-process), 1 and 2 workers, batch 8, L = 1024: steps/s,
  tokens/s, and steps/s as a fraction of raw (target >= 0.30 with 1 worker), overall and per
  domain (1 worker). A pass is a fresh loader, so each timing includes starting the workers
  and their first reads; that start is also reported on its own (``first_batch_seconds``:
  from ``iter()`` to the first batch in the main process), with the ratio of the rest of
  the pass (``fraction_of_raw_after_first_batch``, context only: the target is on the whole
  pass). Batches are the contract's (frames as stored: the model cuts and scales them on its
  device), received in the main process;
- padding: the fraction of padded tokens in that pass and in an endless stream (target <= 0.05);
- memory: peak RSS (main process + workers, sampled every 50 ms with psutil) while streaming
  an image-only dataset of ``big_gb`` GB on disk (incompressible frames) and one a tenth of
  that size: flat means the two peaks are close.
Context figures (same run): ``cpu_fraction_of_raw``, the same ratio in CPU seconds (main +
workers), steadier than wall time on a shared machine, and the load average next to each
setting.
Prints JSON and writes bench/results/loader.json. The machine's load average is recorded:
on a shared 2-core machine the runs with DataLoader workers compete with other processes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil
import pyarrow.parquet as pq
import tyro

from shards import Episode, Manifest, ModalitySpec, StepFileWriter, TaskSpec, index_table, write_index, write_manifest
from shards.reader import Dataset
from trainer.data import DataConfig, make_loader
from trainer.text_tokenizer import fit_text_model

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"


@dataclass
class BenchConfig:
    """Sizes and repeats (defaults: about the quickstart's steps and episode shapes)."""

    scale: float = 1.0
    """episodes of each quickstart task and source, as a multiple of the quickstart's (~710k steps at 1)"""
    root: str | None = None
    """bench this dataset instead of a synthetic quickstart (e.g. runs/demo/data, the demo's collection)"""
    text_model: str | None = None
    """the SentencePiece model for ``root``'s text (default: fitted on it, as the demo does)"""
    big_gb: float = 2.0
    """on-disk size of the dataset streamed for peak RSS"""
    repeats: int = 5
    """passes per setting (medians): 3 left the 1-worker figure swinging 0.22-0.27 between runs of one commit"""
    batch_size: int = 8
    sequence_length: int = 1024
    seed: int = 0
    out: str = str(RESULTS)


def main(config: BenchConfig) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        t0 = time.perf_counter()
        root = Path(config.root) if config.root else workdir / "quickstart"
        if not config.root:
            write_quickstart_like(root, config)
        model = Path(config.text_model) if config.text_model else workdir / "text.model"
        if not config.text_model:
            fit_text_model([str(root)], model)
        build_seconds = time.perf_counter() - t0
        index = Dataset(str(root)).index
        steps = int(index["length"].to_numpy().sum())
        domains = sorted({task.split("/")[0] for task in index["task"].to_pylist()})
        result: dict = {"benchmark": "loader", "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
                        "config": vars(config),
                        "dataset": {"root": config.root or "synthetic quickstart", "steps": steps,
                                    "bytes_on_disk": _disk_bytes(root), "build_seconds": round(build_seconds, 2)}}
        raw = median_run(lambda: raw_decode(root), config.repeats)
        result["raw_pyarrow"] = raw
        loader = {}
        for workers in (0, 1, 2):
            key = f"workers_{workers}"
            # raw is measured again next to each setting: other jobs' load swings within a run
            adjacent = median_run(lambda: raw_decode(root), config.repeats)
            loader[key] = median_run(lambda: loader_pass(root, model, config, workers, domains), config.repeats)
            loader[key]["raw_steps_per_second"] = adjacent["steps_per_second"]
            loader[key]["raw_cpu_seconds"] = adjacent["cpu_seconds"]
            loader[key]["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["loader"] = loader
        result["fraction_of_raw"] = {k: round(v["steps_per_second"] / v["raw_steps_per_second"], 3) for k, v in loader.items()}
        # what a pass's fixed start costs, and the ratio without it (context, not the target)
        result["first_batch_seconds"] = {k: v["first_batch_seconds"] for k, v in loader.items()}
        result["fraction_of_raw_after_first_batch"] = {
            k: round(v["steps_per_second"] / v["raw_steps_per_second"] * v["after_first_batch_tokens_per_second"]
                     / v["tokens_per_second"], 3) for k, v in loader.items()}
        # context on a shared machine: CPU seconds (main process + workers) per step, raw over
        # loader; wall-clock ratios swing with other jobs' load, CPU time much less
        result["cpu_fraction_of_raw"] = {k: round(v["raw_cpu_seconds"] / max(v["cpu_seconds"], 1e-9), 3)
                                         for k, v in loader.items()}
        per_domain = {}
        for domain in domains:
            domain_raw = median_run(lambda: raw_decode(root, domain), config.repeats)
            domain_loader = median_run(lambda: loader_pass(root, model, config, 1, domains, only=domain), config.repeats)
            per_domain[domain] = {"steps": domain_raw["steps"], "raw_steps_per_second": domain_raw["steps_per_second"],
                                  "loader_steps_per_second": domain_loader["steps_per_second"],
                                  "loader_tokens_per_second": domain_loader["tokens_per_second"],
                                  "loader_first_batch_seconds": domain_loader["first_batch_seconds"],
                                  "fraction_of_raw": round(domain_loader["steps_per_second"] / domain_raw["steps_per_second"], 3)}
        result["per_domain_1_worker"] = per_domain
        result["padding_fraction"] = {"one_pass": loader["workers_1"]["padding_fraction"],
                                      "endless_stream": endless_padding(root, model, config)}
        result["memory"] = memory_flatness(workdir, config)
        result["targets"] = {
            "fraction_of_raw_ge_0.30": result["fraction_of_raw"]["workers_1"] >= 0.30,
            "fraction_of_raw_ge_0.30_best_setting": max(result["fraction_of_raw"].values()) >= 0.30,
            "padding_le_0.05": result["padding_fraction"]["one_pass"] <= 0.05,
            "rss_flat": result["memory"]["peak_rss_ratio_big_vs_small"] <= 1.25,
        }
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result, indent=2))
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- measurements

def raw_decode(root: Path, domain: str | None = None) -> dict:
    """Decode every row group of the step files with plain pyarrow (all columns, one thread)."""
    files = sorted(p for p in (root / "data").rglob("*.parquet") if domain is None or f"/data/{domain}/" in str(p))
    start, cpu = time.perf_counter(), _cpu_seconds()
    rows = decoded = 0
    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(group, use_threads=False)
            rows += table.num_rows
            decoded += table.nbytes
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {"seconds": round(seconds, 3), "steps": rows, "steps_per_second": round(rows / seconds, 1),
            "decoded_mb_per_second": round(decoded / seconds / 1e6, 1), "cpu_seconds": round(cpu, 3)}


def loader_pass(root: Path, model: Path, config: BenchConfig, workers: int, domains: list[str],
                only: str | None = None) -> dict:
    """One pass over the dataset through the DataLoader; every step is served once. The
    time to the first batch (forking the workers, their first reads, filling the shuffle
    buffer) is also given on its own, with the rate of the rest of the pass."""
    weights = () if only is None else tuple(f"{d}={1 if d == only else 0}" for d in domains)
    data = DataConfig(roots=[str(root)], text_model=str(model), sequence_length=config.sequence_length, passes=1,
                      seed=config.seed, weight=weights)
    loader = make_loader(data, batch_size=config.batch_size, num_workers=workers)
    index = Dataset(str(root)).index.to_pydict()
    steps = sum(n for n, task in zip(index["length"], index["task"]) if only is None or task.startswith(only + "/"))
    start, cpu = time.perf_counter(), _cpu_seconds()
    sequences = 0
    first_batch = first_tokens = None
    for batch in loader:
        sequences += len(batch["tokens"])
        if first_batch is None:
            first_batch, first_tokens = time.perf_counter() - start, loader.real_tokens
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu  # workers are joined when the pass ends, so their CPU is in
    rest = max(seconds - first_batch, 1e-9)
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "steps": steps, "sequences": sequences,
            "steps_per_second": round(steps / seconds, 1), "tokens_per_second": round(loader.real_tokens / seconds, 1),
            "first_batch_seconds": round(first_batch, 3),
            "after_first_batch_tokens_per_second": round((loader.real_tokens - first_tokens) / rest, 1),
            "padding_fraction": round(loader.padding_fraction, 5)}


def endless_padding(root: Path, model: Path, config: BenchConfig, sequences: int = 400) -> float:
    data = DataConfig(roots=[str(root)], text_model=str(model), sequence_length=config.sequence_length, seed=config.seed)
    loader = make_loader(data, batch_size=config.batch_size)
    for count, _ in enumerate(loader):
        if (count + 1) * config.batch_size >= sequences:
            break
    return round(loader.padding_fraction, 5)


def memory_flatness(workdir: Path, config: BenchConfig) -> dict:
    """Peak RSS streaming a big image dataset vs one a tenth of its size."""
    out = {}
    for name, gigabytes in (("small", config.big_gb / 10), ("big", config.big_gb)):
        root = workdir / f"images-{name}"
        t0 = time.perf_counter()
        write_image_dataset(root, gigabytes, config.seed)
        written = time.perf_counter() - t0
        data = DataConfig(roots=[str(root)], sequence_length=config.sequence_length, passes=1, seed=config.seed)
        loader = make_loader(data, batch_size=config.batch_size, num_workers=1)
        with RssSampler() as sampler:
            start = time.perf_counter()
            for _ in loader:
                pass
            seconds = time.perf_counter() - start
        steps = int(Dataset(str(root)).index["length"].to_numpy().sum())
        out[name] = {"bytes_on_disk": _disk_bytes(root), "steps": steps, "write_seconds": round(written, 1),
                     "stream_seconds": round(seconds, 1), "steps_per_second": round(steps / seconds, 1),
                     "peak_rss_mb": round(sampler.peak / 1e6, 1), "baseline_rss_mb": round(sampler.first / 1e6, 1)}
        shutil.rmtree(root, ignore_errors=True)
    out["peak_rss_ratio_big_vs_small"] = round(out["big"]["peak_rss_mb"] / out["small"]["peak_rss_mb"], 3)
    return out


class RssSampler:
    """Peak resident memory of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self.first = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.first = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _rss(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (finished DataLoader workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def median_run(run, repeats: int) -> dict:
    results = [run() for _ in range(repeats)]
    results.sort(key=lambda r: r["seconds"])
    return results[len(results) // 2]


# ----------------------------------------------------------------------------- data

class QuickstartPart(NamedTuple):
    """Episodes of one quickstart task and source, as its collectors wrote them."""

    task: str
    source: str
    episodes: int
    per_file: int
    lengths: tuple
    """("fixed", n), ("uniform", low, high) or ("bot",): the BabyAI bot's short episodes (1-34 steps, mode 3, mean 5.7)"""


# The quickstart's composition (datasets/quickstart.yaml as collected on 2026-12-05; ~710k steps here)
QUICKSTART: tuple[QuickstartPart, ...] = tuple(QuickstartPart(*part) for part in (
    ("babyai/GoToRedBall", "scripted", 6000, 200, ("bot",)),
    ("babyai/GoToRedBall", "random", 20, 20, ("uniform", 13, 64)),
    ("babyai/GoToLocal", "scripted", 6000, 200, ("bot",)),
    ("babyai/GoToLocal", "random", 20, 20, ("uniform", 13, 64)),
    ("metaworld/reach-v3", "scripted", 200, 50, ("fixed", 500)),
    ("metaworld/reach-v3", "random", 10, 10, ("fixed", 500)),
    ("metaworld/push-v3", "scripted", 600, 50, ("fixed", 500)),
    ("metaworld/push-v3", "random", 10, 10, ("fixed", 500)),
    ("dmc/cartpole-balance", "training", 20, 20, ("fixed", 1000)),
    ("dmc/cartpole-balance", "rollout", 144, 16, ("fixed", 1000)),
    ("dmc/cartpole-balance", "random", 20, 10, ("fixed", 1000)),
    ("atari/pong", "training", 4, 4, ("uniform", 759, 1035)),
    ("atari/pong", "rollout", 2, 2, ("uniform", 757, 764)),
    ("atari/pong", "random", 2, 2, ("uniform", 763, 899)),
    ("procgen/coinrun", "training", 39, 39, ("uniform", 48, 1000)),
    ("procgen/coinrun", "rollout", 64, 32, ("uniform", 31, 131)),
    ("procgen/coinrun", "random", 20, 20, ("uniform", 148, 1000)),
))
MISSIONS = [f"go to {article} {color} {thing}" for article in ("the", "a")
            for color in ("red", "green", "blue", "purple", "yellow", "grey") for thing in ("ball", "box", "key")]


def quickstart_specs() -> dict[str, TaskSpec]:
    """The quickstart tasks' modalities, as the experts registry gives them (a test compares)."""
    babyai = {"obs_discrete": ModalitySpec([50], "int32", low=0, high=197, n=198), "obs_text": ModalitySpec([], "string")}
    metaworld = {"obs_continuous": ModalitySpec([39], "float32")}
    continuous_act = {"act_continuous": ModalitySpec([4], "float32", low=-1, high=1)}
    return {
        "babyai/GoToRedBall": TaskSpec("babyai", "BabyAI-GoToRedBall-v0", observation=babyai,
                                       action={"act_discrete": ModalitySpec([1], "int32", low=0, high=6, n=7)}),
        "babyai/GoToLocal": TaskSpec("babyai", "BabyAI-GoToLocal-v0", observation=babyai,
                                     action={"act_discrete": ModalitySpec([1], "int32", low=0, high=6, n=7)}),
        "metaworld/reach-v3": TaskSpec("metaworld", "reach-v3", observation=metaworld, action=continuous_act),
        "metaworld/push-v3": TaskSpec("metaworld", "push-v3", observation=metaworld, action=continuous_act),
        "dmc/cartpole-balance": TaskSpec("dmc", "cartpole-balance", observation={"obs_continuous": ModalitySpec([5], "float32")},
                                         action={"act_continuous": ModalitySpec([1], "float32", low=-1, high=1)}),
        "atari/pong": TaskSpec("atari", "ALE/Pong-v5", observation={"obs_image": ModalitySpec([84, 84, 4], "uint8", low=0, high=255)},
                               action={"act_discrete": ModalitySpec([1], "int32", low=0, high=5, n=6)}),
        "procgen/coinrun": TaskSpec("procgen", "coinrun", observation={"obs_image": ModalitySpec([64, 64, 3], "uint8", low=0, high=255)},
                                    action={"act_discrete": ModalitySpec([1], "int32", low=0, high=14, n=15)}),
    }


def write_quickstart_like(root: Path, config: BenchConfig) -> None:
    """The quickstart's tasks, sources, files and episode lengths (``QUICKSTART``), episodes
    times ``config.scale``; the values are synthetic but shaped and compressible like the real."""
    rng = np.random.default_rng(config.seed)
    specs = quickstart_specs()
    rows = []
    for task, source, episodes, per_file, lengths_kind in QUICKSTART:
        spec, count = specs[task], max(1, round(episodes * config.scale))
        lengths = _episode_lengths(lengths_kind, count, rng)
        for first in range(0, count, per_file):
            chunk = lengths[first:first + per_file]
            with StepFileWriter(root, task, f"{source}-{first // per_file:04d}", spec.modalities) as writer:
                for offset, steps in enumerate(_task_steps(spec, chunk, rng)):
                    length = chunk[offset]
                    writer.add(Episode(task=task, steps=steps, rewards=np.zeros(length, np.float32),
                                       terminated=_last(length), truncated=np.zeros(length, bool),
                                       run_id=f"bench-{source}", run_index=first + offset, source=source))
            rows += writer.index_rows
    write_index(root, index_table(rows))
    write_manifest(root, Manifest(name="loader-bench", tasks=specs))


def write_image_dataset(root: Path, gigabytes: float, seed: int) -> None:
    """Atari-shaped steps with incompressible frames, so bytes on disk ~ bytes streamed."""
    rng = np.random.default_rng(seed)
    spec = TaskSpec("atari", "noise-v0", observation={"obs_image": ModalitySpec([84, 84, 4], "uint8")},
                    action={"act_discrete": ModalitySpec([1], "int32", n=18)})
    tasks = {f"atari/noise-{i}": spec for i in range(3)}
    step_bytes = 84 * 84 * 4
    episodes = max(3, int(gigabytes * 1e9 / (step_bytes * 400)))
    writers = {task: StepFileWriter(root, task, "part-00000", spec.modalities) for task in tasks}
    for index in range(episodes):
        task = list(tasks)[index % len(tasks)]
        frames = rng.integers(0, 256, size=(400, 84, 84, 4), dtype=np.uint8)
        writers[task].add(Episode(task=task, steps={"obs_image": frames, "act_discrete": rng.integers(0, 18, (400, 1), dtype=np.int32)},
                                  rewards=np.zeros(400, np.float32), terminated=_last(400), truncated=np.zeros(400, bool),
                                  run_id="noise", run_index=index, source="training"))
    rows = [row for writer in writers.values() for row in writer.close()]
    write_index(root, index_table(rows))
    write_manifest(root, Manifest(name="rss-bench", tasks=tasks))


def _episode_lengths(kind: tuple, count: int, rng: np.random.Generator) -> list[int]:
    if kind[0] == "fixed":
        return [kind[1]] * count
    if kind[0] == "uniform":
        return rng.integers(kind[1], kind[2] + 1, count).tolist()
    # the bot's: 1 + a negative binomial of mean 4.74 (the quickstart's mean 5.74, mode 3)
    return np.minimum(1 + rng.negative_binomial(3, 3 / (3 + 4.74), count), 34).tolist()


def _task_steps(spec: TaskSpec, lengths: list[int], rng: np.random.Generator):
    """Each episode's step columns, drawn for the whole chunk at once (BabyAI's are short)."""
    total = sum(lengths)
    ends = np.cumsum(lengths)
    if "obs_discrete" in spec.observation:
        # one code a cell: mostly unseen (0), floor (1) and wall (57), a few objects; then the direction
        cells = rng.choice([0, 1, 57, -1], size=(total, 49), p=[0.4, 0.3, 0.2, 0.1]).astype(np.int32)
        cells[cells < 0] = rng.integers(2, 198, int((cells < 0).sum()), dtype=np.int32)
        grid = np.concatenate([cells, rng.integers(0, 4, (total, 1), dtype=np.int32)], axis=1)
        actions = rng.integers(0, 7, (total, 1), dtype=np.int32)
        for end, length in zip(ends, lengths):
            yield {"obs_discrete": grid[end - length:end], "obs_text": [MISSIONS[int(rng.integers(len(MISSIONS)))]] * length,
                   "act_discrete": actions[end - length:end]}
    elif "obs_continuous" in spec.observation:
        width = spec.observation["obs_continuous"].shape[0]
        acting = spec.action["act_continuous"].shape[0]
        noise = rng.normal(0, 0.01, (total, width)).astype(np.float32)
        jitter = rng.normal(0, 0.1, (total, acting)).astype(np.float32)
        for end, length in zip(ends, lengths):
            # smooth trajectories; a third of the values held for the episode (goals, padding)
            t = np.linspace(0, 1, length, dtype=np.float32)[:, None]
            observation = np.sin(t * np.arange(1, width + 1, dtype=np.float32)) + noise[end - length:end]
            observation[:, : width // 3] = rng.uniform(-1, 1, width // 3).astype(np.float32)
            action = np.clip(np.cos(t * np.arange(1, acting + 1, dtype=np.float32) * 3) + jitter[end - length:end], -1, 1)
            yield {"obs_continuous": observation, "act_continuous": action}
    else:
        frames = pong_frames if spec.observation["obs_image"].shape[-1] == 4 else coinrun_frames
        actions = spec.action["act_discrete"].n
        for length in lengths:
            yield {"obs_image": frames(length, rng), "act_discrete": rng.integers(0, actions, (length, 1), dtype=np.int32)}


def coinrun_frames(length: int, rng: np.random.Generator) -> np.ndarray:
    """64x64 RGB: a sky gradient, textured ground and crates scrolling with the agent, the
    agent's sprite; compresses about like the quickstart's coinrun frames (~1 KB a step)."""
    width = 64 * 8
    world = np.empty((64, width, 3), np.uint8)
    world[:] = np.linspace(rng.integers(90, 160), 230, 64, dtype=np.uint8)[:, None, None]
    world[..., 2] = 250
    texture = rng.integers(60, 120, (8, 8, 3), dtype=np.uint8)
    ground = np.tile(texture, (2, width // 8, 1))
    world[48:] = ground
    for x in rng.integers(0, width - 8, 12):
        world[40:48, x:x + 8] = texture[::-1] + 60
    scroll = np.clip(np.cumsum(rng.integers(-1, 3, length)), 0, width - 64)
    hop = np.abs(np.sin(np.arange(length) / 5) * 10).astype(int)
    frames = np.stack([world[:, s:s + 64] for s in scroll])
    for k in range(length):
        frames[k, 36 - hop[k]:44 - hop[k], 28:34] = (220, 180, 40)
    frames[:, :8] += rng.integers(0, 4, (length, 8, 64, 3), dtype=np.uint8)  # the sky's fine detail
    return frames


def pong_frames(length: int, rng: np.random.Generator) -> np.ndarray:
    """A flat background, two paddles and a ball moving: compresses like real Atari frames."""
    t = np.arange(length + 3)
    ball_y = (20 + 30 * np.sin(t / 9 + rng.uniform(0, 6))).astype(int) + 30
    ball_x = (np.abs((t * 2 + int(rng.integers(0, 80))) % 152 - 76) + 4).astype(int)
    paddle = np.clip(ball_y - 6, 0, 68)
    grid = np.arange(84)
    rows_ball = np.abs(grid[None, :] - ball_y[:, None]) <= 1
    cols_ball = np.abs(grid[None, :] - ball_x[:, None]) <= 1
    frames = np.full((length + 3, 84, 84), 87, np.uint8)
    frames[rows_ball[:, :, None] & cols_ball[:, None, :]] = 236
    paddle_rows = (grid[None, :] >= paddle[:, None]) & (grid[None, :] < paddle[:, None] + 16)
    frames[:, :, 76:80][np.broadcast_to(paddle_rows[:, :, None], (length + 3, 84, 4))] = 147
    return np.stack([frames[k:k + length] for k in range(4)], axis=-1)


def _last(length: int) -> np.ndarray:
    flags = np.zeros(length, bool)
    flags[-1] = True
    return flags


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
