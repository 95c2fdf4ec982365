"""`make demo`: the whole GatoForge pipeline on datasets/quickstart.yaml, stage by stage, resumable.

    python scripts/demo.py                                # collect, validate, curate, tokenizer, train, evaluate, report
    python scripts/demo.py --out runs/demo --train-minutes 25 --continuous-decoding median
    python scripts/demo.py --skip-collect --skip-train    # re-evaluate / re-report only
    python scripts/demo.py --overwrite-curation           # redo curation (and what depends on it)

Stages (each one the real command a user would type, its progress shown live, its wall time
printed and kept in OUT/stages.json):

1. collect   collectors/run_all.py --spec datasets/quickstart.yaml --out OUT/data (local Ray);
             a rerun skips committed units
2. validate  python -m shards validate OUT/data
3. curate    python -m curation select OUT/data --out OUT/curated --report (Gato's 80% filter);
             skipped while OUT/curated is newer than OUT/data, else redone with --overwrite
4. tokenizer python -m trainer.tokenizer fit OUT/curated --out OUT/text.model (same rule)
5. train     python -m trainer.train --config trainer/configs/demo.yaml --out OUT/train, run in
             checkpoint-sized slices until its steps are done or --train-minutes is spent;
             a rerun resumes from the last checkpoint
6. evaluate  python -m trainer.evaluate --episodes 50, one process per task (BabyAI, Meta-World,
             cartpole), --jobs at a time, merged into OUT/eval/eval.{md,csv,json,png}; a task is
             redone only when the checkpoint (or the evaluation settings) changed
7. report    OUT/report.html (scripts/demo_report.py)

A failing stage stops the demo with the command that failed and its exit code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from demo_report import write_report  # noqa: E402  (a sibling module of this script)

DEMO_TASKS = ("babyai/GoToRedBall", "babyai/GoToLocal", "metaworld/reach-v3", "metaworld/push-v3",
              "dmc/cartpole-balance")
# Relative cost of one evaluation episode by domain (steps x tokens per step): the long ones start first.
EVAL_COST = {"dmc": 50, "metaworld": 40, "procgen": 20, "atari": 20, "babyai": 1}
MIN_SLICE_STEPS = 20  # a shorter last slice would spend more on the trainer's start than on training
STAGES = ("collect", "validate", "curate", "tokenizer", "train", "evaluate", "report")


@dataclass
class DemoConfig:
    """Run the GatoForge pipeline end to end on the quickstart spec and write OUT/report.html."""

    out: str = str(REPO / "runs" / "demo")
    """demo folder: data/, curated/, text.model, train/, eval/, report.html, stages.json"""
    spec: str = str(REPO / "datasets" / "quickstart.yaml")
    """dataset spec to collect"""
    train_config: str = str(REPO / "trainer" / "configs" / "demo.yaml")
    """trainer YAML for the small Gato"""
    train_minutes: float = 27.0
    """wall-clock budget of the training stage in this invocation (it stops at a checkpoint)"""
    total_minutes: float = 44.0
    """budget of the whole invocation: training also stops in time to leave --eval-minutes before
    it ends, however long collection took (0 = no such cap)"""
    eval_minutes: float = 7.5
    """what --total-minutes keeps for evaluation and the report (7 min 4 s in the run of 2026-12-03)"""
    tasks: tuple[str, ...] = DEMO_TASKS
    """tasks to evaluate (Atari/Procgen are collected but neither trained on nor evaluated)"""
    episodes: int = 50
    """evaluation episodes per task (Gato: 50)"""
    temperature: float = 0.6
    """sampling temperature of the discrete action tokens at evaluation (0 = greedy); 0.6 beat 1.0
    on both BabyAI tasks on seeds the demo does not score (docs/demo.md)"""
    continuous_decoding: str = "median"
    """continuous action tokens at evaluation: 'median' bin of the model's distribution, or 'sample'"""
    num_cpus: int | None = None
    """CPUs of the local Ray used for collection (default: all cores)"""
    jobs: int = max(1, os.cpu_count() or 1)
    """evaluation processes run at once (one task each, one torch thread each)"""
    overwrite_curation: bool = False
    """redo curation even if its output is newer than the collected data"""
    skip_collect: bool = False
    skip_validate: bool = False
    skip_curate: bool = False
    skip_tokenizer: bool = False
    skip_train: bool = False
    skip_evaluate: bool = False
    skip_report: bool = False


