"""Streaming Gato sequences from GatoForge datasets: a torch IterableDataset and its loader.

    python -m trainer.data runs/quickstart --text-model runs/text.model --sequences 200 [--json]
    python -m trainer.data ROOT_A ROOT_B --mixture mixture.yaml --weight atari=2

    from trainer.data import DataConfig, make_loader
    loader = make_loader(DataConfig(roots=["runs/quickstart"], text_model="runs/text.model"),
                         batch_size=32, num_workers=2)
    for batch in loader:               # dict of tensors, see below
        ...
    state = loader.state_dict()         # later: loader.load_state_dict(state) resumes exactly

What each sequence holds (the contract with trainer/model.py; the default collate stacks to B):

    tokens           int64 (L,)   ids of trainer.tokenizer.LAYOUT; IMAGE_PLACEHOLDER at patches, PAD at the end
    loss_mask        bool  (L,)   True on action and text tokens (predict token l from tokens < l)
    attention_mask   bool  (L,)   True on real tokens; padding only at the end
    local_positions  int64 (L,)   position inside the timestep's observation; -1 on separator/action/pad
    is_image         bool  (L,)   True where the token is an image patch
    patches          float32 (P_max, 4, 16, 16)  the patches in token order, [-1, 1] / 4, zero-padded
    patch_rows       float32 (P_max, 2)  normalized [start, end) row interval of each patch
    patch_cols       float32 (P_max, 2)  normalized [start, end) column interval
    num_patches      int64 ()     real patches (the rest is padding)

``P_max`` is ``DataConfig.max_patches`` or, by default, a bound computed from the datasets'
image tasks (``floor(L * P / s) + P`` for P patches in a timestep of s tokens), and 1 when no
task has images, so every sequence of a loader has the same shapes.

With ``observation_targets=True`` (JAT's kappa, Dynalang's next-observation prediction) two
more keys come along: ``obs_targets`` int64 (L,) (the token ids) and ``obs_target_mask`` bool
(L,), True on observation tokens that are not text and not the first token; at image
positions the target is the patch itself (``patches``), elsewhere the token id. The trainer
adds kappa x that loss to the action loss. With ``provenance=True`` (tests, debugging):
``token_episode`` / ``token_offset`` int64 (L,) (global episode number and offset inside
its tokens, -1 on padding), ``is_prompt`` bool (L,) and ``prompt_kind`` int64 () (0 none,
1 episode end, 2 uniform position).

Sampling (trainer/sequences.py has the details): tasks are drawn with the mixture weights
(trainer/mixture.py: uniform over domains, then tasks); each task's episodes are split across
ranks x workers per epoch so no window is served twice in an epoch; sequences are L tokens
starting on a timestep, packed across episodes, 25% with a prompt; a shuffle buffer mixes
them. The loader's state is how many sequences each worker has handed over: resuming
replays the plans (no pixels read) and continues with the very same sequences.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer.catalog import Catalog
from trainer.mixture import parse_weight_args, task_weights
from trainer.patches import PATCH_SIZE, scale_patches
from trainer.sequences import Assembled, SamplerSettings, ShardSampler, max_patches_per_sequence
from trainer.text_tokenizer import TextTokenizer
from trainer.tokenizer import IMAGE_PLACEHOLDER, MAX_CHANNELS, PAD

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class DataConfig:
    """What the loader reads and how it cuts sequences."""

    roots: list[str] = field(default_factory=list)
    """dataset roots (local paths or URIs)"""
    text_model: str | None = None
    """SentencePiece model: a path or a hub id owner/repo[:file] (needed when a task has obs_text)"""
    sequence_length: int = SamplerSettings.sequence_length
    """tokens per sequence (L)"""
    mixture: str | None = None
    """YAML file of domain/task weights (default: uniform over domains, then tasks)"""
    weight: tuple[str, ...] = ()
    """extra NAME=WEIGHT pairs (a domain or a task id), applied over the mixture file"""
    prompt_probability: float = SamplerSettings.prompt_probability
    """share of sequences that start with a prompt from another episode of the same task and source"""
    prompt_end_probability: float = SamplerSettings.prompt_end_probability
    """share of prompts taken from the end of their episode (the rest: a uniform position)"""
    prompt_fraction: float = SamplerSettings.prompt_fraction
    """at most this share of L is prompt (at least one timestep)"""
    shuffle_buffer: int = SamplerSettings.shuffle_buffer
    """sequences held to shuffle (per worker)"""
    seed: int = SamplerSettings.seed
    passes: int | None = SamplerSettings.passes
    """epochs over each task before its stream ends; None streams forever"""
    max_patches: int | None = None
    """P_max, patches per sequence; None derives a bound from the datasets"""
    max_text_tokens: int = 128
    """text tokens kept per timestep"""
    patch_dtype: str = "float32"
    """float32: patches in [-1, 1] / 4 (the contract); uint8: raw pixels, 4x fewer bytes to move, plus
    patch_channels; trainer.patches.normalize_patches turns them into the same floats on the device"""
    prompt_pool_units: int = 3
    """read units per task kept for drawing prompts (memory: about this many row groups per task)"""
    observation_targets: bool = False
    """also yield next-observation targets (obs_targets, obs_target_mask)"""
    provenance: bool = False
    """also yield where each token came from (token_episode, token_offset, is_prompt, prompt_kind)"""

    def validate(self) -> None:
        problems = []
        if not self.roots:
            problems.append("roots: give at least one dataset root")
        if self.sequence_length < 16:
            problems.append(f"sequence_length={self.sequence_length}: expected >= 16")
        for name in ("prompt_probability", "prompt_end_probability", "prompt_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= (0.5 if name == "prompt_fraction" else 1.0):
                problems.append(f"{name}={value}: expected a number in [0, {0.5 if name == 'prompt_fraction' else 1}]")
        if self.passes is not None and self.passes < 1:
            problems.append(f"passes={self.passes}: expected >= 1 or None")
        if self.patch_dtype not in ("float32", "uint8"):
            problems.append(f"patch_dtype={self.patch_dtype!r}: expected 'float32' or 'uint8'")
        if self.max_patches is not None and self.max_patches < 1:
            problems.append(f"max_patches={self.max_patches}: expected >= 1")
        if problems:
            raise ValueError("; ".join(problems))

    def weights_spec(self) -> dict:
        """The mixture file's weights with the ``weight`` pairs on top."""
        from trainer.mixture import parse_mixture

        domains, tasks = parse_mixture(self.mixture)
        for name, value in parse_weight_args(self.weight).items():
            (tasks if "/" in name else domains)[name] = value
        return {"domains": domains, "tasks": tasks}


