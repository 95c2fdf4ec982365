"""The loader's memory reuse: recycled buffers, image row groups decoded in batches into one,
a worker's ring arena mapped in one call."""

from __future__ import annotations

import os
import resource

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import Episode, ModalitySpec, StepFileWriter
from trainer.buffers import BufferPool
from trainer.catalog import CACHED_ROW_GROUPS, IMAGE_BATCH_ROWS, read_image_row_group


def test_buffer_pool_hands_out_a_buffer_again_only_when_nothing_uses_it():
    pool = BufferPool(keep_bytes=1000)
    first = pool.take(400)
    first[:] = 7
    address = first.ctypes.data
    view = first[10:20]
    arrow = pa.py_buffer(first)  # an Arrow buffer over the memory keeps it taken too
    del first
    other = pool.take(300)
    assert other.ctypes.data != address  # still used by ``view`` and ``arrow``
    del view
    another = pool.take(300)
    assert another.ctypes.data not in (address, other.ctypes.data)
    del arrow
    again = pool.take(300)  # free at last: handed out again
    assert again.ctypes.data == address and again.nbytes == 300
    del again
    assert pool.take(500).ctypes.data != address  # too small to serve 500 bytes


def test_buffer_pool_drops_free_buffers_beyond_its_budget():
    pool = BufferPool(keep_bytes=1000)
    for _ in range(5):
        pool.take(400)  # each freed right away
    assert pool.held_bytes <= 1000
    kept = [pool.take(400) for _ in range(4)]  # taken buffers are never dropped
    assert pool.held_bytes >= 1600 and len({k.ctypes.data for k in kept}) == 4


def _image_file(path, rows_per_group: int, groups: int, nulls: bool = False) -> str:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(rows_per_group * groups, 8, 8, 3), dtype=np.uint8)
    images = [f.tobytes() for f in frames]
    if nulls:
        images[3] = None
    table = pa.table({"obs_image": pa.array(images, pa.binary()), "act_discrete": pa.array(np.arange(len(images)) % 5),
                      "step": pa.array(np.arange(len(images)))})
    pq.write_table(table, path, row_group_size=rows_per_group)
    return str(path)


@pytest.mark.parametrize("rows", [1, IMAGE_BATCH_ROWS - 1, IMAGE_BATCH_ROWS, 3 * IMAGE_BATCH_ROWS + 5])
def test_image_row_group_in_batches_equals_the_plain_read(tmp_path, rows):
    parquet = pq.ParquetFile(_image_file(tmp_path / "images.parquet", rows, groups=3))
    pool = BufferPool(keep_bytes=1 << 20)
    for group in range(3):
        for columns in (["obs_image"], ["act_discrete", "obs_image"]):
            expected = parquet.read_row_group(group, columns=columns)
            got = read_image_row_group(parquet, group, columns, pool.take)
            assert got.equals(expected) and got.column_names == columns
            # the frames sit in one buffer, back to back, as binary_to_frames wants them
            assert got["obs_image"].num_chunks == 1
            data = got["obs_image"].chunk(0).buffers()[2]
            assert data.size == rows * 8 * 8 * 3


def test_image_row_group_falls_back_for_nulls_and_unequal_frames(tmp_path):
    parquet = pq.ParquetFile(_image_file(tmp_path / "nulls.parquet", 2 * IMAGE_BATCH_ROWS, groups=1, nulls=True))
    assert read_image_row_group(parquet, 0, ["obs_image"]).equals(parquet.read_row_group(0, columns=["obs_image"]))
    ragged = pa.table({"obs_image": pa.array([b"ab", b"abc", b"abcd"] * 50, pa.binary())})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    parquet = pq.ParquetFile(tmp_path / "ragged.parquet")
    assert read_image_row_group(parquet, 0, ["obs_image"]).equals(parquet.read_row_group(0, columns=["obs_image"]))