class StageFailed(RuntimeError):
    """A stage's command failed; the message names it."""


def main(config: DemoConfig) -> int:
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings = _load_json(out / "stages.json")
    total_start = time.perf_counter()
    runners = {"collect": _collect, "validate": _validate, "curate": _curate, "tokenizer": _tokenizer,
               "train": lambda config, out: _train(config, out, demo_start=total_start),
               "evaluate": _evaluate, "report": _report}
    for number, name in enumerate(STAGES, 1):
        if getattr(config, f"skip_{name}"):
            print(f"[demo] {number}/{len(STAGES)} {name}: skipped (--skip-{name})", flush=True)
            continue
        print(f"[demo] {number}/{len(STAGES)} {name} ...", flush=True)
        start = time.perf_counter()
        try:
            note = runners[name](config, out)
        except StageFailed as error:
            print(f"[demo] {name} FAILED: {error}\n[demo] fix it and rerun: finished stages are kept and resume.",
                  flush=True)
            return 1
        seconds = time.perf_counter() - start
        timings[name] = _timing(timings.get(name), seconds, note)
        _write_json(out / "stages.json", timings)
        print(f"[demo] {name} done in {_clock(seconds)}{f' ({note})' if note else ''}", flush=True)
    print(f"[demo] all stages done in {_clock(time.perf_counter() - total_start)}; open {out / 'report.html'}")
    return 0


# ---- stages -------------------------------------------------------------------------------------

def _collect(config: DemoConfig, out: Path) -> str:
    command = [str(REPO / "collectors" / "run_all.py"), "--spec", config.spec, "--out", str(out / "data")]
    if config.num_cpus:
        command += ["--num-cpus", str(config.num_cpus)]
    plan = json.loads(_output("collect", [*command, "--dry-run", "--json"]))["rows"]
    pending = sum(not row["committed"] for row in plan)
    _run("collect", command)
    return "" if pending else f"kept: all {len(plan)} units were already committed"


def _validate(config: DemoConfig, out: Path) -> str:
    _run("validate", ["-m", "shards", "validate", str(out / "data")])
    return ""


def _curate(config: DemoConfig, out: Path) -> str:
    src, dst = out / "data", out / "curated"
    if not config.overwrite_curation and _newer(dst / "episodes.parquet", src / "episodes.parquet"):
        return "kept: newer than the collected data"
    command = ["-m", "curation", "select", str(src), "--out", str(dst), "--report"]
    if dst.exists():
        command.append("--overwrite")
    _run("curate", command)
    return ""


def _tokenizer(config: DemoConfig, out: Path) -> str:
    model = out / "text.model"
    if _newer(model, out / "curated" / "episodes.parquet"):
        return "kept: newer than the curated data"
    _run("tokenizer", ["-m", "trainer.tokenizer", "fit", str(out / "curated"), "--out", str(model)])
    return ""


