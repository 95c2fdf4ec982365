"""Fixtures shared by the whole suite: tiny real datasets and one local Ray per session."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the session: starting one costs seconds (Ray's testing tips)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def synth_root(tmp_path):
    """A small synthetic dataset with every modality, written with shards' own writer."""
    from shards.synth import SynthConfig, synth_dataset

    root = tmp_path / "synth"
    synth_dataset(root, SynthConfig(tasks=4, episodes=24, seed=0))
    return root


@pytest.fixture
def one_torch_thread():
    """One torch thread per process: the machine is shared, and two-thread barriers stall under load."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def repo_script():
    """Imports a script that is not in a package (scripts/, bench/) by its path in the repo,
    without putting its folder on sys.path (bench/experts.py would shadow the experts package)."""

    def load(relative: str):
        spec = importlib.util.spec_from_file_location("gatoforge_" + Path(relative).stem, REPO / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load
