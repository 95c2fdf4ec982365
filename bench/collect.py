"""Collection throughput: our pipeline vs the raw env and vs Minari's DataCollector.

    python bench/collect.py                                   # all quickstart tasks
    python bench/collect.py --tasks babyai/GoToLocal metaworld/reach-v3 --seconds 2
    python bench/collect.py --experts-root runs/quickstart    # trained experts from a collection

Per quickstart task, in this one run:
  (a) raw_sps      the env alone, random actions, one process, one env;
  (b) ours_sps     collectors.worker.run_unit in one process: batched envs, the task's expert
                   asked once per batch, episodes written to Parquet on the writer thread
                   (stepping loop + final flush; env construction excluded, as in (a));
  (c) ours_vs_raw  b / a;
  (d) minari_sps   the same env and expert at batch 1, recorded by minari.DataCollector
                   (HDF5 and arrow backends; the faster one is compared), ours_vs_minari = b / d.
env_expert_sps is that batch-1 loop without recording: where it is far below (a), the expert
itself is the bottleneck (named in `bottleneck`). Then the speedup of 2 Ray workers over 1 on the same units (warm workers, equal work each).
Single-process figures are given per process CPU second (``*_sps_cpu``, all threads counted,
so our writer thread's encoding is included) and per wall second (``*_sps_wall``): on a shared
machine other processes inflate wall time at random, CPU time does not. Ratios without a
suffix use CPU time; ``*_wall`` ratios use wall time. The speedup can only use wall time.
Learned experts (dmc, atari, procgen) are read from a collected dataset's experts/ folder;
without one the bench uses the random policy and says so. Minari is a bench-only dependency:
pip install -c requirements/constraints.txt "minari[create]==0.5.3" h5py numpy==1.26.4
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tyro

# `python bench/collect.py` puts bench/ first on sys.path, where sibling benchmarks (bench/experts.py)
# would shadow the packages of the same name: import the installed packages instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "collect.json"
QUICKSTART = REPO / "datasets" / "quickstart.yaml"
STATE_TASKS = {"babyai", "metaworld", "dmc"}

log = logging.getLogger("bench.collect")


@dataclass
class BenchConfig:
    """Measure collection throughput per quickstart task (prints JSON, writes bench/results/collect.json)."""

    tasks: list[str] = field(default_factory=list)
    """tasks to measure (default: every quickstart task)"""
    seconds: float = 3.0
    """target duration of each measurement"""
    experts_root: str | None = None
    """a collected dataset whose experts/<task>/train-000 checkpoints act for learned tasks"""
    scaling_task: str = "babyai/GoToLocal"
    """task whose units measure the 2-worker speedup"""
    minari: bool = True
    """also measure Minari's DataCollector"""
    repeats: int = 3
    """runs per figure (the median is reported)"""
    scaling_only: bool = False
    """re-measure only the 2-vs-1 worker speedup (e.g. when the shared machine is quieter) and
    replace the `scaling` entry of an existing results file"""
    out: str = str(RESULTS)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.basicConfig(level=logging.WARNING)
    config = tyro.cli(BenchConfig, args=argv)
    from collectors.spec import load_spec
    from experts.registry import list_tasks

    spec = load_spec(QUICKSTART, list_tasks=list_tasks, root_override=tempfile.mkdtemp(prefix="bench-collect-"))
    plans = {p.task: p for p in spec.tasks}
    if config.scaling_only:
        report = json.loads(Path(config.out).read_text()) if Path(config.out).exists() else {}
        report["scaling"] = bench_scaling(plans[config.scaling_task], config)
        report["scaling"]["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report.setdefault("targets", {})["two_workers>=1.7x"] = report["scaling"]["speedup"] >= 1.7
        text = json.dumps(report, indent=2, default=float)
        print(text)
        Path(config.out).write_text(text + "\n")
        return 0
    tasks = config.tasks or list(plans)
    rows = []
    for task in tasks:
        rows.append(bench_task(plans[task], config))
        print(json.dumps(rows[-1]), file=sys.stderr)
    scaling = bench_scaling(plans[config.scaling_task], config)
    report = {
        "rows": rows, "scaling": scaling,
        "targets": {
            "clock": "process CPU time (the machine is shared; *_wall figures are beside them)",
            "ours_vs_raw_state_tasks>=0.7": {r["task"]: r["ours_vs_raw"] >= 0.7 or r["bottleneck"]
                                             for r in rows if r["domain"] in STATE_TASKS},
            "faster_than_minari_every_task": all((r.get("ours_vs_minari") or 0) > 1 for r in rows),
            "two_workers>=1.7x": scaling.get("speedup", 0) >= 1.7,
        },
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "python": platform.python_version()},
        "versions": _versions(),
    }
    text = json.dumps(report, indent=2, default=float)
    print(text)
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    Path(config.out).write_text(text + "\n")
    return 0


