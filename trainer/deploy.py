"""Acting with a trained Gato, as the paper deploys it (section 2.4).

    from trainer.deploy import GatoAgent, load_agent_model, demonstration_prompt
    model, info = load_agent_model("runs/tiny")                 # a checkpoint or a run directory
    agent = GatoAgent(model, spec, text_model, context=info["context"])
    agent.reset(demonstration_prompt(dataset, task, spec, text_model, max_tokens=64))
    action = agent.act(obs_columns)                             # {"act_discrete": array([...])}

Each ``act``: tokenize the observation (tokens end with the separator), run only the new
tokens through the model against a KV cache, then sample the action tokens one at a time,
each among the ids valid for its position of the action spec, feeding each back in; decode
them by inverting the tokenizer. The cache keeps the last ``context`` tokens (Gato: 1024).

Continuous action tokens are sampled like the others (Gato) or, with
``continuous_decoding="median"``, set to the distribution's median bin: a 1024-way
distribution learned from a few hundred demonstrations is wide, and a sample from it jitters
the arm where its median does not (the median, unlike the mean, ignores the thin mass on the
far bins, which decode to values up to +-256, and commutes with the mu-law). A model trained
with ``action_regression`` also offers ``"regression"``: its value head's prediction, put in
its bin (JAT acts on such a regression).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards import Dataset, TaskSpec
from trainer.catalog import trim_after_success
from trainer.checkpoint import load_checkpoint
from trainer.model import Gato, GatoConfig, KVCache
from trainer.patches import cut_patches, normalize_patches, patch_intervals
from trainer.text_tokenizer import TextTokenizer
from trainer.tokenizer import (
    CONTINUOUS_BINS,
    CONTINUOUS_OFFSET,
    MAX_CHANNELS,
    VECTOR_WIDTH,
    StepLayout,
    action_token_ranges,
    decode_action,
    mu_law_bins,
    tokenize_observation,
    tokenize_steps,
)

CONTINUOUS_DECODINGS = ("sample", "median", "regression")

log = logging.getLogger(__name__)


@dataclass
class TokenChunk:
    """Tokens to feed the model, with what the embedding needs (numpy, one sequence)."""

    tokens: np.ndarray           # (n,) int64
    local_positions: np.ndarray  # (n,) int64
    is_image: np.ndarray         # (n,) bool
    patches: np.ndarray          # (P, 4, 16, 16) float32
    patch_rows: np.ndarray       # (P, 2)
    patch_cols: np.ndarray       # (P, 2)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, VECTOR_WIDTH), np.float32))
    """(n, VECTOR_WIDTH) float32: the values of VECTOR_OBSERVATION tokens, zeros elsewhere"""
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, VECTOR_WIDTH), np.int16))
    """(n, VECTOR_WIDTH) int16: the discrete values of VECTOR_OBSERVATION tokens, -1 elsewhere"""

    def __post_init__(self) -> None:
        if len(self.vectors) != len(self.tokens):  # built without vectors: none of its tokens carries one
            self.vectors = np.zeros((len(self.tokens), VECTOR_WIDTH), np.float32)
        if len(self.codes) != len(self.tokens):
            self.codes = np.full((len(self.tokens), VECTOR_WIDTH), -1, np.int16)

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def empty(cls) -> TokenChunk:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool),
                   np.zeros((0, MAX_CHANNELS, 16, 16), np.float32), np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))

    def __add__(self, other: TokenChunk) -> TokenChunk:
        return TokenChunk(*(np.concatenate((a, b)) for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[np.ndarray, ...]:
        return (self.tokens, self.local_positions, self.is_image, self.patches, self.patch_rows, self.patch_cols,
                self.vectors, self.codes)


class GatoAgent:
    """A Gato policy with a rolling KV cache, for one episode or a batch of episodes in lockstep.

    ``act`` serves one environment. ``act_batch`` serves B of them at once with one forward
    pass per action token (B rows of the cache): their observations must tokenize to equally
    many tokens, as fixed-shape state observations do (not BabyAI's missions of varied length).
    """

    def __init__(self, model: Gato, spec: TaskSpec, text_model: TextTokenizer | None, context: int = 1024,
                 temperature: float = 1.0, seed: int = 0, max_text_tokens: int = 128,
                 continuous_decoding: str = "sample", vector_observations: bool | None = None,
                 memoryless: bool = False) -> None:
        if continuous_decoding not in CONTINUOUS_DECODINGS:
            raise ValueError(f"continuous_decoding={continuous_decoding!r}: expected one of {CONTINUOUS_DECODINGS}")
        if continuous_decoding == "regression" and model.value_head is None:
            raise ValueError("continuous_decoding='regression' needs a model trained with a regression head "
                             "(model.action_regression > 0); this one has none: use 'sample' or 'median'")
        if context > model.config.block_size:
            raise ValueError(f"context={context} exceeds the model's block_size={model.config.block_size}")
        if temperature < 0:
            raise ValueError(f"temperature={temperature}: expected >= 0 (0 = greedy)")
        self.model = model.eval()
        self.spec = spec
        self.text_model = text_model
        self.context = context
        self.temperature = temperature
        self.continuous_decoding = continuous_decoding
        self.max_text_tokens = max_text_tokens
        # this task's observations as the loader made them (a checkpoint's token_observations
        # keep some tasks on tokens); default: the model's switch
        self.vector_observations = model.config.vector_observations if vector_observations is None else vector_observations
        # act on the prompt and the current observation only, as the loader's memoryless tasks train
        self.memoryless = memoryless
        self.kept = 0  # tokens of the cache a memoryless agent keeps: its prompt's
        self.ranges = action_token_ranges(spec)  # (A, 2) valid [low, high) per action token
        continuous = (self.ranges[:, 0] == CONTINUOUS_OFFSET) & (self.ranges[:, 1] == CONTINUOUS_OFFSET + CONTINUOUS_BINS)
        self.take_median = continuous & (continuous_decoding == "median")  # (A,) per action position
        self.take_value = continuous & (continuous_decoding == "regression")
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.cache = KVCache(model.config.n_layer, context)
        self.pending = [TokenChunk.empty()]  # per episode: tokens to feed with the next observation

    def reset(self, prompt: TokenChunk | None = None, batch: int = 1) -> None:
        """Start ``batch`` episodes: empty the cache; the prompt goes in with the first observation."""
        if batch < 1:
            raise ValueError(f"batch={batch}: expected >= 1")
        self.cache.reset()
        first = TokenChunk.empty() if prompt is None else prompt
        if len(first) > self.context:
            raise ValueError(f"prompt of {len(first)} tokens exceeds the context of {self.context}")
        self.pending = [first] * batch
        if self.memoryless:  # the prompt goes in now: each step then starts from it alone
            if len(first):
                with torch.no_grad():
                    self._feed(self.pending)
            self.kept = len(first)
            self.pending = [TokenChunk.empty()] * batch

    @torch.no_grad()
    def act(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        """One env action (dict of act_* columns) for one observation (dict of obs_* columns)."""
        if len(self.pending) != 1:
            raise ValueError(f"act() serves one episode; this agent was reset for {len(self.pending)}: use act_batch")
        return self.act_batch([observation])[0]

    @torch.no_grad()
    def act_batch(self, observations: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        """One action per episode of the batch, in order; ``last_action_tokens`` is (B, A)."""
        if len(observations) != len(self.pending):
            raise ValueError(f"{len(observations)} observations for a batch of {len(self.pending)} episodes")
        if self.memoryless:
            self.cache.truncate(self.kept)
        chunks = []
        for observation, pending in zip(observations, self.pending):
            obs = tokenize_observation(observation, self.spec, self.text_model, self.max_text_tokens,
                                       self.vector_observations)
            chunk = pending + TokenChunk(obs.tokens, obs.local_positions, obs.is_image, obs.patches,
                                         obs.patch_rows, obs.patch_cols, obs.vectors, obs.codes)
            if len(chunk) > self.context:  # a prompt plus a first observation: keep the latest tokens
                chunk = _tail(chunk, self.context)
            if self.memoryless and self.kept + len(chunk) + len(self.ranges) > self.context:
                raise ValueError(f"a memoryless step of {len(chunk) + len(self.ranges)} tokens after a prompt of "
                                 f"{self.kept} exceeds the context of {self.context}: use a shorter prompt")
            chunks.append(chunk)
        lengths = {len(c) for c in chunks}
        if len(lengths) > 1:
            raise ValueError(f"act_batch: observations tokenize to different lengths {sorted(lengths)}; "
                             "act on such episodes one at a time")
        sampled = np.zeros((len(chunks), len(self.ranges)), np.int64)
        for position, (low, high) in enumerate(self.ranges):
            state = self._feed(chunks)  # (B, C)
            if self.take_value[position]:
                pick = _value_bin(self.model.continuous_values(state))
            else:
                logits = self.model.head_logits(state, slice(int(low), int(high)))  # (B, high - low)
                pick = _median(logits) if self.take_median[position] else self._sample(logits)
            sampled[:, position] = int(low) + pick
            chunks = [_action_token(int(token)) for token in sampled[:, position]]
        # the last action token goes in with the next observation (a memoryless agent drops it)
        self.pending = [TokenChunk.empty()] * len(chunks) if self.memoryless else chunks
        self.last_action_tokens = sampled if len(sampled) > 1 else sampled[0]
        return [decode_action(tokens, self.spec) for tokens in sampled]

    def _feed(self, chunks: list[TokenChunk]) -> torch.Tensor:
        """The model's last states (B, C) after feeding equally long chunks, one per cache row."""
        columns = list(zip(*(chunk.astuple() for chunk in chunks)))
        rows = [np.stack(c) for c in columns[:3]]  # tokens, local positions, is_image: (B, n) each
        flat = [np.concatenate(c) for c in columns[3:6]]  # patches and intervals, row-major like is_image
        tensors = [torch.from_numpy(a).to(self.device) for a in rows + flat]
        vectors = codes = None
        if self.vector_observations:
            vectors, codes = (torch.from_numpy(np.stack(c)).to(self.device) for c in columns[6:8])
        return self.model.next_token_state(*tensors, self.cache, vectors=vectors, codes=codes)

    def _sample(self, logits: torch.Tensor) -> np.ndarray:
        """(B,) indices into the allowed ids: argmax at temperature 0, else sampled."""
        if self.temperature == 0:
            return logits.argmax(dim=-1).cpu().numpy()
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0].cpu().numpy()