def _train(config: DemoConfig, out: Path, demo_start: float | None = None) -> str:
    """Slices of `checkpoint_every` steps, so the budget is kept without losing work past a checkpoint.

    The budget is --train-minutes, cut short when the demo started at ``demo_start`` would
    otherwise leave less than --eval-minutes of its --total-minutes."""
    settings = yaml.safe_load(Path(config.train_config).read_text()) or {}
    total, slice_steps = int(settings.get("steps", 1000)), int(settings.get("checkpoint_every", 200))
    run = out / "train"
    command = ["-m", "trainer.train", "--data", str(out / "curated"), "--config", config.train_config,
               "--out", str(run), "--loader.text-model", str(out / "text.model")]
    deadline = time.perf_counter() + 60 * config.train_minutes
    if config.total_minutes and demo_start is not None:
        total_deadline = demo_start + 60 * (config.total_minutes - config.eval_minutes)
        if total_deadline < deadline:
            print(f"[demo] train: {max(0.0, (total_deadline - time.perf_counter()) / 60):.1f} minutes left for training "
                  f"(--total-minutes {config.total_minutes:g} keeps {config.eval_minutes:g} for evaluation)", flush=True)
            deadline = total_deadline
    per_step = 0.0  # seconds per step of the latest slice, its process start included
    start_step = step = _checkpoint_step(run)
    while step < total:
        left = deadline - time.perf_counter()
        # the latest slice predicts the next (a slow one under a passing load does not end
        # training early); the last slice is cut to the time left
        fits = int(left / per_step) if per_step else slice_steps
        steps = min(slice_steps, total - step, fits)
        if left <= 0 or steps < min(MIN_SLICE_STEPS, total - step):
            print(f"[demo] train: stopping at step {step}/{total}: {max(left, 0.0):.0f} s of the training budget left, "
                  f"a step takes {per_step:.2f} s", flush=True)
            break
        began = time.perf_counter()
        _run("train", [*command, "--stop-after-steps", str(steps)])
        previous, step = step, _checkpoint_step(run)
        per_step = (time.perf_counter() - began) / max(step - previous, 1)
        if step <= previous:
            raise StageFailed(f"the trainer exited without a new checkpoint after step {previous} in {run}")
    return f"steps {start_step} -> {step} of {total}"


def _evaluate(config: DemoConfig, out: Path) -> str:
    """One `trainer.evaluate` process per task, `--jobs` at a time (longest first), then one merged table.

    Separate processes (one torch thread each) keep every task's own progress bar visible and
    finish the long control tasks in parallel; a task is redone only if its checkpoint or
    settings changed.
    """
    from trainer.checkpoint import latest_checkpoint
    from trainer.evaluate import write_report as write_eval_report

    checkpoint = latest_checkpoint(out / "train")
    if checkpoint is None:
        raise StageFailed(f"no checkpoint under {out / 'train'}: run the train stage first")
    stat = checkpoint.stat()
    key = {"checkpoint": checkpoint.name, "size": stat.st_size, "mtime": stat.st_mtime,
           "episodes": config.episodes, "temperature": config.temperature,
           "continuous_decoding": config.continuous_decoding}
    eval_dir = out / "eval"
    pending = {}
    for task in config.tasks:
        folder = eval_dir / "tasks" / task.replace("/", "__")
        if not ((folder / "eval.json").exists() and _load_json(folder / "demo-key.json") == key):
            pending[task] = folder
    order = sorted(pending, key=lambda t: -EVAL_COST.get(t.split("/")[0], 1))
    _run_parallel("evaluate", [(task, ["-m", "trainer.evaluate", "--checkpoint", str(out / "train"), "--tasks", task,
                                       "--episodes", str(config.episodes), "--temperature", str(config.temperature),
                                       "--continuous-decoding", config.continuous_decoding,
                                       "--out", str(pending[task])]) for task in order], config.jobs, eval_dir / "logs")
    for task in order:
        _write_json(pending[task] / "demo-key.json", key)
    rows = [json.loads((eval_dir / "tasks" / t.replace("/", "__") / "eval.json").read_text())["rows"][0]
            for t in config.tasks]
    write_eval_report(rows, eval_dir, title=f"{checkpoint.name} ({config.episodes} episodes per task, "
                                            f"temperature {config.temperature:g}, continuous actions: "
                                            f"{config.continuous_decoding})")
    from shards.console import print_table

    print_table([{k: r[k] for k in ("task", "mean_return", "success_rate", "normalized_score", "expert_return",
                                    "random_return", "seconds")} for r in rows], title="evaluation")
    if not order:
        return f"kept: every task already evaluated with {checkpoint.name}"
    return f"{checkpoint.name}: {len(order)} of {len(config.tasks)} tasks evaluated"


def _report(config: DemoConfig, out: Path) -> str:
    path = write_report(out, config.tasks, _load_json(out / "stages.json"), config.train_config)
    return str(path)


# ---- helpers ------------------------------------------------------------------------------------