def bench_task(plan, config: BenchConfig) -> dict[str, Any]:
    """(a)-(d) for one task; each figure is the median of `repeats` runs, interleaved so that
    load from other processes on the machine hits every variant alike."""
    from experts.registry import get_task

    entry = get_task(plan.task)
    expert, note = _expert_for(plan, config)
    unit = _unit(plan, expert, episodes=None)
    warm = pipeline_run(unit, episodes=unit.num_envs)  # imports, caches; gives the episode length
    mean_length = warm["steps"] / max(warm["episodes"], 1)
    runs: dict[str, list[float]] = {}
    steps_target = None
    for _ in range(config.repeats):
        raw = raw_env_sps(entry, config.seconds)
        _add(runs, "raw", raw)
        steps_target = steps_target or raw["wall"] * config.seconds
        episodes = int(np.ceil(max(unit.num_envs, steps_target / max(mean_length, 1)) / unit.num_envs) * unit.num_envs)
        ours = pipeline_run(unit, episodes=min(episodes, 4000))
        _add(runs, "ours", {"wall": ours["sps"], "cpu": ours["cpu"]})
        runs.setdefault("ours_steps", []).append(ours["steps"])
        batch1 = int(min(ours["steps"], max(500, config.seconds * 300)))
        _add(runs, "env_expert", loop_sps(entry, expert, batch1, backend=None))
        if config.minari:
            for backend in ("hdf5", "arrow"):
                try:
                    value = loop_sps(entry, expert, batch1, backend)
                except Exception as error:  # noqa: BLE001 - reported, not hidden
                    message = (str(error).splitlines() or [""])[0][:200]
                    runs[f"minari_{backend}_error"] = [f"{type(error).__name__}: {message}"]
                else:
                    _add(runs, f"minari_{backend}", value)
    row: dict[str, Any] = {"task": plan.task, "domain": plan.domain, "expert": note, "num_envs": unit.num_envs,
                           "episode_length": round(mean_length, 1)}
    for key, values in runs.items():
        row[key] = values[0] if key.endswith("_error") else round(float(np.median(values)), 1)
    for clock in ("cpu", "wall"):
        suffix = "" if clock == "cpu" else "_wall"
        row[f"ours_vs_raw{suffix}"] = round(row[f"ours_sps_{clock}"] / row[f"raw_sps_{clock}"], 3)
        best = max((row.get(f"minari_{b}_sps_{clock}") or 0 for b in ("hdf5", "arrow")), default=0)
        row[f"minari_sps_{clock}"] = best or None
        row[f"ours_vs_minari{suffix}"] = round(row[f"ours_sps_{clock}"] / best, 3) if best else None
    row["expert_vs_raw"] = round(row["env_expert_sps_cpu"] / row["raw_sps_cpu"], 3)
    row["bottleneck"] = ("expert (env + expert at batch 1 reach only "
                         f"{row['expert_vs_raw']:.2f} of the raw env)") if row["expert_vs_raw"] < 0.7 else "env"
    return row


def _add(runs: dict[str, list[float]], name: str, value: dict[str, float]) -> None:
    for clock, sps in value.items():
        runs.setdefault(f"{name}_sps_{clock}", []).append(sps)


def raw_env_sps(entry, seconds: float) -> dict[str, float]:
    """(a) One env, random actions (pre-sampled, so sampling is not timed), one process."""
    env = entry.make_single_env(0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(256)]
    env.reset(seed=0)
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            steps += 1
            if terminated or truncated:
                env.reset()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    env.close()
    return {"wall": steps / elapsed, "cpu": steps / cpu}


def pipeline_run(unit, episodes: int) -> dict[str, Any]:
    """(b) One work unit through collectors.worker.run_unit (no Ray), writing to a temp root."""
    from collectors.worker import run_unit

    with tempfile.TemporaryDirectory(prefix="bench-ours-") as root:
        summary = run_unit(root, dataclasses.replace(unit, episodes=episodes))
    seconds = summary["loop_seconds"] + summary["finish_seconds"]
    cpu = summary["loop_cpu_seconds"] + summary["finish_cpu_seconds"]
    return {"sps": summary["steps"] / seconds, "cpu": summary["steps"] / cpu, "steps": summary["steps"],
            "episodes": summary["episodes"]}


def loop_sps(entry, expert: str, steps: int, backend: str | None) -> dict[str, float]:
    """The env at batch 1 with the same expert; ``backend`` records it with minari.DataCollector
    (hdf5 or arrow), None records nothing (the env + expert cost alone)."""
    from experts.base import load_expert
    from experts.envs.domain import make_vector_from_fns

    env = entry.make_single_env(0)
    collector = None
    if backend is not None:
        import minari

        os.environ["MINARI_DATASETS_PATH"] = tempfile.mkdtemp(prefix="bench-minari-")
        env = _MinariReady(env)
        collector = env = minari.DataCollector(env, record_infos=False, data_format=backend,
                                               observation_space=env.observation_space,
                                               action_space=env.action_space)
    vector = make_vector_from_fns([lambda: env])
    agent = load_expert(entry.task_id, expert, env=vector, seed=0)
    obs, _ = vector.reset(seed=0)
    agent.reset([0])
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while done < steps:
        action = agent.act(obs, deterministic=True)
        obs, _, terminated, truncated, _ = vector.step(action)
        done += 1
        if terminated[0] or truncated[0]:
            agent.reset([0])
    if collector is not None:
        collector.create_dataset(dataset_id=f"bench/{entry.task_id.replace('/', '-')}-{backend}-v0",
                                 algorithm_name=expert, description="GatoForge collection benchmark")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    vector.close()
    return {"wall": done / elapsed, "cpu": done / cpu}