def demonstration_prompt(dataset: Dataset, task: str, spec: TaskSpec, text_model: TextTokenizer | None,
                         max_tokens: int, where: str = "end", max_text_tokens: int = 128,
                         episode_id: int | None = None, min_steps: int = 1,
                         success_tail: int | None = None, vector_observations: bool = False) -> tuple[TokenChunk, int]:
    """Whole timesteps of a successful demonstration of ``task``, at most ``max_tokens`` tokens
    but at least ``min_steps`` timesteps (as the loader's prompts):
    its last timesteps (``where="end"``, the goal-conditioning prompt the loader trains with) or
    its first ones (``"start"``, Gato's default). Returns the tokens and the episode id.

    The demonstration is the task's highest-return episode with success=True, or the
    highest-return one when the dataset records no success. With ``success_tail`` (the
    loader's), it ends that many steps after its first success, where the loader's end
    prompts end."""
    if where not in ("start", "end"):
        raise ValueError(f"prompt position {where!r}: expected 'start' or 'end'")
    if episode_id is None:
        episode_id = best_episode(dataset, task)
    episode = dataset.episode(episode_id)
    steps = episode.steps
    if success_tail is not None and episode.success_step is not None:
        keep = int(trim_after_success(np.array([episode.length]), np.array([episode.success_step]), success_tail)[0])
        steps = {name: values[:keep] for name, values in steps.items()}
    run = tokenize_steps(steps, spec, text_model, actions=True, max_text_tokens=max_text_tokens,
                         layout=StepLayout.of(spec, vector_observations))
    offsets = run.step_offsets
    if where == "start":
        first = 0
        last = int(np.searchsorted(offsets, max_tokens, side="right")) - 1
        last = max(last, min(min_steps, run.num_steps))
    else:
        last = run.num_steps
        first = int(np.searchsorted(offsets, offsets[-1] - max_tokens, side="left"))
        first = min(first, max(0, last - min_steps))
    if last <= first:
        return TokenChunk.empty(), episode_id
    start, end = int(offsets[first]), int(offsets[last])
    tokens = run.tokens[start:end].astype(np.int64)
    is_image = np.zeros(len(tokens), bool)
    patches, rows, cols = TokenChunk.empty().astuple()[3:6]
    if run.frames is not None:
        layout = run.layout
        for step in range(first, last):
            at = int(offsets[step]) - start + layout.image_start
            is_image[at:at + layout.patches] = True
        pixels = cut_patches(run.frames[first:last])  # (T, P, 16, 16, C) uint8
        patches = normalize_patches(pixels.reshape(-1, *pixels.shape[2:]))
        r, c = patch_intervals(layout.image_shape[:2])
        rows, cols = np.tile(r, (last - first, 1)), np.tile(c, (last - first, 1))
    return TokenChunk(tokens, run.local_positions[start:end].astype(np.int64), is_image, patches, rows, cols,
                      *run.dense_vectors(start, end)), episode_id


