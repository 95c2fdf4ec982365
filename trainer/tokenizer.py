"""Gato's tokenizer (paper section 2.1, appendix B): every modality to integer tokens.

    python -m trainer.tokenizer fit runs/quickstart --out runs/text.model   # SentencePiece
    python -m trainer.tokenizer layout --json                              # the token layout

    from trainer.tokenizer import LAYOUT, encode_continuous, tokenize_observation, decode_action
    tokens = encode_continuous(np.array([0.0, 1.0, -1e6]))   # -> ids in [32000, 33024)

Layout (``TokenLayout``, defined here once; the model imports it):

    [0, 32000)        text (SentencePiece ids) and, sharing ids, discrete values [0, 1024)
    [32000, 33024)    continuous values: mu-law (mu=100, M=256), clip [-1, 1], 1024 bins
    33024             SEPARATOR '|' between a timestep's observation and action tokens
    33025             IMAGE_PLACEHOLDER at positions holding an image patch
    33026             PAD
    33027             VECTOR_OBSERVATION: a whole continuous observation as one token (below)
    vocabulary        33028

A timestep is its observation tokens, columns in key order (obs_continuous, obs_discrete,
obs_image, obs_text), then SEPARATOR, then its action tokens (act_continuous, act_discrete),
every array flattened row-major. Images become 16x16 patches (trainer.patches).

Vector observations (``vector_observations=True``, JAT's embedding; off by default, Gato's):
a task's obs_continuous and obs_discrete values become one VECTOR_OBSERVATION token that
carries them (``StepTokens.vectors``: the raw floats, ``StepTokens.codes``: the discrete
values, at most VECTOR_WIDTH of each) for the model to embed, instead of one token per value.
A 39-value Meta-World step is then 6 tokens instead of 44, a BabyAI step 9 instead of 57.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tyro

from shards.format import (
    ACT_COLUMNS,
    ACT_CONTINUOUS,
    ACT_DISCRETE,
    OBS_COLUMNS,
    OBS_CONTINUOUS,
    OBS_DISCRETE,
    OBS_IMAGE,
    OBS_TEXT,
)
from shards.manifest import TaskSpec
from trainer.patches import (
    MAX_CHANNELS,
    PATCH_SIZE,
    cut_patches,
    image_to_patches,
    normalize_patches,
    patch_intervals,
    patches_per_image,
)
from trainer.text_tokenizer import TEXT_VOCAB_SIZE, TextTokenizer

log = logging.getLogger(__name__)

MU = 100.0
M = 256.0
DISCRETE_VALUES = 1024
CONTINUOUS_BINS = 1024
CONTINUOUS_OFFSET = TEXT_VOCAB_SIZE
SEPARATOR = CONTINUOUS_OFFSET + CONTINUOUS_BINS  # 33024
IMAGE_PLACEHOLDER = SEPARATOR + 1
PAD = SEPARATOR + 2
VECTOR_OBSERVATION = SEPARATOR + 3
VOCAB_SIZE = SEPARATOR + 4
VECTOR_WIDTH = 64
"""continuous (and, separately, discrete) observation values one VECTOR_OBSERVATION token
carries: floats zero-padded, discrete values padded with -1"""
VECTOR_CODE_VALUES = 256
"""discrete values a vector observation embeds: [0, 256) (BabyAI's packed cells are < 198)"""
MAX_LOCAL_POSITIONS = 1024


@dataclass(frozen=True)
class TokenLayout:
    """Which token ids mean what: the single definition the data path and the model share."""

    text_vocab_size: int = TEXT_VOCAB_SIZE
    discrete_values: int = DISCRETE_VALUES
    continuous_offset: int = CONTINUOUS_OFFSET
    continuous_bins: int = CONTINUOUS_BINS
    separator: int = SEPARATOR
    image_placeholder: int = IMAGE_PLACEHOLDER
    pad: int = PAD
    vector_observation: int = VECTOR_OBSERVATION
    vector_width: int = VECTOR_WIDTH
    vocab_size: int = VOCAB_SIZE
    mu: float = MU
    m: float = M
    patch_size: int = PATCH_SIZE
    max_channels: int = MAX_CHANNELS
    """patches carry this many channels (fewer are zero-padded): stacked frames are channels"""
    max_local_positions: int = MAX_LOCAL_POSITIONS
    """local observation positions are in [0, this)"""
    observation_order: tuple[str, ...] = OBS_COLUMNS
    action_order: tuple[str, ...] = ACT_COLUMNS


LAYOUT = TokenLayout()


# ----------------------------------------------------------------------------- values

def mu_law(x: np.ndarray, mu: float = MU, m: float = M, out: np.ndarray | None = None) -> np.ndarray:
    """F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1), in float64. With ``out`` (a float64 array of
    x's shape, not x itself) every step works in it: no temporaries."""
    x = np.asarray(x)
    y = np.abs(x, out=out) if out is not None else np.abs(x, dtype=np.float64)
    y *= mu
    np.log1p(y, out=y)
    y /= math.log1p(m * mu)
    return np.copysign(y, x, out=y)  # the sign after the division: the same value under IEEE rounding


def inverse_mu_law(y: np.ndarray, mu: float = MU, m: float = M) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return np.sign(y) * np.expm1(np.abs(y) * math.log1p(m * mu)) / mu


def encode_continuous(x: np.ndarray) -> np.ndarray:
    """Real values -> int64 tokens in [32000, 33024), same shape: mu-law, clip to [-1, 1],
    1024 uniform bins. NaN or inf raise ValueError."""
    source = np.asarray(x)
    finite = np.isfinite(source)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(-1))
        raise ValueError(f"encode_continuous: {bad.size} non-finite value(s) (first {source.reshape(-1)[bad[0]]} "
                         f"at flat index {bad[0]}); expected finite floats")
    # mu-law and the binning in one float64 array (a fresh array per operation made a
    # Meta-World-like unit's temporaries ~80 MB of new memory)
    bins = mu_law_bins(mu_law(source, out=np.empty(source.shape, dtype=np.float64)))
    bins += CONTINUOUS_OFFSET
    return bins


