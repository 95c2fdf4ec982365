"""The GatoForge on-disk format, version 1: column names, Arrow schemas and layout.

This module is the single source of truth for the format; docs/format.md explains it for
people who write datasets with plain pyarrow.

    ROOT/dataset.json                    manifest (format version, tasks, specs, provenance)
    ROOT/episodes.parquet                the episode index, one row per episode
    ROOT/data/<task>/<name>.parquet      step rows, one episode's rows contiguous, in order
    ROOT/README.md                       generated dataset card

A task id contains a slash (``babyai/GoToLocal``), so ``data/<task>/`` is two folders deep.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

FORMAT_VERSION = 1

MANIFEST_FILE = "dataset.json"
INDEX_FILE = "episodes.parquet"
CARD_FILE = "README.md"
DATA_DIR = "data"

SOURCES = ("training", "rollout", "scripted", "random")

# Optional per-step modality columns, in the order they appear in a step file.
OBS_CONTINUOUS = "obs_continuous"
OBS_DISCRETE = "obs_discrete"
OBS_IMAGE = "obs_image"
OBS_TEXT = "obs_text"
ACT_CONTINUOUS = "act_continuous"
ACT_DISCRETE = "act_discrete"

MODALITY_TYPES: dict[str, pa.DataType] = {
    OBS_CONTINUOUS: pa.list_(pa.float32()),
    OBS_DISCRETE: pa.list_(pa.int32()),
    OBS_IMAGE: pa.binary(),
    OBS_TEXT: pa.string(),
    ACT_CONTINUOUS: pa.list_(pa.float32()),
    ACT_DISCRETE: pa.list_(pa.int32()),
}
OBS_COLUMNS = (OBS_CONTINUOUS, OBS_DISCRETE, OBS_IMAGE, OBS_TEXT)
ACT_COLUMNS = (ACT_CONTINUOUS, ACT_DISCRETE)

# Columns every step file has, around the modality columns.
STEP_HEAD: list[pa.Field] = [pa.field("episode_id", pa.int64()), pa.field("step", pa.int32())]
STEP_TAIL: list[pa.Field] = [
    pa.field("reward", pa.float32()),
    pa.field("terminated", pa.bool_()),
    pa.field("truncated", pa.bool_()),
]

INDEX_SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.int64()),
        pa.field("task", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("run_index", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("policy_steps", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("return", pa.float64()),
        pa.field("length", pa.int64()),
        pa.field("success", pa.bool_()),  # nullable: not every task defines success
        pa.field("success_step", pa.int64()),  # nullable: first step reporting success (None: never or not recorded)
        pa.field("file", pa.string()),
        pa.field("row_offset", pa.int64()),
    ]
)

# Index columns added after format version 1 first shipped: an index without them reads as all-null.
OPTIONAL_INDEX_COLUMNS = ("success_step",)


def conform_index(table: pa.Table) -> pa.Table:
    """``table`` in INDEX_SCHEMA's column order and types (see ``with_optional_columns``)."""
    return with_optional_columns(table).select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


def with_optional_columns(table: pa.Table) -> pa.Table:
    """``table`` with any missing optional index column added as nulls, so indexes and fragments
    written before that column existed stay readable."""
    for name in OPTIONAL_INDEX_COLUMNS:
        if name not in table.column_names:
            field = INDEX_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table


# Rows per row group are chosen so one group holds roughly this many bytes.
TARGET_ROW_GROUP_BYTES = 4 << 20


def step_schema(modalities: list[str] | tuple[str, ...]) -> pa.Schema:
    """Schema of a step file holding ``modalities`` (a subset of MODALITY_TYPES)."""
    unknown = [m for m in modalities if m not in MODALITY_TYPES]
    if unknown:
        raise ValueError(f"unknown modality column(s) {unknown}; expected some of {list(MODALITY_TYPES)}")
    ordered = [m for m in MODALITY_TYPES if m in modalities]
    return pa.schema(STEP_HEAD + [pa.field(m, MODALITY_TYPES[m]) for m in ordered] + STEP_TAIL)


def episode_id_for(task: str, run_id: str, run_index: int) -> int:
    """A stable, positive int64 id, so a resumed collection reproduces the same ids."""
    digest = hashlib.blake2b(f"{task}\0{run_id}\0{run_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def domain_of(task: str) -> str:
    """``metaworld/reach-v3`` -> ``metaworld``."""
    return task.split("/", 1)[0]


def step_file_path(task: str, name: str) -> str:
    """Path of a step file relative to the dataset root."""
    return f"{DATA_DIR}/{task}/{name}.parquet"
