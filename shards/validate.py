"""Check a dataset root for every kind of inconsistency, reporting all problems at once."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.format import INDEX_FILE, MANIFEST_FILE, OBS_IMAGE, SOURCES, step_schema
from shards.manifest import Manifest, manifest_problems
from shards.reader import Dataset, ShardError, iter_file_slices, open_parquet
from shards.storage import Root

RETURN_TOLERANCE = 1e-3


def validate(root: str | Root) -> list[str]:
    """All problems found under ``root``; an empty list means the dataset is consistent."""
    root = Root.of(root)
    problems: list[str] = []
    manifest = _check_manifest(root, problems)
    dataset = Dataset(root)
    try:
        index = dataset.index
    except ShardError as error:
        return problems + [str(error)]
    problems += _check_index(index, manifest, root)
    if manifest is None:
        return problems
    dataset.__dict__["manifest"] = manifest
    by_file: dict[str, list[dict]] = defaultdict(list)
    for row in index.to_pylist():
        by_file[row["file"]].append(row)
    for file, rows in by_file.items():
        problems += _check_file(dataset, manifest, file, rows)
    return problems


def _check_manifest(root: Root, problems: list[str]) -> Manifest | None:
    where = root.path(MANIFEST_FILE)
    if not root.exists(MANIFEST_FILE):
        problems.append(f"{where}: not found")
        return None
    try:
        data = json.loads(root.read_bytes(MANIFEST_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{where}: not valid JSON ({error})")
        return None
    found = manifest_problems(data, where)
    problems += found
    return None if found else Manifest.from_dict(data, where)


def _check_index(index: pa.Table, manifest: Manifest | None, root: Root) -> list[str]:
    where = root.path(INDEX_FILE)
    problems = []
    ids = index["episode_id"]
    counts = pc.value_counts(ids)
    dupes = [c["values"] for c in counts.to_pylist() if c["counts"] > 1]
    if dupes:
        problems.append(f"{where}: {len(dupes)} duplicate episode_id(s), e.g. {dupes[:3]}")
    for column in ("episode_id", "task", "run_id", "run_index", "source", "return", "length", "file", "row_offset"):
        nulls = index[column].null_count
        if nulls:
            problems.append(f"{where}: column {column} has {nulls} null value(s)")
    bad_sources = set(index["source"].to_pylist()) - set(SOURCES) - {None}
    if bad_sources:
        problems.append(f"{where}: unknown source value(s) {sorted(bad_sources)}; expected {SOURCES}")
    if manifest is not None:
        unknown = set(index["task"].to_pylist()) - set(manifest.tasks) - {None}
        if unknown:
            problems.append(f"{where}: task(s) {sorted(unknown)} are not in {MANIFEST_FILE}")
    returns = index["return"].to_numpy(zero_copy_only=False)
    if not np.isfinite(returns).all():
        problems.append(f"{where}: column return has NaN or inf")
    lengths = index["length"].to_numpy(zero_copy_only=False)
    if (lengths < 0).any():
        problems.append(f"{where}: negative episode length(s)")
    success_step = index["success_step"].fill_null(0).to_numpy(zero_copy_only=False)
    outside = (success_step < 0) | ((success_step >= lengths) & (lengths > 0))
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        problems.append(f"{where}: {int(outside.sum())} success_step value(s) outside [0, length), e.g. episode "
                        f"{index['episode_id'][first].as_py()}: success_step {int(success_step[first])}, "
                        f"length {int(lengths[first])}")
    return problems


def _check_file(dataset: Dataset, manifest: Manifest, file: str, rows: list[dict]) -> list[str]:
    fs, path = dataset.resolve(file)
    task = rows[0]["task"]
    spec = manifest.tasks.get(task)
    if spec is None:
        return []  # already reported by the index check
    try:
        parquet = open_parquet(fs, path)
    except ShardError as error:
        return [f"{error} (referenced by {len(rows)} episode(s) of {task})"]
    problems = []
    expected = step_schema(spec.modalities)
    actual = parquet.schema_arrow
    for field in expected:
        if field.name not in actual.names:
            problems.append(f"{path}: missing column {field.name} ({field.type}) required by {task}'s spec")
        elif not actual.field(field.name).type.equals(field.type):
            problems.append(f"{path}: column {field.name} is {actual.field(field.name).type}, expected {field.type}")
    if problems:
        return problems
    rows = sorted(rows, key=lambda r: r["row_offset"])
    total = parquet.metadata.num_rows
    covered = 0
    previous_end = 0
    for row in rows:
        if row["row_offset"] < previous_end:
            problems.append(f"{path}: episode {row['episode_id']} overlaps the previous episode's rows")
        previous_end = row["row_offset"] + row["length"]
        covered += row["length"]
        if previous_end > total:
            problems.append(f"{path}: episode {row['episode_id']} needs rows up to {previous_end}, file has {total}")
    if problems:
        return problems
    if manifest.lineage is None and covered != total:
        problems.append(f"{path}: index covers {covered} rows, file has {total} (rows with no episode)")
    spans = [(r["row_offset"], r["length"]) for r in rows]
    try:
        for row, table in iter_file_slices(fs, path, spans, rows):
            problems += _check_episode_rows(path, row, table, spec)
    except ShardError as error:
        problems.append(str(error))
    return problems


def _check_episode_rows(path: str, row: dict, table: pa.Table, spec) -> list[str]:
    where = f"{path}: episode {row['episode_id']}"
    problems = []
    ids = table["episode_id"].to_numpy()
    if (ids != row["episode_id"]).any():
        problems.append(f"{where}: step rows at offset {row['row_offset']} carry episode_id {ids[ids != row['episode_id']][0]}")
    steps = table["step"].to_numpy()
    if not np.array_equal(steps, np.arange(len(steps))):
        problems.append(f"{where}: steps out of order (expected 0..{len(steps) - 1})")
    for part in (spec.observation, spec.action):
        for column, mod in part.items():
            width = int(np.prod(mod.shape)) if mod.shape else 1
            values = table[column].combine_chunks()
            if column == OBS_IMAGE:
                sizes = pc.binary_length(values).to_numpy(zero_copy_only=False)
            elif pa.types.is_list(values.type):
                sizes = pc.list_value_length(values).to_numpy(zero_copy_only=False)
                flat = values.flatten().to_numpy(zero_copy_only=False)
                if flat.dtype.kind == "f" and not np.isfinite(flat).all():
                    problems.append(f"{where}: {column} has NaN or inf")
                if mod.n is not None and flat.dtype.kind == "i" and flat.size and (flat.min() < 0 or flat.max() >= mod.n):
                    problems.append(f"{where}: {column} values outside [0, {mod.n})")
            else:
                continue
            if (sizes != width).any():
                problems.append(f"{where}: {column} has rows of size {int(sizes[sizes != width][0])}, expected {width} (shape {mod.shape})")
    rewards = table["reward"].to_numpy()
    if not np.isfinite(rewards).all():
        problems.append(f"{where}: reward has NaN or inf")
    elif abs(float(rewards.astype(np.float64).sum()) - row["return"]) > RETURN_TOLERANCE * max(1.0, abs(row["return"])):
        problems.append(f"{where}: index return {row['return']:.4f} != sum of rewards {rewards.sum():.4f}")
    return problems