class GatoDataset(IterableDataset):
    """Gato sequences streamed from shard datasets; see the module docstring for the keys.

    Shards its work over DataLoader workers and distributed ranks (``rank``/``world_size``,
    default from torch.distributed when it is initialized)."""

    def __init__(self, config: DataConfig, rank: int | None = None, world_size: int | None = None,
                 batch_size: int | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.batch_size = batch_size
        self.pack_patches = False
        if rank is None or world_size is None:
            rank, world_size = _distributed_rank()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.text_model = TextTokenizer.load(config.text_model) if config.text_model else None
        self.catalog = Catalog(config.roots, self.text_model, config.max_text_tokens)
        with_text = [t for t, layout in self.catalog.layouts.items() if layout.has_text]
        if with_text and self.text_model is None:
            raise ValueError(f"tasks {with_text} have obs_text: pass text_model (fit one with "
                             f"`python -m trainer.tokenizer fit ROOT --out text.model`)")
        domains = {task: self.catalog.domain_of(task) for task in self.catalog.task_names}
        self.weights = task_weights(domains, config.weights_spec())
        self.max_patches = config.max_patches or max_patches_per_sequence(self.catalog, config.sequence_length)
        self.settings = SamplerSettings(
            sequence_length=config.sequence_length, prompt_probability=config.prompt_probability,
            prompt_end_probability=config.prompt_end_probability, prompt_fraction=config.prompt_fraction,
            shuffle_buffer=config.shuffle_buffer, seed=config.seed, passes=config.passes,
            prompt_pool_units=config.prompt_pool_units, provenance=config.provenance)
        self._resume: list[int] | None = None
        self._consumed = [0]
        self._real_tokens = 0
        self._total_tokens = 0

    # -------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        shard = self.rank * workers + worker
        sampler = ShardSampler(self.catalog, self.weights, self.settings, shard, self.world_size * workers)
        iterator = iter(sampler)
        skip = 0
        if self._resume is not None:
            if len(self._resume) != workers:
                raise ValueError(f"loader state was saved with {len(self._resume)} worker(s); this loader has {workers}")
            skip = self._resume[worker]
            sampler.fast_forward(iterator, skip)
        if info is None:
            self._consumed = [skip]
        group = self.batch_size or 1
        shared = info is not None  # in a worker: build tensors in shared memory, saving a copy
        while True:
            sequences = [assembled for _, (_, assembled) in zip(range(group), iterator)]
            if not sequences:
                return
            if info is None:
                self._consumed[0] += len(sequences)
                self._real_tokens += sum(len(seq.tokens) for seq in sequences)
                self._total_tokens += self.config.sequence_length * len(sequences)
            if self.batch_size is None:
                batch = self.collate(sequences, self.max_patches, shared)
                yield {key: value[0] for key, value in batch.items()}
            else:
                yield self.collate(sequences, self.config.max_patches, shared, packed=self.pack_patches)

    def collate(self, sequences: list[Assembled], max_patches: int | None = None,
                shared: bool = False, packed: bool = False) -> dict[str, torch.Tensor]:
        """Assembled sequences -> the contract's tensors with a leading batch dimension; P is
        ``max_patches`` or, when None, the most patches any of these sequences has (>= 1).
        Pixels are scaled straight into the output (one float write per value).

        ``packed``: the compact form a DataLoader worker sends (``expand_batch`` turns it into
        the contract's tensors in the main process): ``tokens`` int32, ``local_positions`` int16,
        ``loss_mask``, ``lengths`` (B,) and the patches as uint8 pixels back to back,
        ``packed_patches`` (N, 4, 16, 16) (+ ``packed_patch_rows``/``_cols``, ``patch_channels``),
        no padding slots and no derived masks. Bytes through shared memory cost on both sides
        (fresh pages), and float32 patches are 4x their pixels."""
        if packed:
            return self._collate_compact(sequences)
        length, size = self.config.sequence_length, len(sequences)
        counts = [len(seq.raw_patches) for seq in sequences]
        patch_slots = max_patches or max(1, max(counts))
        if max(counts) > patch_slots:
            raise ValueError(f"a sequence holds {max(counts)} patches, more than max_patches={patch_slots}")
        raw_pixels = self.config.patch_dtype == "uint8"
        pixel_type = torch.uint8 if raw_pixels else torch.float32
        specs = {"tokens": ((size, length), torch.int64), "loss_mask": ((size, length), torch.bool),
                 "attention_mask": ((size, length), torch.bool), "local_positions": ((size, length), torch.int64),
                 "is_image": ((size, length), torch.bool), "num_patches": ((size,), torch.int64),
                 "patches": ((size, patch_slots, MAX_CHANNELS, PATCH_SIZE, PATCH_SIZE), pixel_type),
                 "patch_rows": ((size, patch_slots, 2), torch.float32), "patch_cols": ((size, patch_slots, 2), torch.float32)}
        if raw_pixels:
            specs["patch_channels"] = ((size,), torch.int64)
        if self.config.observation_targets:
            specs["obs_targets"] = ((size, length), torch.int64)
            specs["obs_target_mask"] = ((size, length), torch.bool)
        batch = _allocate(specs, shared)
        view = {key: tensor.numpy() for key, tensor in batch.items()}
        tokens_np, local_np = view["tokens"], view["local_positions"]
        patches_np, rows_np, cols_np = view["patches"], view["patch_rows"], view["patch_cols"]
        tokens_np.fill(PAD)
        local_np.fill(-1)
        for b, seq in enumerate(sequences):
            n, p = len(seq.tokens), counts[b]
            tokens_np[b, :n] = seq.tokens
            view["loss_mask"][b, :n] = seq.loss_mask
            view["attention_mask"][b, :n] = True
            local_np[b, :n] = seq.local_positions
            if p:
                row, slots = b, slice(0, p)
                channels = seq.raw_patches.shape[1]
                if raw_pixels:
                    patches_np[row, slots, :channels] = seq.raw_patches
                else:
                    scale_patches(seq.raw_patches, out=patches_np[row, slots, :channels])
                rows_np[row, slots] = seq.patch_rows
                cols_np[row, slots] = seq.patch_cols
            view["num_patches"][b] = p
            if raw_pixels:
                view["patch_channels"][b] = seq.raw_patches.shape[1] if p else 0
        np.equal(tokens_np, IMAGE_PLACEHOLDER, out=view["is_image"])
        if self.config.observation_targets:
            view["obs_targets"][:] = tokens_np
            target = view["obs_target_mask"]
            np.greater_equal(local_np, 0, out=target)
            target &= ~view["loss_mask"]
            target[:, 0] = False
        if self.config.provenance:
            batch.update(_provenance(sequences, length))
        return batch

    def _collate_compact(self, sequences: list[Assembled]) -> dict[str, torch.Tensor]:
        """See ``collate(packed=True)``: one shared-memory segment holding compact arrays."""
        length, size = self.config.sequence_length, len(sequences)
        counts = [len(seq.raw_patches) for seq in sequences]
        limit = self.config.max_patches
        if limit is not None and max(counts) > limit:
            raise ValueError(f"a sequence holds {max(counts)} patches, more than max_patches={limit}")
        total = max(1, sum(counts))
        specs = {"tokens": ((size, length), torch.int32), "loss_mask": ((size, length), torch.bool),
                 "local_positions": ((size, length), torch.int16), "lengths": ((size,), torch.int64),
                 "num_patches": ((size,), torch.int64), "patch_channels": ((size,), torch.int64),
                 "packed_patches": ((total, MAX_CHANNELS, PATCH_SIZE, PATCH_SIZE), torch.uint8),
                 "packed_patch_rows": ((total, 2), torch.float32), "packed_patch_cols": ((total, 2), torch.float32)}
        batch = _allocate(specs, shared=get_worker_info() is not None)
        view = {key: tensor.numpy() for key, tensor in batch.items()}
        view["tokens"].fill(PAD)
        view["local_positions"].fill(-1)
        start = 0
        for b, seq in enumerate(sequences):
            n, p = len(seq.tokens), counts[b]
            view["tokens"][b, :n] = seq.tokens
            view["loss_mask"][b, :n] = seq.loss_mask
            view["local_positions"][b, :n] = seq.local_positions
            view["lengths"][b] = n
            view["num_patches"][b] = p
            if p:
                channels = seq.raw_patches.shape[1]
                view["patch_channels"][b] = channels
                view["packed_patches"][start:start + p, :channels] = seq.raw_patches
                view["packed_patch_rows"][start:start + p] = seq.patch_rows
                view["packed_patch_cols"][start:start + p] = seq.patch_cols
                start += p
        if self.config.provenance:
            batch.update(_provenance(sequences, length))
        return batch

    def expand_batch(self, compact: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A worker's compact batch (``collate(packed=True)``) -> exactly the tensors
        ``collate`` gives in-process (the contract's keys, dtypes and values)."""
        config = self.config
        tokens_np = compact["tokens"].numpy()
        size, length = tokens_np.shape
        counts = compact["num_patches"].numpy()
        slots = config.max_patches or max(1, int(counts.max(initial=0)))
        raw_pixels = config.patch_dtype == "uint8"
        specs = {"tokens": ((size, length), torch.int64), "loss_mask": ((size, length), torch.bool),
                 "attention_mask": ((size, length), torch.bool), "local_positions": ((size, length), torch.int64),
                 "is_image": ((size, length), torch.bool), "num_patches": ((size,), torch.int64),
                 "patches": ((size, slots, MAX_CHANNELS, PATCH_SIZE, PATCH_SIZE), torch.uint8 if raw_pixels else torch.float32),
                 "patch_rows": ((size, slots, 2), torch.float32), "patch_cols": ((size, slots, 2), torch.float32)}
        if raw_pixels:
            specs["patch_channels"] = ((size,), torch.int64)
        if config.observation_targets:
            specs["obs_targets"] = ((size, length), torch.int64)
            specs["obs_target_mask"] = ((size, length), torch.bool)
        batch = _allocate(specs, shared=False)
        view = {key: tensor.numpy() for key, tensor in batch.items()}
        view["tokens"][:] = tokens_np
        view["loss_mask"][:] = compact["loss_mask"].numpy()
        view["local_positions"][:] = compact["local_positions"].numpy()
        np.less(np.arange(length), compact["lengths"].numpy()[:, None], out=view["attention_mask"])
        np.equal(view["tokens"], IMAGE_PLACEHOLDER, out=view["is_image"])
        view["num_patches"][:] = counts
        channels = compact["patch_channels"].numpy()
        if raw_pixels:
            view["patch_channels"][:] = channels
        packed = compact["packed_patches"].numpy()
        rows, cols = compact["packed_patch_rows"].numpy(), compact["packed_patch_cols"].numpy()
        start = 0
        for b, count in enumerate(counts.tolist()):
            if count:
                c = int(channels[b])
                source = packed[start:start + count, :c]
                if raw_pixels:
                    view["patches"][b, :count, :c] = source
                else:
                    scale_patches(source, out=view["patches"][b, :count, :c])
                view["patch_rows"][b, :count] = rows[start:start + count]
                view["patch_cols"][b, :count] = cols[start:start + count]
                start += count
        if config.observation_targets:
            view["obs_targets"][:] = view["tokens"]
            target = view["obs_target_mask"]
            np.greater_equal(view["local_positions"], 0, out=target)
            target &= ~view["loss_mask"]
            target[:, 0] = False
        for key in ("token_episode", "token_offset", "is_prompt", "prompt_kind"):
            if key in compact:
                batch[key] = compact[key]
        return batch

    # -------------------------------------------------------------- state

    @property
    def padding_fraction(self) -> float:
        """Share of yielded tokens that are padding (in-process iteration only; with workers
        ask the SequenceLoader)."""
        return 1.0 - self._real_tokens / self._total_tokens if self._total_tokens else 0.0

    def state_dict(self) -> dict:
        """Where in-process iteration stands (with DataLoader workers use SequenceLoader's)."""
        return self.make_state(list(self._consumed))

    def load_state_dict(self, state: dict) -> None:
        """The next ``iter()`` continues exactly after the state's sequences."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}; this loader reads version {STATE_VERSION}")
        if state.get("fingerprint") != self.fingerprint():
            raise ValueError("loader state was saved for other datasets or settings (fingerprint differs): "
                             f"{state.get('describe')}")
        self._resume = [int(n) for n in state["consumed"]]
        self._consumed = list(self._resume)

    def make_state(self, consumed: list[int]) -> dict:
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint(), "consumed": list(consumed),
                "rank": self.rank, "world_size": self.world_size,
                "describe": f"roots={self.config.roots} L={self.config.sequence_length} seed={self.config.seed}"}

    def fingerprint(self) -> str:
        """Hash of everything that decides which sequences come out. The rank is not in it:
        ranks of one run consume alike, so rank 0's saved state resumes every rank."""
        settings = dataclasses.asdict(self.settings)
        payload = json.dumps({"settings": settings, "roots": self.config.roots, "weights": self.weights,
                              "episodes": int(self.catalog.num_episodes), "world_size": self.world_size,
                              "max_text_tokens": self.config.max_text_tokens,
                              "ids": hashlib.blake2b(self.catalog.episode_id.tobytes(), digest_size=8).hexdigest()},
                             sort_keys=True, default=str)
        return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


class SequenceLoader:
    """A torch DataLoader over GatoDataset that knows how many sequences each worker handed
    over, so ``state_dict()`` / ``load_state_dict()`` resume exactly, and that measures padding.
    Batches come from workers in turn (the DataLoader's in-order mode), which is what lets the
    count per worker be known from the batches seen."""

    def __init__(self, dataset: GatoDataset, batch_size: int, num_workers: int = 0, **loader_kwargs) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.pack_patches = False
        self.num_workers = num_workers
        self.loader_kwargs = loader_kwargs
        self.consumed = [0] * max(1, num_workers)
        self.real_tokens = 0
        self.total_tokens = 0
        self._loaded = False

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if any(self.consumed) or self._loaded:
            self.dataset.load_state_dict(self.state_dict())
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            persistent_workers=False, in_order=True, **self.loader_kwargs)
        turn = 0
        workers = len(self.consumed)
        for batch in loader:
            if "lengths" in batch:  # a worker's compact batch
                batch = self.dataset.expand_batch(batch)
            size = len(batch["tokens"])
            self.consumed[turn % workers] += size
            turn += 1
            real = int(batch["attention_mask"].sum())
            self.real_tokens += real
            self.total_tokens += batch["attention_mask"].numel()
            yield batch

    def __len__(self) -> int:
        raise TypeError("a streaming loader has no length")

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.total_tokens if self.total_tokens else 0.0

    def state_dict(self) -> dict:
        return self.dataset.make_state(self.consumed)

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("consumed", [])) != len(self.consumed):
            raise ValueError(f"loader state has {len(state.get('consumed', []))} worker count(s); this loader "
                             f"has {len(self.consumed)} worker(s): resume with the same num_workers")
        self.dataset.load_state_dict(state)
        self.consumed = [int(n) for n in state["consumed"]]
        self._loaded = True


def make_loader(config: DataConfig, batch_size: int, num_workers: int = 0, rank: int | None = None,
                world_size: int | None = None, **loader_kwargs) -> SequenceLoader:
    """The loader a training loop uses: batches of the contract's tensors, resumable."""
    dataset = GatoDataset(config, rank, world_size, batch_size=batch_size)
    dataset.pack_patches = num_workers > 0  # workers send compact batches; see GatoDataset.collate
    return SequenceLoader(dataset, batch_size, num_workers, **loader_kwargs)


def unpack_patches(batch: dict[str, torch.Tensor], max_patches: int | None = None) -> dict[str, torch.Tensor]:
    """Packed patches (N, ...) -> the contract's (B, P, ...) with zero padding slots (the layout
    of ``collate(packed=True)`` before workers sent compact batches; kept for callers)."""
    counts = batch["num_patches"].tolist()
    slots = max_patches or max(1, max(counts))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    out = dict(batch)
    for packed_key, key in (("packed_patches", "patches"), ("packed_patch_rows", "patch_rows"),
                            ("packed_patch_cols", "patch_cols")):
        packed = out.pop(packed_key).numpy()
        full = np.zeros((len(counts), slots, *packed.shape[1:]), packed.dtype)
        for b, count in enumerate(counts):
            full[b, :count] = packed[starts[b]:starts[b + 1]]
        out[key] = torch.from_numpy(full)
    return out


def _provenance(sequences: list[Assembled], length: int) -> dict[str, torch.Tensor]:
    size = len(sequences)
    episode = torch.full((size, length), -1, dtype=torch.int64)
    offset = torch.full((size, length), -1, dtype=torch.int64)
    prompt = torch.zeros((size, length), dtype=torch.bool)
    for b, seq in enumerate(sequences):
        n = len(seq.tokens)
        episode[b, :n] = torch.from_numpy(seq.token_episode)
        offset[b, :n] = torch.from_numpy(seq.token_offset)
        prompt[b, :n] = torch.from_numpy(seq.is_prompt)
    return {"token_episode": episode, "token_offset": offset, "is_prompt": prompt,
            "prompt_kind": torch.tensor([seq.prompt_kind for seq in sequences], dtype=torch.int64)}


def _allocate(specs: dict[str, tuple[tuple[int, ...], torch.dtype]], shared: bool) -> dict[str, torch.Tensor]:
    """Zeroed tensors for a batch, all carved from ONE buffer: in a worker that buffer is shared
    memory, so the batch crosses to the main process as one segment instead of one per key
    (each shared segment costs system calls on both sides)."""
    layout, total = {}, 0
    for key, (shape, dtype) in specs.items():
        total = -(-total // 64) * 64  # 64-byte aligned segments
        layout[key] = (total, shape, dtype)
        total += max(1, math.prod(shape)) * dtype.itemsize
    if shared:  # new shared memory is zero-filled by the OS
        storage = torch.UntypedStorage._new_shared(total)
    else:
        storage = torch.from_numpy(_host_buffer(total)).untyped_storage()
    out = {}
    for key, (offset, shape, dtype) in layout.items():
        out[key] = torch.empty((0,), dtype=dtype).set_(storage, offset // dtype.itemsize, shape)
    return out


_RECENT_BUFFERS: list[np.ndarray] = []
RECENT_BUFFERS = 3


def _host_buffer(size: int) -> np.ndarray:
    """A zeroed byte buffer for a batch: one of the last few batches' buffers when no tensor
    uses it any more (the consumer dropped that batch), else fresh memory. Fresh pages cost
    a page fault each (~0.5 ms/MB here); zeroing warm memory costs a fraction of that."""
    # a free buffer has 2 references: the list's and getrefcount's argument; a live tensor
    # over its memory holds one more (torch.from_numpy keeps its array alive)
    free = [i for i in range(len(_RECENT_BUFFERS))
            if _RECENT_BUFFERS[i].nbytes >= size and sys.getrefcount(_RECENT_BUFFERS[i]) == 2]
    if free:
        index = min(free, key=lambda i: _RECENT_BUFFERS[i].nbytes)
        buffer = _RECENT_BUFFERS.pop(index)
        _RECENT_BUFFERS.append(buffer)
        buffer[:size].fill(0)
        return buffer[:size]
    buffer = np.zeros(size, np.uint8)  # calloc: fresh zero pages, nothing written
    _RECENT_BUFFERS.append(buffer)
    if len(_RECENT_BUFFERS) > RECENT_BUFFERS:
        del _RECENT_BUFFERS[0]
    return buffer


def _distributed_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------- CLI

@dataclass
class InspectCommand(DataConfig):
    """Draw sequences and print, per task, its weight, episodes, sequences and tokens drawn."""

    roots: tyro.conf.Positional[list[str]] = field(default_factory=list)
    sequences: int = 200
    """sequences to draw"""
    json: bool = False
    """print the table as JSON"""


def main(argv: list[str] | None = None) -> int:
    from shards.console import print_table

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = tyro.cli(InspectCommand, args=argv)
    config = DataConfig(**{f.name: getattr(command, f.name) for f in dataclasses.fields(DataConfig)})
    config.provenance = True
    try:
        dataset = GatoDataset(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    catalog = dataset.catalog
    drawn = {task: {"sequences": 0, "prompted": 0} for task in catalog.task_names}
    start = time.perf_counter()
    from tqdm import tqdm

    for count, sample in enumerate(tqdm(dataset, total=command.sequences, disable=command.json, desc="sequences")):
        if count >= command.sequences:
            break
        episode = int(sample["token_episode"][~sample["is_prompt"]][0])
        task = catalog.task_names[int(catalog.episode_task[episode])]
        drawn[task]["sequences"] += 1
        drawn[task]["prompted"] += int(sample["prompt_kind"]) > 0
    elapsed = time.perf_counter() - start
    rows = [{"task": task, "domain": catalog.domain_of(task), "weight": round(dataset.weights[task], 4),
             "episodes": int((catalog.episode_task == i).sum()), **drawn[task]}
            for i, task in enumerate(catalog.task_names)]
    print_table(rows, title="sequences drawn", as_json=command.json,
                extra={"padding_fraction": round(dataset.padding_fraction, 5),
                       "tokens_per_second": round(dataset._total_tokens / elapsed, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
