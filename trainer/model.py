"""The Gato model: one decoder-only transformer over tokens of every modality.

    python -m trainer.model gato-79m            # layers, width, heads, parameters (no weights allocated)
    python -m trainer.model gato-1.18b --json
    python -m trainer.model trainer/configs/gato-tiny.yaml

Read it bottom-up, as nanoGPT's model.py: the config, then the embedding function
(token table, ResNet v2 patch block, within-image row/column positions, local observation
positions), then attention (RoPE + a rolling KV cache for deployment), the GEGLU feed-forward,
the block, and the model with its loss. Shapes: B batch, T tokens, C width, H heads,
N real image patches in the batch.

Choices the paper leaves open, and what we did (docs/trainer.md explains each):
- Token positions inside the sequence: rotary embeddings (RoPE). They are relative, so a
  deployment KV cache can drop its oldest entries (Gato keeps the last 1024 tokens) without
  recomputing the rest.
- GEGLU hidden width: the paper gives a feed-forward size F (4x the width) and three
  parameter counts. All three are matched (within 2.1%) by a GEGLU with gate, value and
  output matrices of hidden width 7/12 * F and a token table tied to the output head; a
  GEGLU of hidden F (16 d^2 per layer) or F/2 (10 d^2) misses them by 8-25%. ``ff_hidden``
  overrides the rule.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

from trainer.patches import frames_to_patches
from trainer.tokenizer import (
    CONTINUOUS_BINS,
    CONTINUOUS_OFFSET,
    MAX_CHANNELS,
    MAX_LOCAL_POSITIONS,
    SEPARATOR,
    TEXT_VOCAB_SIZE,
    VECTOR_CODE_VALUES,
    VECTOR_OBSERVATION,
    VECTOR_WIDTH,
    VOCAB_SIZE,
    bin_centres,
)

log = logging.getLogger(__name__)


@dataclass
class GatoConfig:
    """Sizes of a Gato. The paper's three models are in CONFIGS; small ones train on a CPU."""

    n_layer: int = 4
    """transformer blocks"""
    n_embd: int = 128
    """width (embedding size)"""
    n_head: int = 4
    """attention heads (n_embd must divide by it)"""
    ff: int = 512
    """the paper's feed-forward size (4x width in all Gato models)"""
    ff_hidden: int | None = None
    """GEGLU hidden width; None = 7/12 * ff rounded to a multiple of 64 (matches the paper's counts)"""
    block_size: int = 1024
    """context length in tokens (Gato: 1024)"""
    vocab_size: int = VOCAB_SIZE
    """text + continuous bins + separator + image placeholder + pad + vector observation (trainer.tokenizer.VOCAB_SIZE)"""
    max_obs_tokens: int = MAX_LOCAL_POSITIONS
    """learned local observation positions (the tokenizer keeps observations within this many tokens)"""
    patch_size: int = 16
    patch_channels: int = MAX_CHANNELS
    """channels of a patch as the loader gives them (C_max; fewer are zero-padded)"""
    patch_hidden: int = 32
    """channels inside the ResNet v2 patch block"""
    position_bins: int = 128
    """row/column bins of the within-image position embedding (Gato: 128)"""
    dropout: float = 0.0
    rope_base: float = 10000.0
    kappa: float = 0.0
    """weight of the next-observation loss; 0 = Gato (actions and text only), JAT used 0.005"""
    smooth_bins: bool = False
    """start the 1024 continuous-bin rows of the (tied) token table as a smooth code of each
    bin's value instead of independent noise: neighbouring bins then begin alike, in the input
    and in the output head, so a small model need not learn the order of 1024 values from data"""
    head_vocab: int | None = None
    """the training loss's softmax runs over ids [0, head_vocab) and the 1024 continuous bins,
    the ids a target (an action or a text token) can take when the text model has at most
    head_vocab pieces; None = the whole vocabulary (Gato). A small text model leaves most of
    the 32000 text ids unused, and their logits cost most of a small model's step"""
    vector_observations: bool = False
    """embed each VECTOR_OBSERVATION token from the raw values it carries (JAT: one token per
    continuous observation; the loader's ``vector_observations`` makes them). Set by the trainer
    from the loader config, so the two always agree"""
    action_regression: float = 0.0
    """weight of a regression loss on continuous actions (JAT's action head): a linear head reads
    each state that predicts a continuous action token and is trained (MSE) on that token's value
    in mu-law space, [-1, 1]; the agent can then act on the value (``continuous_decoding=
    "regression"``). The cross-entropy on the bins stays, so every decoding works on the same
    model. A softmax over 1024 bins learned from a few hundred demonstrations is wide and blind
    to bin order; a regression is precise where the demonstrations agree. 0 = no head (Gato)"""
    instruction_film: int = 0
    """width of an instruction-conditioned reading of discrete vector observations (BabyAI's
    FiLM, Perez et al. 2018, as in the BabyAI baselines): each cell's code is modulated by the
    step's text (its mission) before cells are pooled, and the result goes into the step's
    separator, the state that predicts the action. The plain vector token sums cells blindly: a
    small Gato then has to find "the purple ball" in one 128-d superposition of the whole view.
    0 = off (JAT, Gato)"""
    vector_frequencies: int = 8
    """sine/cosine octaves per value in the vector encoder: features that change over ~1 cm of a
    Meta-World position, which a linear map of the raw value alone resolves poorly"""

    def __post_init__(self) -> None:
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        elif (self.n_embd // self.n_head) % 2:
            problems.append(f"head size n_embd/n_head={self.n_embd // self.n_head} must be even (rotary embeddings)")
        if self.action_regression < 0:
            problems.append(f"action_regression={self.action_regression} must be >= 0 (0 = no regression head)")
        if not 0.0 <= self.kappa < 1.0:
            problems.append(f"kappa={self.kappa} must be in [0, 1)")
        if self.instruction_film < 0:
            problems.append(f"instruction_film={self.instruction_film} must be >= 0 (0 = off)")
        for name in ("n_layer", "n_embd", "n_head", "ff", "block_size", "vocab_size", "max_obs_tokens",
                     "patch_channels", "patch_hidden", "position_bins"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.head_vocab is not None and not 1 <= self.head_vocab <= CONTINUOUS_OFFSET:
            problems.append(f"head_vocab={self.head_vocab} must be None or in [1, {CONTINUOUS_OFFSET}]")
        if problems:
            raise ValueError("model config: " + "; ".join(problems))

    @property
    def geglu_hidden(self) -> int:
        if self.ff_hidden is not None:
            return self.ff_hidden
        return max(64, int(round(7 * self.ff / 12 / 64)) * 64)


CONFIGS: dict[str, GatoConfig] = {
    # The paper's models (Gato table: layers, width, feed-forward, heads).
    "gato-79m": GatoConfig(n_layer=8, n_embd=768, n_head=24, ff=3072, patch_hidden=64),
    "gato-364m": GatoConfig(n_layer=12, n_embd=1536, n_head=12, ff=6144, patch_hidden=64),
    "gato-1.18b": GatoConfig(n_layer=24, n_embd=2048, n_head=16, ff=8192, patch_hidden=64),
    # CPU-sized: most of their parameters are the 33k-token table.
    "gato-tiny": GatoConfig(n_layer=2, n_embd=64, n_head=4, ff=256, block_size=512, patch_hidden=16),
    "gato-small": GatoConfig(n_layer=4, n_embd=128, n_head=4, ff=512, block_size=1024, patch_hidden=32),
    "gato-base-cpu": GatoConfig(n_layer=4, n_embd=192, n_head=6, ff=768, block_size=1024, patch_hidden=32),
}


# ----------------------------------------------------------------------------------------
# Embedding function


def group_count(channels: int, preferred: int = 32) -> int:
    """GroupNorm groups: 32 as in Gato, or the largest divisor of ``channels`` below that."""
    return max(g for g in range(1, min(preferred, channels) + 1) if channels % g == 0)


class ResNetV2Block(nn.Module):
    """Pre-activation residual block: x + conv(GELU(GN(conv(GELU(GN(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(group_count(channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, ch, P, P)
        h = self.conv1(F.gelu(self.norm1(x)))
        h = self.conv2(F.gelu(self.norm2(h)))
        return x + h


class PatchEmbedding(nn.Module):
    """One vector per 16x16 patch: a stem conv, one ResNet v2 block, pooling, a projection."""

    def __init__(self, config: GatoConfig) -> None:
        super().__init__()
        ch = config.patch_hidden
        self.stem = nn.Conv2d(config.patch_channels, ch, 3, padding=1)
        self.block = ResNetV2Block(ch)
        self.norm = nn.GroupNorm(group_count(ch), ch)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.proj = nn.Linear(ch * 16, config.n_embd)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # (N, C_max, 16, 16)
        x = self.block(self.stem(patches))  # (N, ch, 16, 16)
        x = self.pool(F.gelu(self.norm(x)))  # (N, ch, 4, 4)
        return self.proj(x.flatten(1))  # (N, C)


def interval_bins(intervals: torch.Tensor, bins: int, sample: bool) -> torch.Tensor:
    """Quantize normalized [start, end) intervals (N, 2) to bin ids (N,).

    Training samples a bin uniformly inside the interval; evaluation takes its rounded mean.
    """
    lo = (intervals[:, 0] * bins).floor().clamp(0, bins - 1)
    hi = torch.maximum((intervals[:, 1] * bins).ceil().clamp(1, bins), lo + 1)  # exclusive
    if sample:
        idx = lo + (torch.rand_like(lo) * (hi - lo)).floor()
    else:
        idx = torch.round((lo + hi - 1) / 2)
    return idx.long().clamp(0, bins - 1)


class VectorEncoder(nn.Module):
    """A whole observation -> one token vector. Continuous values (VECTOR_WIDTH raw floats,
    zero-padded): per value its symlog and sine/cosine octaves of it, through a linear layer
    (JAT embeds continuous observations with a linear layer; the octaves give it the precision
    a 1024-bin token per value had). Discrete values (VECTOR_WIDTH codes, -1 padded): a learned
    row per (position, value), summed: the linear layer of their one-hot code, so "a red ball in
    cell 12" is a feature of its own. Then GELU and a second linear layer."""

    def __init__(self, config: GatoConfig) -> None:
        super().__init__()
        self.register_buffer("scales", math.pi * 2.0 ** torch.arange(config.vector_frequencies), persistent=False)
        features = VECTOR_WIDTH * (1 + 2 * config.vector_frequencies)
        self.inp = nn.Linear(features, config.n_embd)
        self.none = VECTOR_WIDTH * VECTOR_CODE_VALUES  # the row of padding codes: zeros, never trained
        self.codes = nn.Embedding(self.none + 1, config.n_embd, padding_idx=self.none)
        self.register_buffer("code_offsets", torch.arange(VECTOR_WIDTH) * VECTOR_CODE_VALUES, persistent=False)
        self.out = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, values: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(N, VECTOR_WIDTH) floats and (N, VECTOR_WIDTH) codes -> (N, C)."""
        s = torch.sign(values) * torch.log1p(values.abs())
        angles = s.unsqueeze(-1) * self.scales  # (N, W, F)
        features = torch.cat([s.unsqueeze(-1), angles.sin(), angles.cos()], dim=-1).flatten(1)
        h = self.inp(features.to(self.inp.weight.dtype))
        codes = codes.long()
        index = torch.where(codes >= 0, codes + self.code_offsets, self.none)
        h = h + self.codes(index).sum(1)
        return self.out(F.gelu(h))


class InstructionFiLM(nn.Module):
    """A step's discrete vector observation read in the light of the step's text: per cell, its
    code's embedding is scaled and shifted by the mission (FiLM) and passed through GELU, so a
    unit can mean "this cell holds what the mission names"; a second layer joins that with the
    cell's position; the cells are summed. Codes are embedded by value, shared across positions,
    so "purple ball" is learned once for every cell it can be in."""

    def __init__(self, config: GatoConfig) -> None:
        super().__init__()
        width = config.instruction_film
        self.pad = VECTOR_CODE_VALUES
        self.value = nn.Embedding(VECTOR_CODE_VALUES + 1, width, padding_idx=self.pad)
        self.position = nn.Parameter(torch.randn(VECTOR_WIDTH, width) * 0.02)
        # the mission's own bag of words: the token table also serves the output head and the
        # trunk, and a mean of those rows was read far worse (docs/demo.md)
        self.words = nn.Embedding(TEXT_VOCAB_SIZE, width)
        self.film = nn.Linear(width, 2 * width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, config.n_embd)

    def reset_inner_parameters(self) -> None:
        """PyTorch's own init (unit-scale embeddings, fan-in linears) for everything before the
        output layer, after the model's GPT-2 init (std 0.02) drew them: at 0.02 the products of
        FiLM and GELU start near-linear and tiny, and a per-step network so initialised reached
        73% held-out accuracy on the bot's GoToLocal actions against 93% (docs/demo.md)."""
        for module in (self.value, self.words, self.film, self.mix):
            module.reset_parameters()

    def forward(self, codes: torch.Tensor, mission: torch.Tensor) -> torch.Tensor:
        """(N, VECTOR_WIDTH) codes (-1 padded) and (N, width) mission vectors -> (N, C)."""
        valid = codes >= 0
        columns = valid.any(0).nonzero()
        used = int(columns.max()) + 1 if len(columns) else 1
        # BabyAI fills 50 of the 64 columns: the rest costs a fifth for nothing
        codes, valid = codes[:, :used], valid[:, :used]
        value = self.value(torch.where(valid, codes.long(), self.pad))  # (N, W, w)
        scale, shift = self.film(mission).unsqueeze(1).chunk(2, dim=-1)  # (N, 1, w) each
        matched = F.gelu(value * (1 + scale) + shift)
        placed = F.gelu(self.mix(matched) + self.position[:used]) * valid.unsqueeze(-1)
        return self.out(placed.sum(1))

    def at_separators(self, x: torch.Tensor, tokens: torch.Tensor, local_positions: torch.Tensor,
                      is_image: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(B, T, C) to add to ``x``: at each separator whose timestep has a vector observation
        with codes, that observation read with the mean of the timestep's text tokens' ``words`` rows.
        A timestep is the run of tokens from an observation's first token (local position 0) to
        the next one; the separator follows both the vector token and the text, so nothing
        reads a token after itself."""
        B, T, C = x.shape
        is_vector = tokens == VECTOR_OBSERVATION
        has_cells = is_vector & (codes >= 0).any(-1)  # (B, T)
        step = torch.cumsum(local_positions == 0, dim=1)  # (B, T): timestep index in the window
        step = (step + torch.arange(B, device=x.device).unsqueeze(1) * (T + 1)).reshape(-1)
        is_text = ((local_positions > 0) & ~is_image & ~is_vector).reshape(-1)
        is_text = is_text & (tokens.reshape(-1) < TEXT_VOCAB_SIZE)
        words = self.words(tokens.reshape(-1)[is_text])
        text_sum = words.new_zeros(B * (T + 1), words.shape[-1]).index_add(0, step[is_text], words)
        text_count = words.new_zeros(B * (T + 1)).index_add(0, step[is_text], words.new_ones(len(words)))
        cells = has_cells.reshape(-1)
        where = step[cells]
        mission = text_sum[where] / text_count[where].clamp(min=1).unsqueeze(-1)
        read = self(codes.reshape(-1, codes.shape[-1])[cells], mission)  # (n, C)
        by_step = x.new_zeros(B * (T + 1), C).index_put((where,), read.to(x.dtype))
        is_separator = (tokens == SEPARATOR).reshape(-1, 1)
        return (by_step[step] * is_separator).reshape(B, T, C)


class GatoEmbedding(nn.Module):
    """Tokens -> vectors: one table for text/discrete/continuous/separator, patches via a ResNet,
    vector observations (when configured) via an MLP."""

    def __init__(self, config: GatoConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.patch = PatchEmbedding(config)
        self.row = nn.Embedding(config.position_bins, config.n_embd)
        self.col = nn.Embedding(config.position_bins, config.n_embd)
        self.local = nn.Embedding(config.max_obs_tokens, config.n_embd)
        self.vector = VectorEncoder(config) if config.vector_observations else None
        self.instruction = InstructionFiLM(config) if config.instruction_film else None

    def forward(self, tokens: torch.Tensor, local_positions: torch.Tensor, is_image: torch.Tensor,
                patches: torch.Tensor, patch_rows: torch.Tensor, patch_cols: torch.Tensor,
                vectors: torch.Tensor | None = None, codes: torch.Tensor | None = None) -> torch.Tensor:
        """tokens, local_positions, is_image: (B, T); patches (N, C_max, 16, 16) in the order of
        the True entries of is_image (row-major); patch_rows/cols (N, 2); vectors and codes (B,
        T, VECTOR_WIDTH), read at VECTOR_OBSERVATION tokens."""
        x = self.wte(tokens)  # (B, T, C)
        if self.vector is not None and (self.training or vectors is not None):
            is_vector = tokens == VECTOR_OBSERVATION
            if vectors is None:  # a batch without vector tasks: an empty pass keeps every parameter in the graph
                vectors = x.new_zeros((*tokens.shape, VECTOR_WIDTH))
            if codes is None:
                codes = torch.full(vectors.shape, -1, dtype=torch.int16, device=x.device)
            ve = self.vector(vectors[is_vector], codes[is_vector])  # (n, C)
            x = x.index_put((is_vector,), x[is_vector] + ve.to(x.dtype))
        elif vectors is not None and (tokens == VECTOR_OBSERVATION).any():
            raise ValueError("the input has vector observations but the model was built without "
                             "vector_observations: train it with loader.vector_observations: true")
        # in training even for N = 0, so every parameter is in the graph (DDP needs that);
        # acting without images skips the empty patch pass
        if self.training or patches.shape[0]:
            bins = self.config.position_bins
            pe = self.patch(patches.to(x.dtype))  # (N, C)
            pe = pe + self.row(interval_bins(patch_rows, bins, self.training))
            pe = pe + self.col(interval_bins(patch_cols, bins, self.training))
            x = x.index_put((is_image,), pe.to(x.dtype))  # placeholders -> patch vectors
        is_obs = (local_positions >= 0).unsqueeze(-1)  # (B, T, 1) observation tokens only
        local = self.local(local_positions.clamp(0, self.config.max_obs_tokens - 1))
        x = x + local * is_obs
        if self.instruction is not None and codes is not None:
            x = x + self.instruction.at_separators(x, tokens, local_positions, is_image, codes)
        return x


# ----------------------------------------------------------------------------------------
# Transformer


def rotary(positions: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (T, head_size/2) for absolute positions (T,)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, device=positions.device).float() / head_size)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the head dimension; x (B, H, T, hs)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


class KVCache:
    """Keys and values of the last ``max_tokens`` tokens seen, per layer, in a ring of slots.

    Keys are stored already rotated, so dropping the oldest entries keeps every relative
    distance intact: a new token costs one forward pass over itself, not over the context.
    Position p lives in slot p % max_tokens, so appending T tokens writes T slots and
    overwrites the oldest, where concatenating and trimming copied the whole window every
    forward pass (a fifth of an evaluation step). Attention does not care about slot order;
    ``positions`` (the absolute position in each slot) gives the causal mask among new tokens.
    """

    def __init__(self, n_layer: int, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.positions: torch.Tensor | None = None  # (S,) absolute position held by each filled slot
        self.next_position = 0
        self._slots: slice | torch.Tensor = slice(0, 0)
        self.mask: torch.Tensor | None = None  # (T, S) for the tokens being appended, or None
        self.causal = True  # with no mask: whether the new tokens attend causally (the cache's first)

    def __len__(self) -> int:
        return 0 if self.positions is None else int(self.positions.numel())

    def reset(self) -> None:
        self.__init__(len(self.keys), self.max_tokens)

    def truncate(self, n: int) -> None:
        """Forget every token after the first ``n`` (a memoryless agent keeps its prompt and drops
        the last timestep). Only before the ring wraps: the first ``n`` tokens are then slots 0..n-1."""
        if self.next_position > self.max_tokens:
            raise ValueError(f"cannot truncate a cache that has wrapped ({self.next_position} tokens seen, "
                             f"{self.max_tokens} kept)")
        if not 0 <= n <= self.next_position:
            raise ValueError(f"truncate({n}): the cache holds {self.next_position} tokens")
        self.next_position = n
        if self.positions is not None:
            self.positions = self.positions[:n]

    def start(self, n_new: int, device: torch.device) -> torch.Tensor:
        """Positions (T,) of the ``n_new`` tokens about to be appended; marks their slots and sets
        how they attend (``mask``/``causal``, the same for every layer)."""
        if n_new > self.max_tokens:
            raise ValueError(f"cannot append {n_new} tokens at once to a {self.max_tokens}-token context")
        first = self.next_position
        new = torch.arange(first, first + n_new, device=device)
        filled = min(first + n_new, self.max_tokens)
        if self.positions is None or len(self.positions) < filled:
            grown = torch.empty(filled, dtype=torch.long, device=device)
            if self.positions is not None:
                grown[:len(self.positions)] = self.positions
            self.positions = grown
        low = first % self.max_tokens
        self._slots = slice(low, low + n_new) if low + n_new <= self.max_tokens else new % self.max_tokens
        self.positions[self._slots] = new
        if first == 0 or n_new == 1:  # the first tokens (slots 0..T-1 in order), or one token after all the rest
            self.mask, self.causal = None, first == 0
        else:  # the cached window plus the new tokens, causally by position
            self.mask, self.causal = self.positions[None, :] <= new[:, None], False
        self.next_position += n_new
        return new

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, T, hs) keys/values into their slots; return every filled slot (B, H, S, hs)."""
        if self.keys[layer] is None:
            shape = (*k.shape[:2], self.max_tokens, k.shape[3])
            self.keys[layer], self.values[layer] = k.new_empty(shape), v.new_empty(shape)
        keys, values = self.keys[layer], self.values[layer]
        if isinstance(self._slots, slice):
            keys[:, :, self._slots], values[:, :, self._slots] = k, v
        else:
            keys.index_copy_(2, self._slots, k)
            values.index_copy_(2, self._slots, v)
        filled = len(self.positions)
        return keys[:, :, :filled], values[:, :, :filled]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GatoConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        causal = mask is None
        if cache is not None:
            k, v = cache.append(self.layer, k, v)  # (B, H, S, hs): every cached slot, the new tokens' too
            mask, causal = cache.mask, cache.causal
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and T > 1, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class GEGLU(nn.Module):
    """Feed-forward with a GELU-gated linear unit: W_out (GELU(x W_gate) * x W_value)."""

    def __init__(self, config: GatoConfig) -> None:
        super().__init__()
        hidden = config.geglu_hidden
        self.gate_value = nn.Linear(config.n_embd, 2 * hidden, bias=False)
        self.out = nn.Linear(hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        gate, value = self.gate_value(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.out(F.gelu(gate) * value))


class Block(nn.Module):
    def __init__(self, config: GatoConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.ff = GEGLU(config)

    def forward(self, x, cos, sin, cache=None, mask=None):
        x = x + self.attn(self.ln_1(x), cos, sin, cache, mask)
        return x + self.ff(self.ln_2(x))


# ----------------------------------------------------------------------------------------
# The model


@dataclass
class GatoLoss:
    loss: torch.Tensor
    """what is optimized: (1 - kappa) * action_loss + kappa * observation_loss"""
    action_loss: torch.Tensor
    """mean cross-entropy over target tokens (actions and text)"""
    observation_loss: torch.Tensor | None
    targets: int
    """number of target tokens the head was computed for"""
    regression_loss: torch.Tensor | None = None
    """mean squared error of the continuous action values (mu-law space), with action_regression"""


class Gato(nn.Module):
    def __init__(self, config: GatoConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = GatoEmbedding(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.wte.weight  # tied, as in nanoGPT (and the paper's counts)
        self.patch_head = nn.Linear(config.n_embd, config.patch_channels * config.patch_size ** 2) if config.kappa else None
        self.value_head = nn.Linear(config.n_embd, 1) if config.action_regression else None
        self.apply(self._init_weights)
        if self.embed.vector is not None:  # the padding codes' row stays zero (the init above drew it)
            with torch.no_grad():
                self.embed.vector.codes.weight[self.embed.vector.none].zero_()
        if self.embed.instruction is not None:
            self.embed.instruction.reset_inner_parameters()
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("attn.proj.weight") or name.endswith("ff.out.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        ids = position = None  # the loss's head over the whole vocabulary
        if config.head_vocab is not None:
            ids = torch.cat((torch.arange(config.head_vocab),
                             torch.arange(CONTINUOUS_OFFSET, CONTINUOUS_OFFSET + CONTINUOUS_BINS)))
            position = torch.full((config.vocab_size,), -1, dtype=torch.long)
            position[ids] = torch.arange(len(ids))
        self.register_buffer("head_ids", ids, persistent=False)  # ids the loss's softmax runs over
        self.register_buffer("head_position", position, persistent=False)  # id -> its place there, -1 if absent
        if config.smooth_bins:
            with torch.no_grad():
                self.embed.wte.weight[CONTINUOUS_OFFSET:CONTINUOUS_OFFSET + CONTINUOUS_BINS] = smooth_bin_code(
                    CONTINUOUS_BINS, config.n_embd)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def compile_blocks(self) -> None:
        """``torch.compile`` each transformer block in place (parameter names and checkpoints
        unchanged). The blocks are nearly all of a step, and inductor fuses their layer norms,
        rotary products and GELU gates: 386.5 -> 346.0 ms a step of gato-small on the demo's
        16 x 256-token batches on this 2-core CPU, with the fused AdamW (docs/trainer.md). The
        whole model is not compiled: inductor's backward of the patch embedding's convolutions
        fails a stride check on torch 2.13."""
        for block in self.blocks:
            block.compile()

    def hidden_states(self, tokens, local_positions, is_image, patches, patch_rows, patch_cols,
                      cache: KVCache | None = None, vectors: torch.Tensor | None = None,
                      codes: torch.Tensor | None = None, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer states (B, T, C) after ln_f. With a cache, tokens continue the cached context.
        ``segments`` (B, T) (the loader's, for memoryless tasks) restricts attention: see ``segment_mask``."""
        B, T = tokens.shape
        mask = None
        if segments is not None and cache is None and bool((segments > 0).any()):
            mask = segment_mask(segments)
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size={self.config.block_size}")
            positions = torch.arange(T, device=tokens.device)
        else:
            positions = cache.start(T, tokens.device)
        cos, sin = rotary(positions, self.config.n_embd // self.config.n_head, self.config.rope_base)
        x = self.drop(self.embed(tokens, local_positions, is_image, patches, patch_rows, patch_cols, vectors, codes))
        for block in self.blocks:
            x = block(x, cos, sin, cache, mask)
        return self.ln_f(x)  # (B, T, C)

    def forward(self, batch: dict[str, torch.Tensor]) -> GatoLoss:
        """Loss of a loader batch (trainer-contract.md). The head runs only where the loss is."""
        patches, rows, cols = real_patches(batch)
        tokens = batch["tokens"]
        h = self.hidden_states(tokens, batch["local_positions"], batch["is_image"], patches, rows, cols,
                               vectors=batch.get("obs_vectors"), codes=batch.get("obs_codes"),
                               segments=batch.get("segments"))
        # token l is predicted from positions < l: states [:, :-1] predict tokens [:, 1:]
        live = batch["attention_mask"][:, 1:]
        target_mask = batch["loss_mask"][:, 1:] & live  # (B, T-1)
        h_prev = h[:, :-1]  # (B, T-1, C)
        h_targets, target_ids = h_prev[target_mask], tokens[:, 1:][target_mask]  # (n, C), (n,)
        logits, targets = self.target_logits(h_targets, target_ids)
        action_loss = F.cross_entropy(logits.float(), targets) if logits.shape[0] else h.sum() * 0
        obs_loss = None
        loss = action_loss
        if self.config.kappa:
            obs_loss = self.observation_loss(batch, h_prev, live, patches)
            loss = (1 - self.config.kappa) * action_loss + self.config.kappa * obs_loss
        regression = None
        if self.value_head is not None:
            regression = self.regression_loss(h_targets, target_ids)
            loss = loss + self.config.action_regression * regression
        return GatoLoss(loss, action_loss, obs_loss, int(target_mask.sum()), regression)

    def regression_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """MSE of the value head at the states (n, C) whose targets are continuous tokens, against
        each token's bin centre in mu-law space; 0 (with a gradient path) when there are none."""
        continuous = (targets >= CONTINUOUS_OFFSET) & (targets < CONTINUOUS_OFFSET + CONTINUOUS_BINS)
        if not continuous.any():
            return h.sum() * 0
        return F.mse_loss(self.continuous_values(h[continuous]).float(),
                          bin_centres(targets[continuous] - CONTINUOUS_OFFSET).float())

    def continuous_values(self, h: torch.Tensor) -> torch.Tensor:
        """The value head's prediction (n,) for states (n, C), in mu-law space (not clipped)."""
        if self.value_head is None:
            raise ValueError("this model has no regression head (model.action_regression=0): "
                             "decode continuous actions by 'sample' or 'median'")
        return self.value_head(h).squeeze(-1)

    def target_logits(self, h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (n, V or head size) of target states (n, C) and the targets as indices into them."""
        if self.head_ids is None:
            return self.lm_head(h), targets
        positions = self.head_position[targets]
        if (positions < 0).any():
            bad = int(targets[positions < 0][0])
            raise ValueError(f"target token {bad} is outside the model's head (model.head_vocab="
                             f"{self.config.head_vocab}): use a text model with at most head_vocab pieces, "
                             "or head_vocab: null")
        return h @ self.lm_head.weight[self.head_ids].T, positions

    def observation_loss(self, batch, h_prev, live, patches) -> torch.Tensor:
        """Next-observation prediction (JAT's kappa, Dynalang's world model): cross-entropy of the
        next observation token, and MSE of the next image patch's pixels."""
        obs = (batch["local_positions"][:, 1:] >= 0) & live  # (B, T-1)
        image = batch["is_image"][:, 1:] & obs
        token_mask = obs & ~image
        losses = []
        if token_mask.any():
            logits = self.lm_head(h_prev[token_mask])
            losses.append(F.cross_entropy(logits.float(), batch["tokens"][:, 1:][token_mask]))
        if image.any():
            # patches are in is_image order; the first token of a sequence is never predicted
            first_is_image = batch["is_image"][:, 0]
            per_seq = batch["is_image"].sum(1)
            keep = torch.ones(patches.shape[0], dtype=torch.bool, device=patches.device)
            starts = torch.cumsum(per_seq, 0) - per_seq
            keep[starts[first_is_image]] = False
            pred = self.patch_head(h_prev[image]).float()  # (n, C*16*16)
            losses.append(F.mse_loss(pred, patches[keep].flatten(1).float()))
        return torch.stack(losses).mean() if losses else h_prev.sum() * 0

    @torch.no_grad()
    def next_token_state(self, tokens, local_positions, is_image, patches, patch_rows, patch_cols,
                         cache: KVCache, vectors: torch.Tensor | None = None,
                         codes: torch.Tensor | None = None) -> torch.Tensor:
        """The final-layer state (B, C) that predicts the token after the given ones (fills ``cache``):
        one trunk pass serves both the logits and the value head."""
        return self.hidden_states(tokens, local_positions, is_image, patches, patch_rows, patch_cols, cache, vectors,
                                  codes)[:, -1]

    def head_logits(self, h: torch.Tensor, allowed: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Logits (B, len(allowed) or V) of states (B, C). ``allowed`` (ids, or a slice of them: a
        view of the head, no gather) restricts the head to the ids valid for the action spec
        (cheaper, and a sample can only be a legal action token)."""
        weight = self.lm_head.weight if allowed is None else self.lm_head.weight[allowed]
        return h @ weight.T

    def configure_optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
        """AdamW; weight decay on matrices and tables, not on norm gains or biases (nanoGPT).
        Fused on a CPU or GPU: one kernel per parameter instead of a dozen, which on gato-small's
        33k-row token table took a step's optimizer update from ~30 to ~5 ms here."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        device = next(self.parameters()).device.type
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True if device in ("cpu", "cuda") else None)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool attention mask of (B, T) segment ids: token q sees token k <= q when k
    is in segment 0 (prompts, tasks with history) or in q's own segment (one timestep of a
    memoryless task). All zeros gives the plain causal mask."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    keys = segments[:, None, :]
    visible = (keys == 0) | (keys == segments[:, :, None])  # (B, T, T)
    return (visible & causal)[:, None]


def smooth_bin_code(bins: int, width: int, std: float = 0.02, seed: int = 0) -> torch.Tensor:
    """(bins, width) rows: Fourier features of each bin's centre u in [-1, 1] (the mu-law scale),
    frequencies from 1/2 to bins/8 cycles over the range, mixed by a random orthogonal matrix,
    scaled to the table's init std. Nearby bins get nearby rows; distant bins near-orthogonal ones."""
    generator = torch.Generator().manual_seed(seed)
    u = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins * 2 - 1  # (bins,)
    half = width // 2
    frequencies = math.pi * torch.logspace(math.log10(0.5), math.log10(bins / 8), half, dtype=torch.float64)
    angles = u[:, None] * frequencies[None, :]  # (bins, half)
    features = torch.cat([angles.cos(), angles.sin()], dim=1)  # (bins, 2 * half)
    if features.shape[1] < width:
        features = torch.cat([features, torch.zeros(bins, width - features.shape[1], dtype=torch.float64)], dim=1)
    mix, _ = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))
    code = features @ mix  # (bins, width), rows of norm sqrt(half)
    return (code * (std * math.sqrt(width) / math.sqrt(half))).float()


def real_patches(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's patches as model input (N, C_max, 16, 16) float32 in [-1, 1] / 4 and their
    intervals (N, 2), row-major like is_image. The loader ships the uint8 frames; they are cut
    and scaled here, on the batch's device."""
    patches = frames_to_patches(batch["frames"], batch["image_shapes"], batch["num_frames"], batch["frame_patches"])
    return patches, batch["patch_rows"], batch["patch_cols"]


# ----------------------------------------------------------------------------------------
# Config lookup and the CLI


def load_model_config(name_or_path: str) -> GatoConfig:
    """A config by name (CONFIGS) or from a YAML file's ``model:`` section."""
    if name_or_path in CONFIGS:
        return CONFIGS[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ValueError(f"{path}: model config file not found")
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
        config = model_config_from_dict(data.get("model", data), where=str(path))
        loader = data.get("loader") or {}
        # the trainer builds the model with the loader's switch: so does a config read from the file
        return dataclasses.replace(config, vector_observations=bool(loader.get("vector_observations", False)))
    raise ValueError(f"unknown model config {name_or_path!r}: expected one of {sorted(CONFIGS)} or a .yaml file")


def model_config_from_dict(data: dict, where: str = "model") -> GatoConfig:
    """GatoConfig from a dict; a ``preset`` key starts from a named config."""
    data = dict(data)
    base = {}
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in CONFIGS:
            raise ValueError(f"{where}: preset {preset!r} is not one of {sorted(CONFIGS)}")
        base = asdict(CONFIGS[preset])
    known = {f.name for f in fields(GatoConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown model field(s) {unknown}; expected some of {sorted(known)}")
    return GatoConfig(**{**base, **data})


def describe(config: GatoConfig, name: str = "") -> dict:
    """Layers, width, heads and parameter count, computed on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = Gato(config)
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))
    return {"config": name, "layers": config.n_layer, "width": config.n_embd, "heads": config.n_head,
            "feed_forward": config.ff, "geglu_hidden": config.geglu_hidden, "context": config.block_size,
            "params": model.num_params(), "params_blocks": blocks,
            "params_embedding": model.embed.wte.weight.numel()}


@dataclass
class ModelCommand:
    """Print a Gato config's size without allocating its weights."""

    config: tyro.conf.Positional[str]
    """a config name (gato-79m, gato-364m, gato-1.18b, gato-tiny, gato-small, gato-base-cpu) or a YAML file"""
    json: bool = False
    """print JSON instead of a table"""


def main(argv: list[str] | None = None) -> None:
    from shards.console import print_table

    args = tyro.cli(ModelCommand, args=argv)
    try:
        row = describe(load_model_config(args.config), args.config)
    except ValueError as error:
        sys.exit(f"error: {error}")
    if args.json:
        sys.stdout.write(json.dumps(row, indent=2) + "\n")
    else:
        print_table([row], title="Gato model")


if __name__ == "__main__":
    main()