def _unit(plan, expert: str, episodes: int | None):
    from collectors.units import plan_units

    unit = next(u for u in plan_units(_only(plan)) if u.kind != "training")
    kind = expert if expert in ("random", "scripted") else "rollout"
    # The env's own episodes in every variant (no cut_after_success), so (a), (b) and (d) reset
    # equally often; the domain's batch size even where the quickstart's small units use fewer envs.
    return dataclasses.replace(unit, episodes=episodes or unit.episodes, expert=expert, depends_on=None,
                               kind=kind, run_id=kind, cut_after_success=None, max_episode_steps=None,
                               num_envs=plan.num_envs)


def bench_scaling(plan, config: BenchConfig) -> dict[str, Any]:
    """2 Ray workers vs 1 on equal units (workers warmed up first, so startup is not timed)."""
    import ray

    from collectors.worker import run_unit

    expert, note = _expert_for(plan, config)
    unit = _unit(plan, expert, episodes=None)
    warm = pipeline_run(unit, episodes=unit.num_envs)
    mean_length = warm["steps"] / max(warm["episodes"], 1)
    episodes = int(np.ceil(max(unit.num_envs, config.seconds * 8 * warm["sps"] / max(mean_length, 1))
                           / unit.num_envs) * unit.num_envs)
    units = [dataclasses.replace(unit, name=f"scale-{i}", episodes=episodes, first_index=i * episodes,
                                 seed=unit.seed + i) for i in range(4)]
    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_unit)
        warmups = [dataclasses.replace(u, name=f"warm-{i}", episodes=unit.num_envs) for i, u in enumerate(units[:2])]
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as root:
            ray.get([remote.remote(root, u) for u in warmups])
            start = time.perf_counter()
            one = [ray.get(remote.remote(root, u)) for u in units[:2]]  # one at a time: 1 worker busy
            t1 = time.perf_counter() - start
            start = time.perf_counter()
            two = ray.get([remote.remote(root, u) for u in units[2:]])  # both at once: 2 workers
            t2 = time.perf_counter() - start
    finally:
        ray.shutdown()
    s1, s2 = sum(s["steps"] for s in one) / t1, sum(s["steps"] for s in two) / t2
    return {"task": plan.task, "expert": note, "units": 2, "episodes_per_unit": episodes,
            "one_worker_sps": round(s1, 1), "two_workers_sps": round(s2, 1), "speedup": round(s2 / s1, 3),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


class _MinariReady:
    """Minari's documented pitfalls, fixed without changing the env's dynamics (see
    /work/shared/spec/environment-facts.md): no EnvSpec with a callable entry point, float
    rewards, int32 reset seeds. (The experts' envs already declare unbounded Meta-World
    observations and a Text mission space for BabyAI.)"""

    def __new__(cls, env):
        import gymnasium as gym

        class Wrapped(gym.Wrapper):
            @property
            def spec(self):
                return None

            def step(self, action):
                obs, reward, terminated, truncated, info = self.env.step(action)
                return obs, float(reward), terminated, truncated, info

            def reset(self, *, seed=None, options=None):
                # DataCollector draws 64-bit seeds; gym3 (Procgen) accepts only int32.
                return self.env.reset(seed=None if seed is None else int(seed) % 2**31, options=options)

        return Wrapped(env)


def _expert_for(plan, config: BenchConfig) -> tuple[str, str]:
    if plan.expert.kind in ("scripted", "random"):
        return plan.expert.kind, plan.expert.kind
    if plan.expert.kind == "checkpoint":
        return plan.expert.load_spec(), plan.expert.load_spec()
    if config.experts_root:
        folder = Path(config.experts_root) / "experts" / plan.task / "train-000"
        found = sorted(p for p in folder.iterdir() if p.suffix == ".zip" or p.is_dir()) if folder.exists() else []
        if found:
            return str(found[0]), f"trained ({found[0].name}, smoke budget)"
    return "random", "random (no trained checkpoint given: --experts-root)"


def _only(plan):
    from collectors.spec import DatasetSpec

    rollout = plan.rollout_episodes or plan.random_episodes or 1
    return DatasetSpec(name="bench", root="", seed=0, tasks=[dataclasses.replace(
        plan, rollout_episodes=rollout if plan.expert.kind != "random" else 0,
        random_episodes=0 if plan.expert.kind != "random" else rollout,
        expert=dataclasses.replace(plan.expert, kind="scripted" if plan.expert.kind == "train" else plan.expert.kind))])


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for package in ("gatoforge", "minari", "h5py", "jax", "numpy", "pyarrow", "gymnasium", "ray"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
