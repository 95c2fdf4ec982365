"""experts: one interface to scripted, SB3, sample-factory and random agents on five suites.

    python -m experts list --domain metaworld
    python -m experts evaluate babyai/GoToLocal --expert scripted --episodes 100
    python -m experts train dmc/cartpole-swingup --budget smoke --out runs/cartpole

Public API (collectors call it from Ray workers):

    from experts import get_task, list_tasks, load_expert, rollout, EpisodeRecorder, train
"""

from experts.base import Expert, ExpertError, RandomExpert, load_expert
from experts.recorder import EpisodeRecorder
from experts.registry import QUICKSTART_TASKS, TaskEntry, get_task, list_tasks, reference_scores
from experts.rollout import RolloutResult, rollout


def train(task_id: str, budget: str = "smoke", out_dir=None, seed: int = 0, on_episode=None, **kwargs):
    """Train an expert for ``task_id`` (see experts.train.train); imported lazily (torch)."""
    from experts.train import train as _train

    return _train(task_id, budget=budget, out_dir=out_dir, seed=seed, on_episode=on_episode, **kwargs)


__all__ = [
    "QUICKSTART_TASKS", "EpisodeRecorder", "Expert", "ExpertError", "RandomExpert", "RolloutResult", "TaskEntry",
    "get_task", "list_tasks", "load_expert", "reference_scores", "rollout", "train",
]