def mu_law_bins(values: np.ndarray) -> np.ndarray:
    """Values already in mu-law space (float64; clipped to [-1, 1] in place) -> int64 bins in
    [0, 1024), uniform over [-1, 1]. The inverse of ``bin_centres`` up to the bin's width."""
    np.clip(values, -1.0, 1.0, out=values)
    values += 1.0
    values *= CONTINUOUS_BINS / 2.0
    np.floor(values, out=values)
    bins = values.astype(np.int64)
    np.minimum(bins, CONTINUOUS_BINS - 1, out=bins)
    return bins


def bin_centres(bins):
    """Bins in [0, 1024) -> the centres of their mu-law intervals, in (-1, 1). Plain arithmetic,
    so a numpy array or a torch tensor (the regression head's targets) gives its own kind."""
    return (bins + 0.5) * (2.0 / CONTINUOUS_BINS) - 1.0


def decode_continuous(tokens: np.ndarray) -> np.ndarray:
    """Tokens in [32000, 33024) -> float32 values at each bin's centre (inverse mu-law)."""
    tokens = np.asarray(tokens)
    bins = tokens.astype(np.int64) - CONTINUOUS_OFFSET
    if bins.size and (bins.min() < 0 or bins.max() >= CONTINUOUS_BINS):
        bad = tokens.reshape(-1)[np.flatnonzero((bins < 0) | (bins >= CONTINUOUS_BINS))[0]]
        raise ValueError(f"decode_continuous: token {bad} is outside the continuous range "
                         f"[{CONTINUOUS_OFFSET}, {CONTINUOUS_OFFSET + CONTINUOUS_BINS})")
    return inverse_mu_law(bin_centres(bins)).astype(np.float32)


def encode_discrete(x: np.ndarray) -> np.ndarray:
    """Integers in [0, 1024) -> int64 tokens (the same ids); anything else raises ValueError."""
    return _checked_discrete(x).astype(np.int64)


