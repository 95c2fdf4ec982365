"""bench/loader.py's synthetic quickstart keeps up with the real one: the same tasks, episode
counts and modality layouts (its BabyAI part once kept a layout the collectors had dropped)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from collectors.spec import load_spec
from experts.registry import get_task

REPO = Path(__file__).resolve().parents[1]


def test_bench_data_has_the_quickstart_tasks_episode_counts_and_layouts(repo_script):
    bench = repo_script("bench/loader.py")
    plans = {plan.task: plan for plan in load_spec(REPO / "datasets" / "quickstart.yaml").tasks}
    episodes = Counter()
    for part in bench.QUICKSTART:
        kind = "random" if part.source == "random" else "training" if part.source == "training" else "expert"
        episodes[part.task, kind] += part.episodes
    assert {task for task, _ in episodes} == set(plans)
    for task, plan in plans.items():
        assert episodes[task, "random"] == plan.random_episodes, task
        assert episodes[task, "expert"] == plan.rollout_episodes + plan.noisy_episodes, task
    specs = bench.quickstart_specs()
    for task in plans:
        real = get_task(task).task_spec()
        assert specs[task].observation == real.observation, task
        assert specs[task].action == real.action, task
