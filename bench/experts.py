"""Expert quality and cost on this machine -> bench/results/experts.json.

    nice .venv/bin/python bench/experts.py --section babyai
    nice .venv/bin/python bench/experts.py --section metaworld
    nice .venv/bin/python bench/experts.py --section random
    nice .venv/bin/python bench/experts.py --section overhead
    nice .venv/bin/python bench/experts.py --section dmc --minutes 40
    nice .venv/bin/python bench/experts.py --section smoke       # Atari/Procgen SB3 + sample-factory

Each section merges its figures into the JSON (so sections can run separately, in the
background) and prints them. Ratios (ours vs a raw loop) are measured in the same run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

RESULTS = Path(__file__).resolve().parent / "results" / "experts.json"
BABYAI_LEVELS = ("babyai/GoToLocal", "babyai/PickupLoc", "babyai/PutNextLocal", "babyai/BossLevel")


@dataclass
class BenchConfig:
    section: Literal["babyai", "metaworld", "random", "overhead", "dmc", "walker", "smoke"] = "babyai"
    """Which measurement to run (each merges into bench/results/experts.json)."""
    episodes: int = 0
    """Episodes per task (0: the section's default: babyai 100, metaworld 20, random 20)."""
    minutes: float = 30.0
    """Wall-time cap for training sections (dmc, walker)."""
    out: Path = Path("/tmp/gatoforge_bench_experts")
    """Where training sections keep checkpoints and curves."""
    resume: Path | None = None
    """dmc/walker: continue this saved SB3 run (model.zip) instead of starting afresh."""


def main(cfg: BenchConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    section = {"babyai": bench_babyai, "metaworld": bench_metaworld, "random": bench_random,
               "overhead": bench_overhead, "dmc": bench_dmc, "walker": bench_walker,
               "smoke": bench_smoke}[cfg.section]
    figures = section(cfg)
    merge(cfg.section + ("_resumed" if cfg.resume else ""), figures)
    print(json.dumps({cfg.section: figures}, indent=2))


def bench_babyai(cfg: BenchConfig) -> dict:
    from experts import rollout

    episodes = cfg.episodes or 100
    rows = {}
    for task in BABYAI_LEVELS:
        result = rollout(task, "scripted", num_envs=4, episodes=episodes, seed=0)
        rows[task] = {**result.summary(), "reference": _reference(task)}
    return {"episodes_per_task": episodes, "success": "positive reward at termination", "tasks": rows,
            "all_at_least_99pct": all(r["success_rate"] >= 0.99 for r in rows.values())}


def bench_metaworld(cfg: BenchConfig) -> dict:
    from experts import list_tasks, rollout

    episodes = cfg.episodes or 20
    rows = {}
    for task in list_tasks("metaworld"):
        result = rollout(task, "scripted", num_envs=2, episodes=episodes, seed=0)
        rows[task] = {**result.summary(), "reference": _reference(task)}
        logging.info("%s success %.2f return %.1f", task, result.success_rate, result.mean_return)
    rates = [r["success_rate"] for r in rows.values()]
    return {"episodes_per_task": episodes,
            "success": "info['success'] true at ANY step of the full 500-step episode",
            "envs": "2 envs per task built with seeds 0 and 1; each reset samples another goal",
            "tasks_at_least_90pct": int(sum(r >= 0.9 for r in rates)), "tasks": len(rates),
            "mean_success": float(np.mean(rates)),
            "below_90pct": {t: r["success_rate"] for t, r in rows.items() if r["success_rate"] < 0.9},
            "per_task": rows}


def bench_random(cfg: BenchConfig) -> dict:
    from experts import QUICKSTART_TASKS, rollout

    episodes = cfg.episodes or 20
    rows = {}
    for task in QUICKSTART_TASKS:
        n = episodes if not task.startswith("atari/") else max(3, episodes // 4)
        result = rollout(task, "random", num_envs=2, episodes=n, seed=0)
        rows[task] = {**result.summary(), "reference": _reference(task)}
    return {"tasks": rows}


def bench_overhead(cfg: BenchConfig) -> dict:
    """Our rollout + recorder vs a raw Gymnasium loop with the same random actions."""
    import gymnasium as gym
    import minigrid  # noqa: F401

    from experts import rollout

    rows = {}
    for task, env_id, steps in (("babyai/GoToLocal", "BabyAI-GoToLocal-v0", 20000),
                                ("metaworld/reach-v3", None, 5000)):
        raw = _raw_loop(env_id, task, steps)
        ours = [rollout(task, "random", num_envs=1, episodes=10**9, seed=s, max_steps=steps,
                        on_episode=lambda e: None).steps_per_second for s in range(3)]
        rows[task] = {"raw_steps_per_s": raw, "ours_steps_per_s": float(np.median(ours)),
                      "ratio_ours_vs_raw": float(np.median(ours)) / raw}
    return {"what": "1 env, random actions, median of 3; ours = rollout() with EpisodeRecorder building "
                    "Episodes (columns, success) vs a bare env.step loop", "tasks": rows}


def _raw_loop(env_id: str | None, task: str, steps: int) -> float:
    from experts import get_task

    env = get_task(task).make_single_env(0)
    rates = []
    for s in range(3):
        env.reset(seed=s)
        start = time.perf_counter()
        for _ in range(steps):
            _, _, te, tr, _ = env.step(env.action_space.sample())
            if te or tr:
                env.reset()
        rates.append(steps / (time.perf_counter() - start))
    return float(np.median(rates))


def bench_dmc(cfg: BenchConfig) -> dict:
    return _train_curve("dmc/cartpole-swingup", cfg)


def bench_walker(cfg: BenchConfig) -> dict:
    return _train_curve("dmc/walker-walk", cfg)


def _train_curve(task: str, cfg: BenchConfig) -> dict:
    from experts.train import train

    out = cfg.out / (task.replace("/", "_") + ("_resumed" if cfg.resume else ""))
    curve: list[dict] = []

    def on_episode(episode) -> None:
        curve.append({"policy_steps": episode.policy_steps + episode.length, "return": episode.episode_return,
                      "wall_s": round(time.perf_counter() - start, 1)})

    start = time.perf_counter()
    checkpoint = train(task, budget="full", out_dir=out, seed=0, on_episode=on_episode,
                       max_wall_seconds=cfg.minutes * 60, eval_episodes=4, resume_from=cfg.resume)
    wall = time.perf_counter() - start

    best = max((c["return"] for c in curve), default=None)
    provenance = json.loads(Path(str(checkpoint).removesuffix(".zip") + ".json").read_text())
    evaluation = provenance["final_eval"]
    return {"task": task, "resumed_from": provenance.get("resumed_from"),
            "budget_steps": provenance["budget_steps"], "steps_done": provenance["steps_done"],
            "wall_seconds": round(wall, 1), "stopped_by_wall_cap": provenance.get("stopped_early", False),
            "best_training_episode_return": best, "final_eval": evaluation, "curve": curve,
            "checkpoint": str(checkpoint)}


def bench_smoke(cfg: BenchConfig) -> dict:
    """Smoke-budget training through SB3 and sample-factory on Atari and Procgen; the saved
    checkpoint, reloaded here, must reproduce the evaluation train() ran on the trained policy."""
    from experts import load_expert, rollout
    from experts.train import train

    rows = {}
    for task in ("atari/pong", "procgen/coinrun"):
        for algo in ("sb3", "sample-factory"):
            episodes: list = []
            start = time.perf_counter()
            out = cfg.out / "smoke" / f"{task.replace('/', '_')}_{algo}"
            checkpoint = train(task, budget="smoke", out_dir=out, seed=0, on_episode=episodes.append, trainer=algo,
                               eval_episodes=2, eval_seed=123)
            seconds = time.perf_counter() - start
            provenance = json.loads(Path(f"{str(checkpoint).removesuffix('.zip')}.json").read_text())
            trained = provenance["final_eval"]
            reloaded = rollout(task, load_expert(task, str(checkpoint)), num_envs=2, episodes=2, seed=123)
            rows[f"{task} {algo}"] = {
                "checkpoint": str(checkpoint), "algorithm": provenance["algorithm"],
                "budget_steps": provenance["budget_steps"], "steps_done": provenance["steps_done"],
                "train_seconds": round(seconds, 1), "training_episodes": len(episodes),
                "training_episodes_written": provenance["training_episodes"],
                "training_run_indices_in_order": [e.run_index for e in episodes] == list(range(len(episodes))),
                "training_returns": [e.episode_return for e in episodes],
                "eval_returns_trained_policy": trained["returns"], "eval_returns_reloaded": reloaded.returns,
                "eval_lengths_trained_policy": trained["lengths"], "eval_lengths_reloaded": reloaded.lengths,
                "reload_reproduces": trained["returns"] == reloaded.returns
                and trained["lengths"] == reloaded.lengths,
                "reference": _reference(task),
            }
    return rows


def _reference(task: str) -> dict:
    from experts import reference_scores

    return reference_scores(task)


def merge(section: str, figures: dict) -> None:
    """Read-modify-write under a lock: sections run concurrently in the background."""
    import fcntl

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "gatoforge_bench_experts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data[section] = {**figures, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = RESULTS.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
        tmp.replace(RESULTS)


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