def _checked_discrete(x: np.ndarray) -> np.ndarray:
    """``x`` as an array after checking that it holds integers in [0, 1024) (ValueError if not)."""
    values = np.asarray(x)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise ValueError("encode_discrete: expected integers in [0, 1024), got non-integral floats")
    elif values.dtype.kind not in "iub":
        raise ValueError(f"encode_discrete: expected integers in [0, 1024), got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= DISCRETE_VALUES):
        bad = values.reshape(-1)[np.flatnonzero((values < 0) | (values >= DISCRETE_VALUES))[0]]
        raise ValueError(f"encode_discrete: value {bad} is outside [0, {DISCRETE_VALUES})")
    return values


# ----------------------------------------------------------------------------- timesteps

@dataclass(frozen=True)
class StepLayout:
    """The fixed shape of one task's timestep: how many tokens each column gives."""

    continuous_obs: int
    discrete_obs: int
    patches: int
    image_shape: tuple[int, ...] | None
    has_text: bool
    continuous_act: int
    discrete_act: int
    vector_values: int = 0
    """obs_continuous values carried by the one VECTOR_OBSERVATION token (0: a token per value)"""
    vector_codes: int = 0
    """obs_discrete values carried by the VECTOR_OBSERVATION token (0: a token per value)"""

    @classmethod
    def of(cls, spec: TaskSpec, vector_observations: bool = False) -> StepLayout:
        def width(group: dict, column: str) -> int:
            return int(np.prod(group[column].shape)) if column in group else 0

        image = spec.image_shape
        if image is not None:
            if len(image) == 2:
                image = (*image, 1)
            if len(image) != 3:
                raise ValueError(f"obs_image shape {list(image)}: expected [H, W, C]")
            if image[2] > MAX_CHANNELS:
                raise ValueError(f"obs_image has {image[2]} channels; the patch layout holds at most {MAX_CHANNELS}")
        continuous, discrete = width(spec.observation, OBS_CONTINUOUS), width(spec.observation, OBS_DISCRETE)
        vector_values, vector_codes = (continuous, discrete) if vector_observations else (0, 0)
        for column, count in ((OBS_CONTINUOUS, vector_values), (OBS_DISCRETE, vector_codes)):
            if count > VECTOR_WIDTH:
                raise ValueError(f"{column} has {count} values; a vector observation holds at most "
                                 f"{VECTOR_WIDTH} (set vector_observations: false for this dataset)")
        vector = vector_values + vector_codes > 0
        layout = cls(
            continuous_obs=1 if vector else continuous, discrete_obs=0 if vector else discrete,
            patches=patches_per_image(image) if image else 0, image_shape=tuple(image) if image else None,
            has_text=OBS_TEXT in spec.observation,
            continuous_act=width(spec.action, ACT_CONTINUOUS), discrete_act=width(spec.action, ACT_DISCRETE),
            vector_values=vector_values, vector_codes=vector_codes,
        )
        if layout.fixed_observation_tokens > MAX_LOCAL_POSITIONS:
            raise ValueError(f"an observation of {layout.fixed_observation_tokens} tokens exceeds "
                             f"{MAX_LOCAL_POSITIONS} local positions")
        return layout

    @staticmethod
    def vector_for(task: str, spec: TaskSpec, vector_observations: bool, token_observations=()) -> bool:
        """Whether ``task``'s observations are vector tokens: ``vector_observations`` unless its
        domain or its id is in ``token_observations`` (those keep a token per value)."""
        return vector_observations and spec.domain not in token_observations and task not in token_observations

    @property
    def image_start(self) -> int:
        """Offset of the first patch token inside a timestep."""
        return self.continuous_obs + self.discrete_obs

    @property
    def fixed_observation_tokens(self) -> int:
        return self.continuous_obs + self.discrete_obs + self.patches

    @property
    def action_tokens(self) -> int:
        return self.continuous_act + self.discrete_act

    @property
    def min_step_tokens(self) -> int:
        """Tokens of a timestep with empty text: observation, separator, action."""
        return self.fixed_observation_tokens + 1 + self.action_tokens


@dataclass
class StepTokens:
    """A run of T timesteps as flat token arrays (int32/int16 to keep caches small).

    ``step_offsets[t]`` is where timestep t starts; patch tokens of step t sit at
    ``step_offsets[t] + layout.image_start + p`` and their pixels are patch p of ``frames[t]``
    (the frames as read, uncut: ``trainer.patches.cut_patches`` cuts them where they are
    needed, straight into a batch's memory).
    """

    tokens: np.ndarray          # (N,) int32
    loss_mask: np.ndarray       # (N,) bool: action and text tokens
    local_positions: np.ndarray  # (N,) int16, -1 on separator and action tokens
    step_offsets: np.ndarray    # (T + 1,) int64
    frames: np.ndarray | None   # (T, H, W, C) uint8
    layout: StepLayout
    vectors: np.ndarray | None = None  # (T, layout.vector_values) float32 and
    codes: np.ndarray | None = None    # (T, layout.vector_codes) int16: what step t's VECTOR_OBSERVATION
    # token carries; it is the first token of the step (at step_offsets[t])

    @property
    def num_steps(self) -> int:
        return len(self.step_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.step_offsets[-1])

    def vectors_in(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The VECTOR_OBSERVATION tokens of tokens [start, end) (``start`` on a timestep): their
        positions relative to ``start``, their (n, vector_values) floats and (n, vector_codes) codes."""
        if self.layout.vector_values + self.layout.vector_codes == 0:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int16)
        first = int(np.searchsorted(self.step_offsets, start, side="left"))
        last = int(np.searchsorted(self.step_offsets, end, side="left"))  # steps that start before ``end``
        last = min(last, self.num_steps)
        values = self.vectors[first:last] if self.vectors is not None else np.zeros((last - first, 0), np.float32)
        codes = self.codes[first:last] if self.codes is not None else np.zeros((last - first, 0), np.int16)
        return self.step_offsets[first:last] - start, values, codes

    def dense_vectors(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(end - start, VECTOR_WIDTH) float32 and int16: each token's vector observation (its
        floats, its codes), zeros and -1 elsewhere."""
        values = np.zeros((end - start, VECTOR_WIDTH), np.float32)
        codes = np.full((end - start, VECTOR_WIDTH), -1, np.int16)
        place_vectors(self, start, end, values, codes)
        return values, codes

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.tokens, self.loss_mask, self.local_positions, self.step_offsets)) + sum(
            0 if a is None else a.nbytes for a in (self.frames, self.vectors, self.codes))