def _run(stage: str, args: list[str]) -> None:
    """Run ``python ARGS`` from the repo with live output; raise StageFailed on a non-zero exit."""
    command = [sys.executable, *args]
    print(f"[demo] $ {shlex.join(command)}", flush=True)
    result = subprocess.run(command, cwd=REPO, env=_env())
    if result.returncode != 0:
        raise StageFailed(f"`{shlex.join(command)}` exited with code {result.returncode}")


def _run_parallel(stage: str, jobs: list[tuple[str, list[str]]], width: int, logs: Path) -> None:
    """Run ``python ARGS`` jobs, ``width`` at a time, each logging to LOGS/NAME.log; print their
    latest progress line every 20 s; raise StageFailed naming the first that fails."""
    logs.mkdir(parents=True, exist_ok=True)
    env = _env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    queue, running, last_print = list(jobs), {}, 0.0
    while queue or running:
        while queue and len(running) < max(1, width):
            name, args = queue.pop(0)
            log_path = logs / (name.replace("/", "__") + ".log")
            command = [sys.executable, *args]
            print(f"[demo] $ {shlex.join(command)}  > {log_path}", flush=True)
            handle = log_path.open("w")
            running[name] = (subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT),
                             handle, log_path, command)
        time.sleep(1.0)
        for name, (process, handle, log_path, command) in list(running.items()):
            if process.poll() is None:
                continue
            handle.close()
            del running[name]
            if process.returncode != 0:
                for other, *_ in running.values():
                    other.terminate()
                tail = log_path.read_text()[-1500:]
                raise StageFailed(f"`{shlex.join(command)}` exited with code {process.returncode}; "
                                  f"end of {log_path}:\n{tail}")
            print(f"[demo] {stage} {name}: done", flush=True)
        if running and time.perf_counter() - last_print > 20:
            last_print = time.perf_counter()
            for name, (_, _, log_path, _) in running.items():
                print(f"[demo] {stage} {name}: {_last_progress(log_path)}", flush=True)


def _last_progress(log_path: Path) -> str:
    """The newest tqdm line of a log (bars rewrite themselves with carriage returns)."""
    text = log_path.read_text(errors="replace")[-4000:]
    pieces = [p.strip() for p in re.split(r"[\r\n]", text) if p.strip()]
    bars = [p for p in pieces if "%|" in p]
    return (bars or pieces or ["starting"])[-1][:150]


def _timing(previous: dict | None, seconds: float, note: str) -> dict:
    """The stage's record in stages.json: a no-op rerun keeps the time of the run that did the work;
    resumed training adds its time to the earlier invocations'."""
    record = {"seconds": round(seconds, 1), "note": note, "finished": _now()}
    if previous is None:
        return record
    steps = re.fullmatch(r"steps (\d+) -> (\d+) of \d+", note)
    if note.startswith("kept") or (steps and steps.group(1) == steps.group(2)):
        return {**previous, "rechecked": record["finished"]}
    if steps and int(steps.group(1)) > 0:
        return {**record, "seconds": round(previous["seconds"] + seconds, 1),
                "note": f"{note} (this run); {previous['seconds']:.0f} s before"}
    return record


def _output(stage: str, args: list[str]) -> str:
    """stdout of ``python ARGS`` (for plans and JSON tables); raise StageFailed on a non-zero exit."""
    command = [sys.executable, *args]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise StageFailed(f"`{shlex.join(command)}` exited with code {result.returncode}: {result.stderr.strip()[-800:]}")
    return result.stdout


def _env(**extra: str) -> dict[str, str]:
    """The children's environment: this checkout importable, Ray quiet and local."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **extra)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _checkpoint_step(run: Path) -> int:
    from trainer.checkpoint import latest_checkpoint

    path = latest_checkpoint(run)
    match = re.search(r"step-(\d+)\.pt$", path.name) if path else None
    return int(match.group(1)) if match else 0


def _newer(path: Path, than: Path) -> bool:
    return path.exists() and than.exists() and path.stat().st_mtime >= than.stat().st_mtime


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


if __name__ == "__main__":
    sys.exit(main(tyro.cli(DemoConfig)))
