"""Streaming Gato sequences from GatoForge datasets: a torch IterableDataset and its loader.

    python -m trainer.data runs/quickstart --text-model runs/text.model --sequences 200 [--json]
    python -m trainer.data ROOT_A ROOT_B --mixture mixture.yaml --weight atari=2

    from trainer.data import DataConfig, make_loader
    loader = make_loader(DataConfig(roots=["runs/quickstart"], text_model="runs/text.model"),
                         batch_size=32, num_workers=2)
    for batch in loader:               # dict of tensors, see below
        ...
    state = loader.state_dict()         # later: loader.load_state_dict(state) resumes exactly

What a batch holds (the contract with trainer/model.py), B sequences of L tokens, N patches:

    tokens           int64 (B, L)  ids of trainer.tokenizer.LAYOUT; IMAGE_PLACEHOLDER at patches, PAD at the end
    loss_mask        bool  (B, L)  True on action and text tokens (predict token l from tokens < l)
    attention_mask   bool  (B, L)  True on real tokens; padding only at the end
    local_positions  int64 (B, L)  position inside the timestep's observation; -1 on separator/action/pad
    is_image         bool  (B, L)  True where the token is an image patch
    num_patches      int64 (B,)    image tokens of each sequence (is_image.sum(1))
    frames           uint8 (bytes,)  the pixels of every frame the image tokens come from, as stored:
                                   sequence by sequence, frame by frame (H, W, C) row-major
    image_shapes     int64 (B, 3)  (H, W, C) of each sequence's frames (0 0 0 without images)
    num_frames       int64 (B,)    frames of each sequence
    frame_patches    int64 (F,)    how many patches of each frame (raster order) are tokens: all of
                                   them except in a sequence's final timestep when L cuts it
    patch_rows       float32 (N, 2)  normalized [start, end) row interval of each of the N patches
    patch_cols       float32 (N, 2)  normalized [start, end) column interval

The model cuts the frames into 16x16 patches (padding to a multiple of 16 with black) and
scales them to [-1, 1] / 4 on its device: ``trainer.patches.frames_to_patches`` gives the
(N, 4, 16, 16) floats in is_image order (row-major over B, L); trainer.model.real_patches
calls it. Shipping frames as stored makes a batch's pixels one memcpy per piece of a sequence.

N, F and the bytes vary from batch to batch (no padding slots). Iterating GatoDataset
without a batch size gives single sequences, the (B, ...) keys without B and the frame and
patch keys of that sequence; ``collate_sequences`` batches them (a DataLoader's ``collate_fn``).

With ``vector_observations=True`` (JAT's observation embedding) one more key comes along:
``obs_vectors`` float32 (B, L, VECTOR_WIDTH), the raw obs_continuous values (zero-padded) at
each VECTOR_OBSERVATION token and zeros elsewhere, and ``obs_codes`` int16 (B, L, VECTOR_WIDTH),
its obs_discrete values (-1 padded) there and -1 elsewhere.

With ``memoryless`` tasks in the data, ``segments`` int32 (B, L) comes along: 1, 2, ... on each
timestep of a memoryless task's episodes (counting along the row), 0 on prompts and on every
other task's tokens. A token attends to earlier tokens of its own segment and of segment 0.

With ``observation_targets=True`` (JAT's kappa, Dynalang's next-observation prediction) two
more keys come along: ``obs_targets`` int64 (B, L) (the token ids) and ``obs_target_mask`` bool
(B, L), True on observation tokens that are not text and not the first token; at image
positions the target is the patch itself (``patches``), elsewhere the token id. The trainer
adds kappa x that loss to the action loss. With ``provenance=True`` (tests, debugging):
``token_episode`` / ``token_offset`` int64 (B, L) (global episode number and offset inside
its tokens, -1 on padding), ``is_prompt`` bool (B, L) and ``prompt_kind`` int64 (B,) (0 none,
1 episode end, 2 uniform position).

Sampling (trainer/sequences.py has the details): tasks are drawn with the mixture weights
(trainer/mixture.py: uniform over domains, then tasks); each task's episodes are split across
ranks x workers per epoch so no window is served twice in an epoch; sequences are L tokens
starting on a timestep, packed across episodes, 25% with a prompt; a shuffle buffer mixes
them. A batch is written from its plans in one go (trainer/assembly.py); a worker writes the
batches of one message (up to 16) as one block of rows straight into shared memory
(trainer/ring.py), which the main process splits into batches without copying. The loader's
state is how many sequences each worker has handed over: resuming replays the plans (no
pixels read) and continues with the very same sequences.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import itertools
import json
import logging
import multiprocessing
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
import tyro
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer.assembly import (
    BatchLayout,
    BatchWriter,
    as_tensors,
    host_buffer,
    is_memoryless,
    shared_buffer,
    split_rows,
    write_batch,
)
from trainer.buffers import keep_freed_heap
from trainer.catalog import Catalog
from trainer.mixture import parse_weight_args, task_weights
from trainer.ring import BatchRing
from trainer.sequences import SamplerSettings, ShardSampler, max_frames_per_sequence, max_patches_per_sequence
from trainer.text_tokenizer import TextTokenizer

log = logging.getLogger(__name__)

STATE_VERSION = 2
BUNDLE_BATCHES, BUNDLE_BYTES = 16, 4 << 20
"""a worker sends its batches in messages of up to this many batches or bytes (one batch at least)"""
PREFETCH_MESSAGES = 4
"""messages a worker may have out before the main process asks for more (the DataLoader's
``prefetch_factor``; a ``prefetch_factor`` given to the loader wins). With torch's default of 2
the worker waited for the next request ~0.5 s of a ~2.1 s bench pass, whenever the main
process was off the CPU; with 4, ~0.2 s (bench/loader.py, 1 worker: 0.26 -> 0.32 of raw,
alternating runs; 8 was no better)"""
RING_SPARE_MESSAGES = 2
"""each worker's shared-memory arena holds the prefetched messages plus this many of the
largest (the one in use, the one being written): a message's bytes are free only once all its
batches are gone"""
RING_MIN_BYTES, RING_MAX_BYTES = 16 << 20, 512 << 20
"""bounds on an arena; a batch bigger than the arena travels as a torch shared tensor"""
STORE_EXTRA_UNITS, STORE_MAX_BYTES = 3, 256 << 20
"""a worker's unit store (shared memory kept between passes, trainer/ring.py) holds the prompt
pool's units of every task plus this many (read ahead, cached, held by buffered plans), up to
the cap; what does not fit goes to the worker's own memory"""

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
    max_text_tokens: int = 128
    """text tokens kept per timestep"""
    success_tail: int | None = None
    """train on each episode only up to this many steps after its first success (episodes whose
    index records ``success_step``); None: whole episodes. Meta-World's scripted policies
    succeed by step 40-70 of 500, so whole episodes spend most windows on an arm at rest"""
    prompt_pool_units: int = 3
    """read units per task kept for drawing prompts (memory: about this many row groups per task)"""
    vector_observations: bool = False
    """JAT's observation embedding: each timestep's obs_continuous and obs_discrete values are
    one VECTOR_OBSERVATION token carrying the raw floats and codes (obs_vectors, obs_codes), not
    a token per value (Gato). A Meta-World step is 6 tokens instead of 44, a BabyAI one 8
    instead of 57. The model's encoder follows this switch"""
    token_observations: tuple[str, ...] = ()
    """with vector_observations: domains or task ids that keep Gato's token per value (cartpole's
    5 values: 3 tokens a step instead of 7 saves little, and the balance needs the finely binned
    angle; a cartpole-only A/B scored 67.3 with tokens, 33.2 with a vector)"""
    memoryless: tuple[str, ...] = ()
    """domains or task ids whose expert acts on the current observation alone (Meta-World's
    scripted policies): each of their timesteps attends to its own tokens and the sequence's
    prompt only (the ``segments`` key), never to earlier timesteps, and the agent acts the same
    way. A cloned arm that sees its own earlier actions learns to repeat them instead of reading
    the observation (the copycat problem of behaviour cloning with history)"""
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
        if self.success_tail is not None and self.success_tail < 0:
            problems.append(f"success_tail={self.success_tail}: expected an integer >= 0 or None")
        if self.token_observations and not self.vector_observations:
            problems.append(f"token_observations={list(self.token_observations)}: only means something with "
                            "vector_observations: true")
        if self.passes is not None and self.passes < 1:
            problems.append(f"passes={self.passes}: expected >= 1 or None")
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
    default from torch.distributed when it is initialized). With ``batch_size`` it yields
    whole batches, else single sequences (batch them with ``collate_sequences``)."""

    def __init__(self, config: DataConfig, rank: int | None = None, world_size: int | None = None,
                 batch_size: int | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.batch_size = batch_size
        self.compact = False  # workers send batch messages (SequenceLoader receives them)
        self.ring: BatchRing | None = None  # set by SequenceLoader around an iteration with workers
        if rank is None or world_size is None:
            rank, world_size = _distributed_rank()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.text_model = TextTokenizer.load(config.text_model) if config.text_model else None
        self.catalog = Catalog(config.roots, self.text_model, config.max_text_tokens, config.success_tail,
                               config.vector_observations, tuple(config.token_observations))
        with_text = [t for t, layout in self.catalog.layouts.items() if layout.has_text]
        if with_text and self.text_model is None:
            raise ValueError(f"tasks {with_text} have obs_text: pass text_model (fit one with "
                             f"`python -m trainer.tokenizer fit ROOT --out text.model`)")
        domains = {task: self.catalog.domain_of(task) for task in self.catalog.task_names}
        unmatched = [n for n in config.memoryless if not any(is_memoryless(t, (n,)) for t in self.catalog.task_names)]
        if unmatched:
            raise ValueError(f"memoryless names {unmatched} match no task of the datasets; known domains "
                             f"{sorted(set(domains.values()))}, tasks {sorted(domains)}")
        self.weights = task_weights(domains, config.weights_spec())
        self.max_patches = max_patches_per_sequence(self.catalog, config.sequence_length)
        self.max_frames = max_frames_per_sequence(self.catalog, config.sequence_length)
        for task in self.catalog.task_names:  # read the row-group layout now: forked workers inherit it
            self.catalog.units(task)
        self.settings = SamplerSettings(
            sequence_length=config.sequence_length, prompt_probability=config.prompt_probability,
            prompt_end_probability=config.prompt_end_probability, prompt_fraction=config.prompt_fraction,
            shuffle_buffer=config.shuffle_buffer, seed=config.seed, passes=config.passes,
            prompt_pool_units=config.prompt_pool_units, provenance=config.provenance, memoryless=tuple(config.memoryless))
        self._resume: list[int] | None = None
        self._consumed = [0]
        self._real_tokens = 0
        self._total_tokens = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "ring": None}  # a spawned worker has no ring: torch's transport

    # -------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[dict]:
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
        if info is not None:
            keep_freed_heap()
        if info is not None and self.ring is not None:
            self.ring.map_arena(worker)
            if self.ring.store_bytes:  # decode and tokenize into memory the loader keeps warm between passes
                self.catalog.unit_store = (self.ring.store(worker), self.ring.store_used[worker:worker + 1])
        self.catalog.start_read_ahead()
        sampler.read_ahead = self.catalog.read_ahead
        sampler.read_first_units()
        bundle = 1  # the first message holds one batch, then they grow: a quick first batch
        try:
            while True:
                plans = list(itertools.islice(iterator, group))
                if not plans:
                    return
                if info is None:
                    self._consumed[0] += len(plans)
                    self._total_tokens += self.config.sequence_length * len(plans)
                if info is not None and self.compact and self.batch_size is not None:
                    yield self._bundle(plans, iterator, sampler, worker, bundle)
                    bundle = min(2 * bundle, BUNDLE_BATCHES)
                    continue
                targets = self.config.observation_targets
                held = []
                if info is None:
                    layout, real = write_batch(plans, sampler, lambda n: held.append(host_buffer(n)) or held[0], targets)
                    block = held[0]
                    self._real_tokens += real
                else:  # one torch shared segment, which the DataLoader sends as it is
                    layout, real = write_batch(plans, sampler, lambda n: held.extend(shared_buffer(n)) or held[1], targets)
                    block = held[0]
                batch = as_tensors(layout, block)
                yield batch if self.batch_size is not None else _unbatch(batch)
        finally:
            self.catalog.stop_read_ahead()

    def _bundle(self, plans: list, iterator: Iterator, sampler: ShardSampler, worker: int, most: int) -> dict:
        """One message of several batches (``plans`` and the next ones, up to ``most`` or
        BUNDLE_BYTES), written as one block of rows (``BatchWriter``): every message costs
        thread wake-ups on both sides, which on a busy machine take longer than making a
        small batch, and every block a layout, a buffer and its copies."""
        writer = BatchWriter(sampler, self.config.observation_targets)
        writer.add(plans)
        while len(writer.batch_rows) < most and writer.nbytes < BUNDLE_BYTES:
            plans = list(itertools.islice(iterator, self.batch_size))
            if not plans:
                break
            writer.add(plans)
        return self._send(writer, worker)

    def _send(self, writer: BatchWriter, worker: int) -> dict:
        """Write a block of batches where the main process can take it: the worker's ring arena
        (the message says where) or, when there is no ring or no room in it, a torch shared tensor."""
        ring, where = self.ring, {}

        def buffer_for(nbytes: int) -> np.ndarray:
            taken = ring.acquire(worker, nbytes) if ring is not None else None
            if taken is not None:
                where["ticket"], where["offset"], buffer = taken
                return buffer
            where["tensor"], buffer = shared_buffer(nbytes)
            return buffer

        layout, real = writer.write(buffer_for)
        message = {"layout": layout.key(), "batch_rows": writer.batch_rows, "real_tokens": real}
        if "ticket" in where:
            message["ring"] = (worker, where["ticket"], where["offset"])
        else:
            message["buffer"] = where["tensor"]
        return message

    @staticmethod
    def receive(message: dict, ring: BatchRing | None) -> list[dict[str, torch.Tensor]]:
        """A worker's message (``_send``) -> its batches of the contract's tensors, in the main
        process, over the memory the worker wrote (a ring region is free again once every
        tensor of the message is gone)."""
        layout = BatchLayout.of(*message["layout"])
        if "ring" in message:
            worker, ticket, offset = message["ring"]
            region = ring.view(worker, offset, layout.nbytes)
            ring.lend(region, worker, ticket)
            # the tensors must hold ``region`` itself: numpy views of it would point past it, to
            # the ring's whole mapping, and the region would be released while they are in use
            return split_rows(layout, torch.from_numpy(region), message["batch_rows"])
        return split_rows(layout, message["buffer"], message["batch_rows"])

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
        del settings["memoryless"]  # it decides how sequences attend, not which come out
        payload = json.dumps({"settings": settings, "roots": self.config.roots, "weights": self.weights,
                              "episodes": int(self.catalog.num_episodes), "world_size": self.world_size,
                              "max_text_tokens": self.config.max_text_tokens,
                              # only when set, so runs without it keep their fingerprints
                              **({"success_tail": self.config.success_tail}
                                 if self.config.success_tail is not None else {}),
                              "ids": hashlib.blake2b(self.catalog.episode_id.tobytes(), digest_size=8).hexdigest()},
                             sort_keys=True, default=str)
        return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


class SequenceLoader:
    """A torch DataLoader over GatoDataset that knows how many sequences each worker handed
    over, so ``state_dict()`` / ``load_state_dict()`` resume exactly, and that measures padding.
    Batches come from workers in turn (the DataLoader's in-order mode), which is what lets the
    count per worker be known from the batches seen (a worker's message holds several
    batches). Workers write their batches into a shared-memory ring (trainer/ring.py) claimed
    for each pass."""

    def __init__(self, dataset: GatoDataset, batch_size: int, num_workers: int = 0, **loader_kwargs) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.loader_kwargs = loader_kwargs
        self.consumed = [0] * max(1, num_workers)
        self.real_tokens = 0
        self.total_tokens = 0
        self._loaded = False

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if any(self.consumed) or self._loaded:
            self.dataset.load_state_dict(self.state_dict())
        ring = self._claim_ring()
        self.dataset.ring = ring
        try:
            loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                                persistent_workers=False, in_order=True, **self._dataloader_kwargs())
            messages = _fork_workers(loader) if self.num_workers else iter(loader)
            turn = 0
            workers = len(self.consumed)
            for message in messages:
                worker = turn % workers
                turn += 1
                if "layout" in message:  # a worker's block of batches; it counted their real tokens
                    batches, reals = self.dataset.receive(message, ring), message["real_tokens"]
                else:
                    batches = [message]
                    reals = [int(np.count_nonzero(message["attention_mask"].numpy()))]  # torch's sum: ~50 us
                for batch, real in zip(batches, reals):
                    rows, length = batch["attention_mask"].shape
                    self.consumed[worker] += rows
                    self.real_tokens += real
                    self.total_tokens += rows * length
                    yield batch
        finally:
            self.dataset.ring = None
            if ring is not None:
                ring.unclaim()

    def _prefetch(self) -> int:
        return self.loader_kwargs.get("prefetch_factor") or PREFETCH_MESSAGES

    def _dataloader_kwargs(self) -> dict:
        if self.num_workers == 0:  # torch refuses a prefetch_factor without workers
            return self.loader_kwargs
        return {**self.loader_kwargs, "prefetch_factor": self._prefetch()}

    def _claim_ring(self) -> BatchRing | None:
        if self.num_workers == 0:
            return None
        context = self.loader_kwargs.get("multiprocessing_context") or multiprocessing.get_start_method(allow_none=True)
        method = context if isinstance(context, str) else getattr(context, "get_start_method", lambda: None)()
        if (method or multiprocessing.get_start_method()) != "fork":
            return None
        dataset = self.dataset
        most = BatchLayout.max_bytes(self.batch_size, dataset.config.sequence_length, dataset.max_patches,
                                     *dataset.max_frames, dataset.config.observation_targets, dataset.config.provenance,
                                     dataset.config.vector_observations, bool(dataset.config.memoryless))
        arena = (self._prefetch() + RING_SPARE_MESSAGES) * (most + BUNDLE_BYTES)
        store = dataset.catalog.bytes_held(dataset.config.prompt_pool_units + STORE_EXTRA_UNITS)
        return BatchRing.claim(self.num_workers, min(max(arena, RING_MIN_BYTES), RING_MAX_BYTES),
                               min(store, STORE_MAX_BYTES))

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
    dataset.compact = num_workers > 0  # workers write batches into shared memory; see GatoDataset._send
    return SequenceLoader(dataset, batch_size, num_workers, **loader_kwargs)


PER_PATCH_KEYS = ("frames", "frame_patches", "patch_rows", "patch_cols")
"""keys whose first dimension runs over the batch's patches, frames or pixel bytes, not its sequences"""


def collate_sequences(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Single sequences (GatoDataset without batch_size) -> one batch: per-sequence keys stacked,
    the frames and patch keys of all sequences back to back (use as a DataLoader's ``collate_fn``)."""
    return {key: torch.cat([s[key] for s in samples]) if key in PER_PATCH_KEYS else torch.stack([s[key] for s in samples])
            for key in samples[0]}


def _fork_workers(loader: DataLoader) -> Iterator:
    """``iter(loader)``, which forks the workers, with the parent's memory made cheap to share.

    - ``gc.freeze()``: the workers' garbage collector leaves the parent's objects (and their
      pages) alone instead of copying every page it touches;
    - Arrow's allocator hands back the free pages it keeps: a worker would otherwise decode
      into the parent's retained heap, a copy-on-write fault (a 4 KB copy) per page, where
      fresh pages only fault in zeroed. Measured here: a worker forked after the parent had
      decoded took ~50,000 faults per pass instead of ~20,000, and its pass 0.32-0.7 s
      instead of 0.25-0.3 s. The parent pays it only if it decodes Parquet itself again.
    """
    pa.default_memory_pool().release_unused()
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


def _as_is(item):
    """The DataLoader's collate_fn: items are whole batches (or messages) already."""
    return item


def _unbatch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value if key in PER_PATCH_KEYS else value[0] for key, value in batch.items()}


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