def place_vectors(steps: StepTokens, start: int, end: int, values: np.ndarray, codes: np.ndarray) -> None:
    """Write the vector observations of tokens [start, end) of ``steps`` into (end - start,
    VECTOR_WIDTH) ``values`` and ``codes`` at their tokens' rows (other rows untouched)."""
    at, floats, ints = steps.vectors_in(start, end)
    values[at, :floats.shape[1]] = floats
    codes[at, :ints.shape[1]] = ints


def tokenize_steps(steps: dict, spec: TaskSpec, text_model: TextTokenizer | None = None,
                   actions: bool = True, max_text_tokens: int = 128, layout: StepLayout | None = None,
                   buffer_for: Callable[[int], np.ndarray] | None = None) -> StepTokens:
    """Tokenize T timesteps at once (vectorized: no Python loop over tokens or values).

    ``steps`` maps shard columns to arrays with T rows, as in ``shards.Episode.steps``. With
    ``actions=False`` a timestep is its observation tokens and the separator only.
    ``buffer_for(nbytes)`` gives the memory of the token arrays and their large temporaries
    (uint8, e.g. trainer.buffers.BufferPool.take: a loader worker's recycled memory); default
    fresh memory.
    """
    new = _allocator(buffer_for)
    layout = layout or StepLayout.of(spec)
    lengths = {len(v) for k, v in steps.items() if k in spec.observation or (actions and k in spec.action)}
    if len(lengths) > 1:
        raise ValueError(f"columns have different numbers of steps: { {k: len(v) for k, v in steps.items()} }")
    t = lengths.pop() if lengths else 0
    # every timestep is a row: [observation blocks][text][separator][action blocks]; the blocks
    # are written straight into one int32 matrix, and text rows are cut to their lengths last
    obs_blocks: list[np.ndarray | int] = []   # (T, w) values, or a constant token of width 1 per patch
    vectors = codes = None
    if layout.vector_values + layout.vector_codes:  # one token carries the continuous and discrete values
        obs_blocks.append(np.broadcast_to(np.int32(VECTOR_OBSERVATION), (t, 1)))
        if layout.vector_values:
            vectors = _vector_values(_column(steps, OBS_CONTINUOUS, t).reshape(t, -1), layout.vector_values, new)
        if layout.vector_codes:
            codes = _vector_codes(_column(steps, OBS_DISCRETE, t).reshape(t, -1), layout.vector_codes, new)
    for column in OBS_COLUMNS:
        if column not in spec.observation or column == OBS_TEXT:
            continue
        if column in (OBS_CONTINUOUS, OBS_DISCRETE) and layout.vector_values + layout.vector_codes:
            continue
        values = _column(steps, column, t)
        if column == OBS_CONTINUOUS:
            block = encode_continuous(values.reshape(t, -1))
        elif column == OBS_DISCRETE:
            block = _checked_discrete(values.reshape(t, -1))
        else:  # pixels stay in ``frames``; patch tokens are placeholders
            block = np.broadcast_to(np.int32(IMAGE_PLACEHOLDER), (t, layout.patches))
        if column != OBS_IMAGE:
            _check_width(column, block, spec.observation[column].shape)
        obs_blocks.append(block)
    text_ids, text_lengths = None, None
    if layout.has_text:
        text_ids, text_lengths = _text_block(_column(steps, OBS_TEXT, t), t, text_model, text_cap(layout, max_text_tokens))
    action_blocks: list[np.ndarray] = []
    if actions:
        for column in ACT_COLUMNS:
            if column not in spec.action:
                continue
            values = _column(steps, column, t).reshape(t, -1)
            block = encode_continuous(values) if column == ACT_CONTINUOUS else _checked_discrete(values)
            _check_width(column, block, spec.action[column].shape)
            action_blocks.append(block)
    obs_width = sum(b.shape[1] for b in obs_blocks)
    width_text = 0 if text_ids is None else text_ids.shape[1]
    n_action = 1 + sum(b.shape[1] for b in action_blocks)
    width = obs_width + width_text + n_action
    matrix = new((t, width), np.int32)
    at = 0
    for block in obs_blocks + ([text_ids] if text_ids is not None else []):
        matrix[:, at:at + block.shape[1]] = block
        at += block.shape[1]
    matrix[:, at] = SEPARATOR
    at += 1
    for block in action_blocks:
        matrix[:, at:at + block.shape[1]] = block
        at += block.shape[1]
    row_loss = np.zeros(width, bool)
    row_loss[obs_width:obs_width + width_text] = True
    row_loss[obs_width + width_text + 1:] = True  # actions (not the separator)
    row_local = np.full(width, -1, np.int16)
    row_local[:obs_width + width_text] = np.arange(obs_width + width_text)
    loss_mask, local = new((t, width), np.bool_), new((t, width), np.int16)
    loss_mask[...] = row_loss
    local[...] = row_local
    offsets = np.zeros(t + 1, dtype=np.int64)
    if text_ids is None:
        tokens, loss_mask, local = matrix.reshape(-1), loss_mask.reshape(-1), local.reshape(-1)
        offsets[1:] = np.arange(1, t + 1) * width
    else:  # each row cut to its text's length: the rows' kept cells, in order
        valid = new((t, width), np.bool_)
        valid[...] = True
        np.less(np.arange(width_text)[None, :], text_lengths[:, None], out=valid[:, obs_width:obs_width + width_text])
        np.cumsum(obs_width + n_action + text_lengths, out=offsets[1:])
        tokens, loss_mask, local = _keep_cells(valid, offsets, new, matrix, loss_mask, local)
    frames = _frames(steps[OBS_IMAGE], t, layout.image_shape) if layout.patches else None
    return StepTokens(tokens=tokens, loss_mask=loss_mask, local_positions=local, step_offsets=offsets,
                      frames=frames, layout=layout, vectors=vectors, codes=codes)