def best_episode(dataset: Dataset, task: str) -> int:
    """The id of the task's best successful episode (or best by return)."""
    index = dataset.index.filter(_equals(dataset.index, "task", task)).to_pydict()
    if not index["episode_id"]:
        raise ValueError(f"no episodes of task {task!r} in {dataset!r} (tasks: {dataset.tasks})")
    candidates = range(len(index["episode_id"]))
    successful = [i for i in candidates if index["success"][i]]
    pool = successful or list(candidates)
    best = max(pool, key=lambda i: index["return"][i])
    return int(index["episode_id"][best])


def load_agent_model(checkpoint: str | Path, device: str = "cpu") -> tuple[Gato, dict[str, Any]]:
    """The model of a checkpoint (or a run directory's latest) plus what evaluation needs from it."""
    state = load_checkpoint(checkpoint, map_location=device)
    model = Gato(GatoConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, run_info(state)


def run_info(state: dict[str, Any]) -> dict[str, Any]:
    """What deployment needs from a checkpoint dict besides the weights."""
    loader = state.get("train_config", {}).get("loader", {})
    return {"path": state["path"], "step": state["step"], "data_roots": state["data_roots"],
            "text_model": state.get("text_model"), "max_text_tokens": state.get("max_text_tokens", 128),
            "context": int(loader.get("sequence_length", state["model_config"]["block_size"])),
            "prompt_fraction": float(loader.get("prompt_fraction", 0.25)),
            "success_tail": loader.get("success_tail"),
            "token_observations": tuple(loader.get("token_observations") or ()),
            "memoryless": tuple(loader.get("memoryless") or ())}


def _median(logits: torch.Tensor) -> np.ndarray:
    """(B,) index of the bin where the cumulative probability of (B, n) logits reaches one half."""
    cumulative = torch.cumsum(torch.softmax(logits.double(), dim=-1), dim=-1)
    half = torch.full((cumulative.shape[0], 1), 0.5, dtype=cumulative.dtype)
    return torch.searchsorted(cumulative, half)[:, 0].clamp(max=cumulative.shape[1] - 1).cpu().numpy()


def _value_bin(values: torch.Tensor) -> np.ndarray:
    """(B,) continuous bin of each predicted mu-law value, binned as the tokenizer bins (clipped
    to [-1, 1]): the token fed back is the one the value falls in."""
    return mu_law_bins(values.detach().double().cpu().numpy())


def _tail(chunk: TokenChunk, n: int) -> TokenChunk:
    drop = len(chunk) - n
    dropped_patches = int(chunk.is_image[:drop].sum())
    return TokenChunk(chunk.tokens[drop:], chunk.local_positions[drop:], chunk.is_image[drop:],
                      chunk.patches[dropped_patches:], chunk.patch_rows[dropped_patches:], chunk.patch_cols[dropped_patches:],
                      chunk.vectors[drop:], chunk.codes[drop:])


def _action_token(token: int) -> TokenChunk:
    empty = TokenChunk.empty()
    return TokenChunk(np.asarray([token], np.int64), np.asarray([-1], np.int64), np.zeros(1, bool),
                      empty.patches, empty.patch_rows, empty.patch_cols)


def _equals(table, column: str, value: str):
    import pyarrow.compute as pc

    return pc.equal(table[column], value)
