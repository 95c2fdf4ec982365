"""Train a Gato on GatoForge datasets: one process, or many with torchrun (DDP).

    python -m trainer.train --data runs/quickstart --config trainer/configs/gato-tiny.yaml --out runs/tiny
    python -m trainer.train --data ROOT_A ROOT_B --config trainer/configs/gato-small.yaml --out runs/small \\
        --steps 2000 --batch-size 16 --grad-accum 2 --loader.text-model runs/text.model
    torchrun --nproc-per-node 8 -m trainer.train --data s3://bucket/ds --config trainer/configs/gato-79m.yaml --out runs/79m
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 -m trainer.train ...

Rerunning the same command resumes from ``OUT/checkpoints/latest`` exactly (model, optimizer,
scheduler, each rank's loader position and RNG states); ``--no-resume`` refuses to touch an
existing run instead. Metrics go to OUT/metrics.csv and OUT/tensorboard (losses/, charts/).
The YAML file has three parts, each optional: ``model:`` (GatoConfig fields or ``preset:``),
``loader:`` (trainer.data.DataConfig fields) and the training fields below at the top
level; command-line flags override it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import tyro
import yaml

from trainer.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from trainer.data import DataConfig, make_loader
from trainer.model import CONFIGS, Gato, GatoConfig, model_config_from_dict
from trainer.schedule import warmup_cosine

log = logging.getLogger(__name__)

LOSSES = ("loss", "action_loss", "observation_loss", "regression_loss")
METRICS = ("step", *LOSSES, "lr", "grad_norm", "tokens_per_s", "real_tokens", "padding_fraction", "elapsed_s")


@dataclass
class TrainConfig:
    """Train a Gato (AdamW, warmup + cosine, clipping, accumulation, exact resume)."""

    data: list[str] = field(default_factory=list)
    """dataset roots (local paths or URIs); the checkpoint records them for evaluation prompts"""
    out: str = ""
    """run directory (checkpoints, metrics.csv, tensorboard/)"""
    config: str | None = None
    """YAML file with model:, loader: and training fields (flags override it)"""
    model: GatoConfig = field(default_factory=lambda: dataclasses.replace(CONFIGS["gato-tiny"]))
    loader: DataConfig = field(default_factory=lambda: DataConfig(sequence_length=256))
    steps: int = 1000
    """optimizer steps"""
    batch_size: int = 8
    """sequences per micro-batch per process"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    lr: float = 1e-3
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """cosine decays to lr * this"""
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)"""
    num_workers: int = 0
    """DataLoader worker processes per training process"""
    checkpoint_every: int = 200
    """steps between checkpoints (the last step always writes one)"""
    keep_checkpoints: int = 3
    log_every: int = 10
    """steps between metric rows"""
    seed: int = 0
    threads: int | None = None
    """torch CPU threads per process (None: torch's default, divided among local ranks)"""
    compile: bool | None = None
    """torch.compile the transformer blocks (None: only on a GPU); on a CPU it costs ~15 s at the
    start and takes ~10% off a gato-small step on the demo's batches (docs/trainer.md)"""
    resume: bool = True
    """continue from OUT/checkpoints/latest if it exists"""
    stop_after_steps: int | None = None
    """return (with a checkpoint) after this many steps in this invocation: time-sliced jobs rerun to continue"""
    progress: bool = True
    """show a tqdm bar (rank 0)"""

    def validate(self) -> None:
        """Every problem at once, each naming its flag/field."""
        problems = []
        if not self.data and not self.loader.roots:
            problems.append("--data: give at least one dataset root")
        if self.data and self.loader.roots and list(self.data) != list(self.loader.roots):
            problems.append(f"--data {self.data} and loader.roots {self.loader.roots} disagree: give one")
        if not self.out:
            problems.append("--out: give a run directory")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')}={getattr(self, name)}: expected >= 1")
        if not 0 <= self.warmup_steps <= self.steps:
            problems.append(f"--warmup-steps={self.warmup_steps}: expected 0 <= warmup <= --steps={self.steps}")
        if self.lr <= 0:
            problems.append(f"--lr={self.lr}: expected > 0")
        if self.loader.sequence_length > self.model.block_size:
            problems.append(f"loader.sequence_length={self.loader.sequence_length} exceeds "
                            f"model.block_size={self.model.block_size}")
        if self.model.instruction_film and not self.loader.vector_observations:
            problems.append(f"model.instruction_film={self.model.instruction_film} reads vector observations: "
                            "set loader.vector_observations: true (or instruction_film: 0)")
        if problems:
            raise ValueError("; ".join(problems))
        # the model embeds what the loader makes: one switch, in the loader config
        self.model = dataclasses.replace(self.model, vector_observations=self.loader.vector_observations)
        if self.data:
            self.loader.roots = list(self.data)
        self.data = list(self.loader.roots)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
        summary = train(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary.get("rank", 0) == 0:
        log.info("done: %s", {k: v for k, v in summary.items() if k != "rank"})
    return 0


def parse_config(argv: list[str]) -> TrainConfig:
    """YAML (``--config``) first, then flags on top, through one tyro dataclass."""
    default = TrainConfig()
    path = _flag_value(argv, "--config")
    if path:
        default = config_from_yaml(path)
    return tyro.cli(TrainConfig, args=argv, default=default)


def config_from_yaml(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--config {path}: file not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with model:, loader: and training fields")
    model = model_config_from_dict(data.pop("model", {"preset": "gato-tiny"}), where=f"{path}: model")
    loader_fields = {f.name for f in dataclasses.fields(DataConfig)}
    loader = data.pop("loader", {}) or {}
    unknown = sorted(set(loader) - loader_fields)
    if unknown:
        raise ValueError(f"{path}: unknown loader field(s) {unknown}; expected some of {sorted(loader_fields)}")
    loader = DataConfig(**{"sequence_length": 256, **loader})
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "loader"}
    unknown = sorted(set(data) - train_fields)
    if unknown:
        raise ValueError(f"{path}: unknown training field(s) {unknown}; expected some of {sorted(train_fields)}")
    return TrainConfig(**data, config=str(path), model=model, loader=loader)


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary of the last step."""
    config.validate()
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        trainer.close()


class Trainer:
    """Owns the process group, model, optimizer, scheduler, loader and the run directory."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.rank, self.world_size, self.local_rank = setup_distributed()
        self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        elif self.world_size > 1 and self.device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        self.out = Path(config.out)
        torch.manual_seed(config.seed)  # same initial weights on every rank
        self.model = Gato(config.model).to(self.device)
        self.optimizer = self.model.configure_optimizer(config.lr, config.weight_decay, (config.beta1, config.beta2))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, config.steps, config.min_lr_ratio))
        # A private generator: the DataLoader must not draw from the global RNG (exact resume).
        self.loader = make_loader(config.loader, config.batch_size, config.num_workers, self.rank, self.world_size,
                                  generator=torch.Generator().manual_seed(config.seed))
        self.step = 0
        self._maybe_resume()
        if self.step == 0:  # ranks draw different dropout/patch-position noise from here on
            torch.manual_seed(config.seed + 1000 + self.rank)
        self.net: torch.nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        if config.compile if config.compile is not None else self.device.type == "cuda":
            import torch._dynamo as dynamo

            dynamo.config.suppress_errors = True  # a block inductor cannot build (no C compiler) runs eager
            self.model.compile_blocks()
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                         else contextlib.nullcontext())
        self.batches = iter(self.loader)
        self.metrics_file = None
        self.tensorboard = None

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        config = self.config
        if self.rank == 0:
            self._open_logs()
        bar = None
        if self.rank == 0 and config.progress:
            from tqdm import tqdm

            bar = tqdm(total=config.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        summary: dict[str, Any] = {"rank": self.rank, "step": self.step}
        window_tokens, window_start = 0, time.perf_counter()
        started = time.perf_counter()
        stop_at = config.steps if config.stop_after_steps is None else min(config.steps, self.step + config.stop_after_steps)
        while self.step < stop_at:
            row = self.train_step()
            self.step += 1
            window_tokens += row["real_tokens"]
            if self.step % config.log_every == 0 or self.step == stop_at:
                elapsed = time.perf_counter() - window_start
                row.update(step=self.step, tokens_per_s=window_tokens / max(elapsed, 1e-9),
                           padding_fraction=self.loader.padding_fraction, elapsed_s=time.perf_counter() - started)
                row = self._reduce(row)
                if self.rank == 0:
                    self._log(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
                summary = {"rank": self.rank, **row}
                window_tokens, window_start = 0, time.perf_counter()
            if bar is not None:
                bar.update(1)
            if self.step % config.checkpoint_every == 0 or self.step == stop_at:
                self.save()
        if bar is not None:
            bar.close()
        return summary

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches. Gradients stay in ``.grad``
        until the next step (tests compare them across ranks)."""
        config = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals = dict.fromkeys(LOSSES, 0.0)
        real_tokens = 0
        for micro in range(config.grad_accum):
            try:
                host = next(self.batches)
            except StopIteration:
                raise ValueError(f"the loader ran out of data at step {self.step} (loader.passes="
                                 f"{config.loader.passes}); leave passes unset to stream forever") from None
            batch = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
            self.last_batch = batch
            real_tokens += int(batch["attention_mask"].sum())
            sync = micro == config.grad_accum - 1 or self.world_size == 1
            with (contextlib.nullcontext() if sync else self.net.no_sync()), self.autocast:
                out = self.net(batch)
                (out.loss / config.grad_accum).backward()
            for key in LOSSES:
                value = getattr(out, key)
                if value is not None:
                    totals[key] += value.item() / config.grad_accum
        if config.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None])))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        return {**totals, "lr": lr, "grad_norm": grad_norm, "real_tokens": real_tokens}

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path | None:
        """Every rank contributes its loader position and RNG states; rank 0 writes."""
        mine = {"loader": self.loader.state_dict(), "rng": rng_state()}
        ranks = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        path = None
        if self.rank == 0:
            state = {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ranks": ranks, "world_size": self.world_size,
                "model_config": dataclasses.asdict(self.config.model),
                "train_config": _plain(dataclasses.asdict(self.config)),
                "data_roots": [str(Path(r).resolve()) if "://" not in r else r for r in self.config.data],
                "text_model": self.config.loader.text_model, "max_text_tokens": self.config.loader.max_text_tokens,
            }
            path = save_checkpoint(self.out, self.step, state, keep=self.config.keep_checkpoints)
            if self.metrics_file is not None:
                self.metrics_file.flush()
        if self.world_size > 1:
            dist.barrier()
        return path

    def _maybe_resume(self) -> None:
        found = latest_checkpoint(self.out)
        if found is None:
            return
        if not self.config.resume:
            raise ValueError(f"--out {self.out} already holds checkpoints ({found.name}); rerun without --no-resume "
                             f"to continue it, or pick another --out")
        state = load_checkpoint(found, map_location=self.device)
        if state["world_size"] != self.world_size:
            raise ValueError(f"{found}: saved by {state['world_size']} process(es), resuming with {self.world_size}: "
                             f"use the same number of processes (each rank's loader position is its own)")
        # a field added since the checkpoint was written takes its default (its behaviour then)
        if dataclasses.asdict(GatoConfig(**state["model_config"])) != dataclasses.asdict(self.config.model):
            raise ValueError(f"{found}: the checkpoint's model config differs from this run's; use the same --config")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        mine = state["ranks"][self.rank]
        self.loader.load_state_dict(mine["loader"])
        set_rng_state(mine["rng"])
        self.step = int(state["step"])
        if self.rank == 0:
            log.info("resumed %s at step %d", found, self.step)

    # ------------------------------------------------------------------ logs

    def _open_logs(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(_plain(dataclasses.asdict(self.config)), sort_keys=False))
        path = self.out / "metrics.csv"
        kept = []
        if path.exists():  # drop rows written after the checkpoint we resumed from
            with path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(kept)
        tmp = path.with_suffix(".csv.tmp")
        tmp.write_text(buffer.getvalue())
        os.replace(tmp, path)
        self.metrics_file = path.open("a", newline="")
        self.csv = csv.DictWriter(self.metrics_file, fieldnames=METRICS)
        self.tensorboard = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1)

    def _log(self, row: dict[str, Any]) -> None:
        self.csv.writerow({k: row.get(k) for k in METRICS})
        self.metrics_file.flush()
        step = row["step"]
        for key in LOSSES:
            self.tensorboard.add_scalar(f"losses/{key}", row[key], step)
        for key in ("lr", "grad_norm", "tokens_per_s", "padding_fraction"):
            self.tensorboard.add_scalar(f"charts/{key}", row[key], step)

    def _reduce(self, row: dict[str, Any]) -> dict[str, Any]:
        """Mean losses and summed tokens/s over ranks, for the log."""
        if self.world_size == 1:
            return row
        keys = (*LOSSES, "padding_fraction")
        values = torch.tensor([row[k] for k in keys] + [row["tokens_per_s"], row["real_tokens"]], dtype=torch.float64)
        dist.all_reduce(values)
        out = dict(row)
        for i, k in enumerate(keys):
            out[k] = float(values[i]) / self.world_size
        out["tokens_per_s"], out["real_tokens"] = float(values[-2]), int(values[-1])
        return out

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); joins the process group when torchrun started us."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    world = int(os.environ["WORLD_SIZE"])
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _plain(value: Any) -> Any:
    """Tuples -> lists so YAML and checkpoints hold plain data."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
