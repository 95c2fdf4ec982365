"""Deploy a trained Gato in its environments and score it against the experts.

    python -m trainer.evaluate --checkpoint runs/tiny --tasks babyai/GoToRedBall --episodes 50
    python -m trainer.evaluate --checkpoint runs/tiny/checkpoints/step-001000.pt --tasks all --json
    python -m trainer.evaluate --checkpoint runs/tiny --tasks metaworld/reach-v3 babyai/GoToLocal --ray

Per task: mean return, success rate (where the env reports success) and the expert-normalized
score 100 (R - R_random) / (R_expert - R_random) with the expert and random returns the
dataset's manifest records (TaskSpec.expert_return / random_return). Writes
OUT/eval.csv, OUT/eval.md, OUT/eval.json and OUT/eval.png (OUT defaults to the run's
``eval/`` folder). Prompts come from the datasets the checkpoint was trained on.

Environments come from the experts registry (``experts.get_task(task).make_env``), or from
any factory ``module:function`` taking (task, seed, spec) and returning an ``EvalEnv``.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import tyro

from shards import Dataset, TaskSpec
from shards.format import ACT_CONTINUOUS, ACT_DISCRETE, OBS_TEXT

if TYPE_CHECKING:  # deploy imports torch: evaluate loads it only when a task runs
    from trainer.deploy import GatoAgent, TokenChunk

log = logging.getLogger(__name__)


class EvalEnv(Protocol):
    """One environment that speaks shard columns (no batch dimension)."""

    def reset(self, seed: int) -> dict[str, Any]:
        """Start an episode; the first observation as {obs_column: value}."""

    def step(self, action: dict[str, np.ndarray]) -> tuple[dict[str, Any], float, bool, bool | None]:
        """Apply {act_column: array}; (next observation, reward, episode over, success or None)."""

    def close(self) -> None: ...


EnvFactory = Callable[[str, int, TaskSpec], EvalEnv]


@dataclass
class EvalConfig:
    """Evaluate a Gato checkpoint in its environments."""

    checkpoint: str
    """a checkpoint file or a run directory (its latest checkpoint)"""
    tasks: list[str] = field(default_factory=lambda: ["all"])
    """task ids of the checkpoint's datasets, or 'all'"""
    episodes: int = 50
    """episodes per task (Gato: 50)"""
    seed: int = 0
    """episode i of a task resets with seed + i"""
    temperature: float = 1.0
    """sampling temperature of action tokens (0 = greedy)"""
    continuous_decoding: str = "sample"
    """continuous action tokens: 'sample' them at --temperature (Gato), take the 'median' bin of
    the model's distribution (steadier control from a small model), or the value head's
    'regression' (models trained with model.action_regression)"""
    context: int | None = None
    """tokens kept in context (None: the sequence length the model was trained on; Gato: 1024)"""
    prompt_tokens: int | None = None
    """demonstration tokens to prompt with (None: the loader's prompt share of the context)"""
    prompt_from: str = "end"
    """'end' of the demonstration (goal conditioning, as the loader trains) or 'start' (Gato's default)"""
    max_steps: int | None = None
    """cut an episode after this many steps (None: the env's own limit)"""
    batch_episodes: int = 10
    """episodes run in lockstep, one forward pass per action token for all of them (tasks with a
    text observation, whose token count varies, run one at a time)"""
    env_factory: str = "experts"
    """'experts' (the experts registry) or module:function returning an EvalEnv"""
    out: str | None = None
    """where to write eval.csv/md/json/png (default: the run's eval/ folder)"""
    ray: bool = False
    """evaluate tasks in parallel on Ray workers"""
    device: str = "cpu"
    json: bool = False
    """print the table as JSON"""
    progress: bool = True

    def validate(self) -> None:
        problems = []
        if self.episodes < 1:
            problems.append(f"--episodes={self.episodes}: expected >= 1")
        if self.batch_episodes < 1:
            problems.append(f"--batch-episodes={self.batch_episodes}: expected >= 1")
        if self.temperature < 0:
            problems.append(f"--temperature={self.temperature}: expected >= 0")
        from trainer.deploy import CONTINUOUS_DECODINGS

        if self.continuous_decoding not in CONTINUOUS_DECODINGS:
            problems.append(f"--continuous-decoding={self.continuous_decoding!r}: expected one of {CONTINUOUS_DECODINGS}")
        if self.prompt_from not in ("start", "end"):
            problems.append(f"--prompt-from={self.prompt_from!r}: expected 'start' or 'end'")
        if self.env_factory != "experts" and ":" not in self.env_factory:
            problems.append(f"--env-factory={self.env_factory!r}: expected 'experts' or module:function")
        if problems:
            raise ValueError("; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = tyro.cli(EvalConfig, args=argv)
    try:
        rows = evaluate(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from shards.console import print_table

    print_table(rows, title=f"Gato evaluation ({config.checkpoint})", as_json=config.json)
    return 0


def evaluate(config: EvalConfig, env_factory: EnvFactory | None = None) -> list[dict[str, Any]]:
    """Score every task; writes the table files and returns its rows."""
    config.validate()
    from trainer.checkpoint import load_checkpoint
    from trainer.deploy import run_info

    info = run_info(load_checkpoint(config.checkpoint))
    specs = task_specs(info["data_roots"])
    tasks = sorted(specs) if config.tasks == ["all"] else list(config.tasks)
    unknown = [t for t in tasks if t not in specs]
    if unknown:
        raise ValueError(f"--tasks {unknown}: not in the checkpoint's datasets {info['data_roots']} "
                         f"(tasks there: {sorted(specs)})")
    if config.ray:
        rows = _evaluate_on_ray(config, tasks, env_factory)
    else:
        rows = [evaluate_task(config, task, env_factory) for task in tasks]
    out = Path(config.out) if config.out else Path(info["path"]).parent.parent / "eval"
    write_report(rows, out, title=f"{Path(info['path']).name} (step {info['step']})")
    return rows


def evaluate_task(config: EvalConfig, task: str, env_factory: EnvFactory | None = None) -> dict[str, Any]:
    """Run ``config.episodes`` episodes of one task with a prompted Gato."""
    from trainer.assembly import is_memoryless
    from trainer.deploy import GatoAgent, demonstration_prompt, load_agent_model
    from trainer.text_tokenizer import TextTokenizer
    from trainer.tokenizer import StepLayout

    model, info = load_agent_model(config.checkpoint, config.device)
    dataset, spec = _dataset_of(info["data_roots"], task)
    text_model = TextTokenizer.load(info["text_model"]) if info["text_model"] else None
    context = config.context or info["context"]
    prompt_tokens = config.prompt_tokens if config.prompt_tokens is not None else int(context * info["prompt_fraction"])
    vector = StepLayout.vector_for(task, spec, model.config.vector_observations, info["token_observations"])
    prompt, demo_id = demonstration_prompt(dataset, task, spec, text_model, prompt_tokens, config.prompt_from,
                                           info["max_text_tokens"], success_tail=info["success_tail"],
                                           vector_observations=vector)
    agent = GatoAgent(model, spec, text_model, context=context, temperature=config.temperature, seed=config.seed,
                      max_text_tokens=info["max_text_tokens"], continuous_decoding=config.continuous_decoding,
                      vector_observations=vector, memoryless=is_memoryless(task, info["memoryless"]))
    factory = env_factory or load_env_factory(config.env_factory)
    # missions of varied length tokenize to varied lengths: such episodes run one at a time
    width = 1 if OBS_TEXT in spec.observation else min(config.batch_episodes, config.episodes)
    envs = [factory(task, config.seed, spec) for _ in range(width)]
    returns, successes, lengths = [], [], []
    started = time.perf_counter()
    from tqdm import tqdm

    try:
        with tqdm(total=config.episodes, desc=task, disable=not config.progress, leave=False) as bar:
            for first in range(0, config.episodes, width):
                group = range(first, min(first + width, config.episodes))
                outcome = _run_episodes(agent, envs[:len(group)], [config.seed + e for e in group], prompt,
                                        config.max_steps)
                for total, steps, success in outcome:
                    returns.append(total)
                    successes.append(success)
                    lengths.append(steps)
                bar.update(len(group))
    finally:
        for env in envs:
            env.close()
    flags = [s for s in successes if s is not None]
    mean = float(np.mean(returns))
    return {
        "task": task, "episodes": len(returns), "mean_return": mean, "std_return": float(np.std(returns)),
        "success_rate": float(np.mean(flags)) if flags else None, "mean_length": float(np.mean(lengths)),
        "expert_return": spec.expert_return, "random_return": spec.random_return,
        "normalized_score": normalized_score(mean, spec.expert_return, spec.random_return),
        "prompt_episode": demo_id, "prompt_tokens": len(prompt), "seconds": round(time.perf_counter() - started, 2),
    }


def _run_episodes(agent: GatoAgent, envs: list[EvalEnv], seeds: list[int], prompt: TokenChunk,
                  max_steps: int | None) -> list[tuple[float, int, bool | None]]:
    """Run one episode per env in lockstep (one batched action per step); (return, steps, success) each.
    An env whose episode is over keeps its last observation in the batch and is not stepped."""
    observations = [env.reset(seed=seed) for env, seed in zip(envs, seeds)]
    agent.reset(prompt, batch=len(envs))
    totals, steps = [0.0] * len(envs), [0] * len(envs)
    successes: list[bool | None] = [None] * len(envs)
    over = [False] * len(envs)
    while not all(over):
        actions = agent.act_batch(observations)
        for i, env in enumerate(envs):
            if over[i]:
                continue
            observations[i], reward, done, flag = env.step(actions[i])
            totals[i] += float(reward)
            steps[i] += 1
            if flag is not None:
                successes[i] = bool(successes[i]) or bool(flag)
            over[i] = bool(done) or (max_steps is not None and steps[i] >= max_steps)
    return list(zip(totals, steps, successes))


def normalized_score(mean_return: float, expert_return: float | None, random_return: float | None) -> float | None:
    """100 (R - R_random) / (R_expert - R_random); None without both references or if they are equal."""
    if expert_return is None or random_return is None or math.isclose(expert_return, random_return):
        return None
    return 100.0 * (mean_return - random_return) / (expert_return - random_return)


def write_report(rows: list[dict[str, Any]], out: Path, title: str = "") -> None:
    """eval.csv, eval.md, eval.json and a bar chart eval.png of the normalized scores (or returns)."""
    from shards.console import format_cell

    out.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else []
    _atomic_text(out / "eval.json", json.dumps({"title": title, "rows": rows}, indent=2) + "\n")
    with _AtomicText(out / "eval.csv") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Gato evaluation {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(r[c]) for c in columns) + " |" for r in rows]
    _atomic_text(out / "eval.md", "\n".join(lines) + "\n")
    _bar_chart(rows, out / "eval.png", title)


def load_env_factory(name: str) -> EnvFactory:
    """'experts' -> the experts registry; 'module:function' -> that function."""
    if name == "experts":
        return registry_env
    module, _, function = name.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--env-factory {name}: cannot load it ({error})") from None


def registry_env(task: str, seed: int, spec: TaskSpec) -> EvalEnv:
    """An EvalEnv over the experts registry's batched env (one copy)."""
    try:
        from experts.registry import get_task
    except ImportError as error:  # pragma: no cover - experts/ ships with GatoForge
        raise ValueError(f"the experts registry is not importable ({error}); pass --env-factory") from None
    return RegistryEnv(get_task(task), seed, spec)


class RegistryEnv:
    """Adapts a registry VectorEnv of one env (SAME_STEP autoreset) to EvalEnv."""

    def __init__(self, entry: Any, seed: int, spec: TaskSpec) -> None:
        self.entry = entry
        self.spec = spec
        self.env = entry.make_env(num_envs=1, seed=seed)

    def reset(self, seed: int) -> dict[str, Any]:
        obs, _ = self.env.reset(seed=seed)
        return _first(self.entry.to_columns(obs))

    def step(self, action: dict[str, np.ndarray]) -> tuple[dict[str, Any], float, bool, bool | None]:
        obs, reward, terminated, truncated, infos = self.env.step(env_action(action, self.spec)[None])
        key = self.entry.success_key
        success = None
        if key is not None:  # the domain reports success: a step without the flag is not one
            success = bool(_info(infos, key) or False)
        raw = _info(infos, "raw_reward")
        reward = float(reward[0]) if raw is None else float(raw)
        return _first(self.entry.to_columns(obs)), reward, bool(terminated[0] or truncated[0]), success

    def close(self) -> None:
        self.env.close()


def env_action(action: dict[str, np.ndarray], spec: TaskSpec) -> np.ndarray:
    """act_* columns -> the env's action: an int for one discrete value, else an array."""
    if ACT_CONTINUOUS in spec.action:
        return np.asarray(action[ACT_CONTINUOUS], dtype=np.float32).reshape(spec.action[ACT_CONTINUOUS].shape)
    values = np.asarray(action[ACT_DISCRETE], dtype=np.int64).reshape(-1)
    return values[0] if values.size == 1 else values


def task_specs(roots: list[str]) -> dict[str, TaskSpec]:
    specs: dict[str, TaskSpec] = {}
    for root in roots:
        specs.update(Dataset(root).manifest.tasks)
    return specs


# ----------------------------------------------------------------------------------------


def _evaluate_on_ray(config: EvalConfig, tasks: list[str], env_factory: EnvFactory | None) -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(_evaluate_task_quietly)
    quiet = EvalConfig(**{**asdict(config), "progress": False, "ray": False})
    return ray.get([remote.remote(quiet, task, env_factory) for task in tasks])


def _evaluate_task_quietly(config: EvalConfig, task: str, env_factory: EnvFactory | None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    return evaluate_task(config, task, env_factory)


def _dataset_of(roots: list[str], task: str) -> tuple[Dataset, TaskSpec]:
    for root in roots:
        dataset = Dataset(root)
        if task in dataset.manifest.tasks:
            return dataset, dataset.manifest.tasks[task]
    raise ValueError(f"task {task!r} is in none of {roots}")


def _first(columns: dict[str, Any]) -> dict[str, Any]:
    return {k: v[0] for k, v in columns.items()}


def _info(infos: dict, key: str) -> Any:
    """Env 0's value of ``key`` in a vector env's infos (final_info first: SAME_STEP autoreset)."""
    for source in (infos.get("final_info"), infos):
        if isinstance(source, dict) and key in source:
            mask = source.get(f"_{key}")
            if mask is None or bool(np.asarray(mask)[0]):
                return np.asarray(source[key])[0]
    return None


def _bar_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = all(r["normalized_score"] is not None for r in rows)
    key, label = ("normalized_score", "expert-normalized score (%)") if scored else ("mean_return", "mean return")
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(rows) + 2), 3.5))
    ax.bar([r["task"] for r in rows], [r[key] for r in rows], color="tab:blue")
    if scored:
        ax.axhline(100, color="tab:green", linestyle="--", linewidth=1, label="expert")
        ax.axhline(0, color="tab:red", linestyle=":", linewidth=1, label="random")
        ax.legend(loc="best", fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class _AtomicText:
    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_suffix(path.suffix + ".tmp")

    def __enter__(self):
        self.file = self.tmp.open("w", newline="")
        return self.file

    def __exit__(self, kind, value, traceback) -> None:
        self.file.close()
        if kind is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