def test_loader_reuses_unit_buffers_across_units(tmp_path):
    """Decoding and tokenizing unit after unit of an image task takes no new buffers once
    earlier units are gone (4 per unit: frames, ids, positions, loss mask)."""
    from shards import Manifest, TaskSpec, index_table, write_index, write_manifest
    from trainer.catalog import Catalog

    task = "atari/breakout"
    spec = TaskSpec(domain="atari", env_id="x", observation={"obs_image": ModalitySpec([16, 16, 1], "uint8")},
                    action={"act_discrete": ModalitySpec([1], "int32", n=4)})
    root = tmp_path / "images"
    rng = np.random.default_rng(1)
    with StepFileWriter(root, task, "part-0", spec.modalities, row_group_bytes=20_000) as writer:
        for index in range(16):
            n = 100
            writer.add(Episode(task=task, steps={"obs_image": rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8),
                                                 "act_discrete": rng.integers(0, 4, (n, 1), dtype=np.int32)},
                               rewards=np.zeros(n, np.float32), terminated=np.eye(1, n, n - 1, dtype=bool)[0],
                               truncated=np.zeros(n, bool), run_id="r", run_index=index, source="training"))
    write_index(root, index_table(writer.index_rows))
    write_manifest(root, Manifest(name="images", tasks={task: spec}))
    catalog = Catalog([str(root)])
    units = catalog.units(task)
    assert len(units) == 16  # one row group each
    for unit in units:
        tokens = catalog.load_unit(task, unit)
        assert np.array_equal(tokens.steps.frames, np.stack(list(_frames_of(root, catalog, unit))))
        del tokens
    pool = catalog._buffers()
    # the frames of the row groups the catalog still caches, one more, and one unit's token
    # arrays served all 16 units (64 buffers without reuse)
    assert len(pool._buffers) <= CACHED_ROW_GROUPS + 1 + 3


def _frames_of(root, catalog, unit):
    from shards.reader import Dataset

    dataset = Dataset(str(root))
    for episode in unit:
        wanted = int(catalog.episode_id[episode])
        yield from dataset.episode(wanted).steps["obs_image"]


@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="MADV_POPULATE_READ is Linux's")
def test_worker_maps_its_ring_arena_in_one_call():
    """A forked process writing its arena after ``map_arena`` takes almost no page faults; one
    writing without it takes one per page."""
    from trainer.ring import BatchRing

    ring = BatchRing(workers=2, arena_bytes=8 << 20)
    ring.arenas[:] = 1  # the parent's pages exist, as after a first pass
    pages = ring.arena_bytes // 4096

    def faults_writing(worker: int, mapped: bool) -> int:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            if mapped:
                ring.map_arena(worker)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            ring.arenas[worker][::4096] = 2
            os.write(write, str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        os.close(write)
        return int(os.read(read, 64))

    assert faults_writing(0, mapped=False) >= pages // 2
    mapped = faults_writing(1, mapped=True)
    if mapped >= pages // 2:
        pytest.skip("this kernel has no MADV_POPULATE_READ (Linux < 5.14)")
    assert mapped < pages // 10
    assert (ring.arenas[1] == 2).sum() == pages  # what the child wrote is shared


def test_buffer_pool_carves_from_its_backing_and_records_how_far():
    backing = np.zeros(5 * 4096, np.uint8)
    mark = np.zeros(1, np.int64)
    pool = BufferPool(keep_bytes=1 << 20, backing=backing, high_water=mark)
    low, high = backing.ctypes.data, backing.ctypes.data + backing.nbytes

    first = pool.take(5000)  # two pages
    second = pool.take(4096)
    assert low <= first.ctypes.data < high and first.ctypes.data == low
    assert second.ctypes.data == low + 2 * 4096 and int(mark[0]) == 3 * 4096
    first[:] = 3
    assert (backing[:5000] == 3).all()  # the buffer is the backing's memory
    third = pool.take(3 * 4096)  # no gap of three pages is left: ordinary memory
    assert not low <= third.ctypes.data < high
    del first
    again = pool.take(4000)  # the freed buffer is reused
    assert again.ctypes.data == low
    del again, second
    big = pool.take(4 * 4096)  # free carved buffers make way for a bigger one
    assert big.ctypes.data == low and int(mark[0]) == 4 * 4096


def test_a_later_process_steps_over_batches_an_earlier_one_left_out():
    """A worker of a new pass learns from the shared flags which bytes are still lent out."""
    from trainer.ring import BatchRing

    ring = BatchRing(1, 4 * 4096)
    held = ring.acquire(0, 4096)  # a batch of an earlier pass that the consumer still holds
    assert held[1] == 0
    ring._head = [0]  # as claiming the ring for the next pass does
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the next pass's worker
        offsets = [ring.acquire(0, 4096, timeout=0)[1] for _ in range(3)]
        offsets.append(ring.acquire(0, 4096, timeout=0))
        os.write(write, repr(offsets).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    assert os.read(read, 256).decode() == repr([4096, 8192, 12288, None])
