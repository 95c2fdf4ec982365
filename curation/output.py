"""Writing a selection as a dataset root: a view over SRC's step files, or a compact copy.

    from curation.output import write_selection
    write_selection(selection, src_root, manifest, report=write_report)

A local DST is built in a hidden sibling folder and renamed into place, so DST either is
the complete new dataset or is untouched; with ``--overwrite`` the old DST is swapped out
only after the new one is complete. A remote DST (a URI) gets its files one by one through
shards' atomic writes, dataset.json last.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from curation.select import CurationError, Selection
from shards import INDEX_FILE, MANIFEST_FILE, Dataset, Manifest, Root, index_table, write_index, write_manifest
from shards.writer import write_step_files

logger = logging.getLogger(__name__)


def check_destination(src: Root, out: str, overwrite: bool) -> Root:
    """DST as a Root, refusing anything that could touch SRC or silently replace data."""
    dst = Root.of(out)
    if dst.is_local and src.is_local:
        s, d = os.path.realpath(src.base), os.path.realpath(dst.base)
        if d == s or d.startswith(s + os.sep):
            raise CurationError(f"--out {out} is SRC or inside it; SRC is never written to: choose another --out")
        if s.startswith(d + os.sep):
            raise CurationError(f"--out {out} contains SRC {src.uri}; choose another --out")
    elif dst.uri.rstrip("/") == src.uri.rstrip("/") or dst.uri.startswith(src.uri.rstrip("/") + "/"):
        raise CurationError(f"--out {out} is SRC or inside it; SRC is never written to: choose another --out")
    if not overwrite and _occupied(dst):
        raise CurationError(f"--out {out} already exists; pass --overwrite to replace it")
    return dst


def check_not_referenced(dst: Root, index: pa.Table) -> None:
    """Refuse to replace a DST that holds step files SRC's index points at (SRC is a view of it)."""
    if not (dst.is_local and os.path.lexists(dst.base)):
        return
    inside = os.path.realpath(dst.base) + os.sep
    for chunk in index["file"].chunks:
        names = (chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk.unique()).to_pylist()
        used = [n for n in names if n.startswith("/") and os.path.realpath(n).startswith(inside)]
        if used:
            raise CurationError(f"--out {dst.uri} holds step files SRC refers to (e.g. {used[0]}); "
                                "replacing it would destroy SRC's episodes: choose another --out")


def write_selection(selection: Selection, src: Root, manifest: Manifest, dst: Root,
                    report: Callable[[Selection, Root], None] | None = None) -> None:
    """Write DST: index, dataset.json (with lineage and reference returns), optional report."""
    kept_index = selection.kept_index()
    out_manifest = output_manifest(selection, src, manifest)
    with staged_root(dst) as stage:
        if selection.config.materialize:
            _materialize(src, manifest, kept_index, stage)
        else:
            table = kept_index.set_column(kept_index.schema.get_field_index("file"), "file",
                                          absolute_files(kept_index["file"], src))
            write_index(stage, table)
        if report is not None:
            report(selection, stage)
        write_manifest(stage, out_manifest)


def output_manifest(selection: Selection, src: Root, manifest: Manifest) -> Manifest:
    """SRC's task specs for the tasks that keep episodes, with expert and random returns set."""
    kept = np.bincount(selection.task_code[selection.keep], minlength=len(selection.tasks))
    tasks = {}
    for code, task in enumerate(selection.tasks):
        if not kept[code]:
            continue
        spec = copy.deepcopy(manifest.tasks[task])
        spec.expert_return = float(selection.task_expert[code])
        spec.random_return = selection.random_return[code]
        tasks[task] = spec
    return Manifest(name=f"{manifest.name}-curated", tasks=tasks, extra=copy.deepcopy(manifest.extra),
                    lineage=selection.lineage(src.uri, manifest.lineage))


def absolute_files(files: pa.ChunkedArray, src: Root) -> pa.ChunkedArray:
    """SRC-relative ``file`` values -> absolute paths or URIs, dictionary-encoded (only the
    few distinct values are rewritten)."""
    chunks = []
    for chunk in files.chunks:
        encoded = chunk if pa.types.is_dictionary(chunk.type) else chunk.dictionary_encode()
        names = pa.array([_absolute(name, src) for name in encoded.dictionary.to_pylist()], pa.string())
        chunks.append(pa.DictionaryArray.from_arrays(encoded.indices, names))
    return pa.chunked_array(chunks, pa.dictionary(pa.int32(), pa.string()))


@contextlib.contextmanager
def staged_root(dst: Root) -> Iterator[Root]:
    """Yield a Root to write into; on success it becomes DST (replacing an old one)."""
    if not dst.is_local:
        yield dst
        return
    final = dst.base
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    stage = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}-{name}")
    os.makedirs(stage)
    try:
        yield Root.of(stage)
        if os.path.lexists(final):
            trash = os.path.join(parent, f".trash-{uuid.uuid4().hex[:8]}-{name}")
            os.replace(final, trash)
            os.replace(stage, final)
            if os.path.isdir(trash) and not os.path.islink(trash):
                shutil.rmtree(trash)
            else:
                os.remove(trash)
        else:
            os.replace(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _occupied(dst: Root) -> bool:
    if dst.is_local:
        path = dst.base
        return os.path.lexists(path) and not (os.path.isdir(path) and not os.listdir(path))
    return dst.exists(MANIFEST_FILE) or dst.exists(INDEX_FILE)


def _absolute(name: str, src: Root) -> str:
    if "://" in name or name.startswith("/"):
        return name  # SRC is itself a view
    return os.path.join(src.base, name) if src.is_local else f"{src.uri}/{name}"


def _materialize(src: Root, manifest: Manifest, kept_index: pa.Table, stage: Root) -> None:
    """Copy the kept episodes into one step file per task; the index keeps collection order."""
    dataset = Dataset(src)
    dataset.__dict__["manifest"] = manifest
    position = {eid: i for i, eid in enumerate(kept_index["episode_id"].to_pylist())}
    episodes = dataset.iter_episodes(episode_ids=list(position))
    progress = tqdm(episodes, total=len(position), desc="materialize", unit="ep", leave=False)
    rows = write_step_files(stage, progress, manifest)
    rows.sort(key=lambda row: position[row["episode_id"]])
    write_index(stage, index_table(rows))