# ----------------------------------------------------------------------------- deployment

@dataclass
class ObservationTokens:
    """One observation ready for the model; ``tokens`` ends with SEPARATOR, so the next
    tokens to produce are the action tokens (``action_token_count(spec)`` of them)."""

    tokens: np.ndarray           # (n,) int64
    local_positions: np.ndarray  # (n,) int64, -1 on the separator
    is_image: np.ndarray         # (n,) bool
    patches: np.ndarray          # (P, 4, 16, 16) float32 in [-1, 1] / 4, channels zero-padded to 4
    patch_rows: np.ndarray       # (P, 2) float32
    patch_cols: np.ndarray       # (P, 2) float32
    text_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (n,) bool: text tokens
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, VECTOR_WIDTH), np.float32))
    """(n, VECTOR_WIDTH) float32: the raw values at a VECTOR_OBSERVATION token, zeros elsewhere"""
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, VECTOR_WIDTH), np.int16))
    """(n, VECTOR_WIDTH) int16: the discrete values at a VECTOR_OBSERVATION token, -1 elsewhere"""


def tokenize_observation(obs: dict, spec: TaskSpec, text_model: TextTokenizer | None = None,
                         max_text_tokens: int = 128, vector_observations: bool = False) -> ObservationTokens:
    """One step's observation (shard columns: obs_continuous (d,), obs_discrete (k,),
    obs_image (H, W, C) uint8 or its raw bytes, obs_text str) -> tokens plus the separator,
    exactly as the data path tokenizes that step."""
    missing = [c for c in spec.observation if c not in obs]
    if missing:
        raise ValueError(f"observation lacks column(s) {missing}; the task spec has {list(spec.observation)}")
    steps = {}
    for column in spec.observation:
        value = obs[column]
        if column == OBS_TEXT:
            steps[column] = [value]
        elif column == OBS_IMAGE and isinstance(value, (bytes, bytearray, memoryview)):
            steps[column] = np.frombuffer(value, dtype=np.uint8).reshape(1, *spec.image_shape)
        else:
            steps[column] = np.asarray(value)[None]
    run = tokenize_steps(steps, spec, text_model, actions=False, max_text_tokens=max_text_tokens,
                         layout=StepLayout.of(spec, vector_observations))
    tokens = run.tokens.astype(np.int64)
    is_image = tokens == IMAGE_PLACEHOLDER
    if run.frames is not None:
        patches = normalize_patches(cut_patches(run.frames)[0])
        rows, cols = patch_intervals(run.layout.image_shape[:2])
    else:
        patches = np.zeros((0, MAX_CHANNELS, PATCH_SIZE, PATCH_SIZE), np.float32)
        rows = cols = np.zeros((0, 2), np.float32)
    return ObservationTokens(tokens=tokens, local_positions=run.local_positions.astype(np.int64), is_image=is_image,
                             patches=patches, patch_rows=rows, patch_cols=cols, text_mask=run.loss_mask.copy(),
                             **dict(zip(("vectors", "codes"), run.dense_vectors(0, len(tokens)))))


def action_token_count(spec: TaskSpec) -> int:
    """How many tokens one action of this task takes (continuous first, then discrete)."""
    return StepLayout.of(spec).action_tokens


def action_token_ranges(spec: TaskSpec) -> np.ndarray:
    """(A, 2) int64 [low, high) token ids allowed at each action position, in order: lets a
    sampler mask the logits to valid action tokens."""
    ranges = []
    for column in ACT_COLUMNS:
        if column not in spec.action:
            continue
        mod = spec.action[column]
        count = int(np.prod(mod.shape))
        if column == ACT_CONTINUOUS:
            ranges += [(CONTINUOUS_OFFSET, CONTINUOUS_OFFSET + CONTINUOUS_BINS)] * count
        else:
            high = min(int(mod.n), DISCRETE_VALUES) if mod.n else DISCRETE_VALUES
            ranges += [(0, high)] * count
    return np.asarray(ranges, dtype=np.int64).reshape(-1, 2)


def encode_action(action: dict, spec: TaskSpec) -> np.ndarray:
    """An action (dict of act_* columns) -> its int64 tokens, as the data path writes them."""
    parts = []
    for column in ACT_COLUMNS:
        if column not in spec.action:
            continue
        if column not in action:
            raise ValueError(f"action lacks column {column!r}; the task spec has {list(spec.action)}")
        values = np.asarray(action[column]).reshape(-1)
        parts.append(encode_continuous(values) if column == ACT_CONTINUOUS else encode_discrete(values))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def decode_action(tokens: np.ndarray, spec: TaskSpec) -> dict[str, np.ndarray]:
    """Action tokens -> {column: array of the spec's shape}. Continuous values are bin centres
    clipped to the spec's [low, high] when it gives them; discrete values are clipped to
    [0, n) so a sampled out-of-range id still gives a legal action."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    expected = action_token_count(spec)
    if tokens.size != expected:
        raise ValueError(f"decode_action: got {tokens.size} tokens, the action spec {list(spec.action)} needs {expected}")
    result: dict[str, np.ndarray] = {}
    start = 0
    for column in ACT_COLUMNS:
        if column not in spec.action:
            continue
        mod = spec.action[column]
        count = int(np.prod(mod.shape))
        chunk = tokens[start:start + count]
        start += count
        if column == ACT_CONTINUOUS:
            values = decode_continuous(np.clip(chunk, CONTINUOUS_OFFSET, CONTINUOUS_OFFSET + CONTINUOUS_BINS - 1))
            if mod.low is not None and mod.high is not None:
                values = np.clip(values, np.asarray(mod.low, np.float32), np.asarray(mod.high, np.float32))
        else:
            high = (int(mod.n) if mod.n else DISCRETE_VALUES) - 1
            values = np.clip(chunk, 0, high).astype(np.int32)
        result[column] = values.reshape(mod.shape)
    return result


# ----------------------------------------------------------------------------- helpers

KEEP_CELLS = 32768
"""cells compacted at a time by ``_keep_cells``: the chunk's temporaries stay small enough
(<= 128 KB an array) for the allocator to hand the same memory back each time, not fresh pages"""


def _keep_cells(valid: np.ndarray, offsets: np.ndarray, new, *arrays: np.ndarray) -> list[np.ndarray]:
    """The cells of each (T, width) array where ``valid``, row by row, into new flat arrays.
    A chunk of rows at a time, by a 1-D boolean index of the chunk (numpy copies the kept
    cells straight, ~1.8x faster than ``np.take`` with an int64 index of them, which
    ``np.compress`` and a 2-D boolean index build first)."""
    rows, width = valid.shape
    outs = [new((int(offsets[-1]),), a.dtype) for a in arrays]
    step = max(1, KEEP_CELLS // max(width, 1))
    for first in range(0, rows, step):
        last = min(rows, first + step)
        keep = valid[first:last].reshape(-1)
        for array, out in zip(arrays, outs):
            out[offsets[first]:offsets[last]] = array[first:last].reshape(-1)[keep]
    return outs


def _allocator(buffer_for: Callable[[int], np.ndarray] | None) -> Callable[[tuple[int, ...], type], np.ndarray]:
    """``new(shape, dtype)``: an uninitialized array, in ``buffer_for``'s memory when given."""
    if buffer_for is None:
        return np.empty

    def new(shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.ndarray(shape, dtype, buffer_for(math.prod(shape) * dtype.itemsize))

    return new


def _column(steps: dict, column: str, t: int):
    if column not in steps:
        raise ValueError(f"steps lack column {column!r} that the task spec declares")
    values = steps[column]
    return values if column == OBS_TEXT else np.asarray(values)


def _vector_values(values: np.ndarray, width: int, new) -> np.ndarray:
    """(T, width) float32 of a vector observation's raw values; NaN or inf raise like encode_continuous."""
    if values.shape[1] != width:
        raise ValueError(f"obs_continuous has {values.shape[1]} values per step; the task spec declares {width}")
    out = new(values.shape, np.float32)
    out[...] = values
    finite = np.isfinite(out)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(-1))
        raise ValueError(f"obs_continuous: {bad.size} non-finite value(s) (first {out.reshape(-1)[bad[0]]} at flat "
                         f"index {bad[0]}); expected finite floats")
    return out


def _vector_codes(values: np.ndarray, width: int, new) -> np.ndarray:
    """(T, width) int16 of a vector observation's discrete values, checked to be in [0, VECTOR_CODE_VALUES)."""
    if values.shape[1] != width:
        raise ValueError(f"obs_discrete has {values.shape[1]} values per step; the task spec declares {width}")
    checked = _checked_discrete(values)
    if checked.size and checked.max() >= VECTOR_CODE_VALUES:
        raise ValueError(f"obs_discrete: value {checked.max()} is outside [0, {VECTOR_CODE_VALUES}), the values a "
                         "vector observation embeds (set vector_observations: false for this dataset)")
    out = new(values.shape, np.int16)
    out[...] = checked
    return out


def _check_width(column: str, block: np.ndarray, shape: list[int]) -> None:
    expected = int(np.prod(shape))
    if block.shape[1] != expected:
        raise ValueError(f"{column}: {block.shape[1]} values per step, the task spec's shape {list(shape)} gives {expected}")


def _text_block(texts, t: int, text_model: TextTokenizer | None, max_text_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step text ids as a right-padded (T, width) matrix plus each step's length."""
    if text_model is None:
        raise ValueError("the task has obs_text but no text model was given; fit one with "
                         "`python -m trainer.tokenizer fit ROOT --out text.model`")
    index, unique = _distinct_strings(texts, t)
    encoded = [text_model.encode(s)[:max_text_tokens] for s in unique]
    width = max((len(e) for e in encoded), default=0)
    table = np.zeros((len(encoded), width), dtype=np.int64)
    lengths = np.zeros(len(encoded), dtype=np.int64)
    for row, ids in enumerate(encoded):  # one row per distinct string, not per token
        table[row, :len(ids)] = ids
        lengths[row] = len(ids)
    return table[index], lengths[index]


def _distinct_strings(texts, t: int) -> tuple[np.ndarray, list[str]]:
    """(index of each step's string in the list, the distinct strings); None counts as "".
    Takes a list or an Arrow string column (encoded by Arrow: no Python string per step)."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        column = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
        encoded = pc.dictionary_encode(pc.fill_null(column, ""))
        return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()
    unique: dict[str, int] = {}
    index = np.fromiter((unique.setdefault(s or "", len(unique)) for s in texts), dtype=np.int64, count=t)
    return index, list(unique)


def text_token_lengths(texts, text_model: TextTokenizer | None, layout: StepLayout, max_text_tokens: int = 128) -> np.ndarray:
    """Number of text tokens of each step's string, as tokenize_steps counts them."""
    return _text_block(texts, len(texts), text_model, text_cap(layout, max_text_tokens))[1]


def text_cap(layout: StepLayout, max_text_tokens: int) -> int:
    """Text tokens kept per step: at most ``max_text_tokens``, and few enough that local
    positions stay below MAX_LOCAL_POSITIONS."""
    return min(max_text_tokens, MAX_LOCAL_POSITIONS - layout.fixed_observation_tokens)


def _frames(images, t: int, shape: tuple[int, ...]) -> np.ndarray:
    frames = np.asarray(images)
    if frames.dtype != np.uint8:
        raise ValueError(f"obs_image must be uint8 pixels, got {frames.dtype}")
    if frames.shape[1:] != tuple(shape):
        if frames.size != t * int(np.prod(shape)):
            raise ValueError(f"obs_image frames have shape {frames.shape[1:]}, the task spec says {list(shape)}")
        frames = frames.reshape(t, *shape)
    return frames


# ----------------------------------------------------------------------------- CLI

@dataclass
class FitCommand:
    """Fit a SentencePiece text model on the obs_text strings of one or more datasets."""

    roots: tyro.conf.Positional[list[str]]
    """dataset roots (local paths or URIs)"""
    out: str
    """where to write the .model file"""
    vocab_size: int = TEXT_VOCAB_SIZE
    """upper bound on pieces; SentencePiece stops earlier when the corpus is small"""
    model_type: str = "bpe"
    """SentencePiece model type: bpe or unigram (on a small corpus unigram keeps only characters)"""
    json: bool = False
    """print the summary as JSON"""


@dataclass
class LayoutCommand:
    """Print the token layout (which ids mean what)."""

    json: bool = False
    """print the table as JSON"""


def main(argv: list[str] | None = None) -> int:
    from shards.console import print_table

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = tyro.cli(Union[Annotated[FitCommand, tyro.conf.subcommand("fit")],
                             Annotated[LayoutCommand, tyro.conf.subcommand("layout")]], args=argv)
    try:
        if isinstance(command, FitCommand):
            from trainer.text_tokenizer import fit_text_model

            summary = fit_text_model(command.roots, command.out, command.vocab_size, command.model_type)
            print_table([summary], title="text model", as_json=command.json)
        else:
            rows = [{"name": k, "value": str(v)} for k, v in vars(LAYOUT).items()]
            print_table(rows, title="token layout", as_json=command.json)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "CONTINUOUS_OFFSET", "DISCRETE_VALUES", "IMAGE_PLACEHOLDER", "LAYOUT", "MAX_CHANNELS", "PAD", "SEPARATOR",
    "VECTOR_CODE_VALUES", "VECTOR_OBSERVATION", "VECTOR_WIDTH", "place_vectors",
    "VOCAB_SIZE", "ObservationTokens", "StepLayout", "StepTokens", "TextTokenizer", "TokenLayout",
    "action_token_count", "action_token_ranges", "decode_action", "decode_continuous", "encode_action",
    "encode_continuous", "encode_discrete", "image_to_patches", "tokenize_observation", "tokenize_steps",
]

if __name__ == "__main__":
    sys.exit(main())
