"""Cutting the sorted path texts into shards (``shard.py``): deterministic slices, names, balanced sizes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchclf.shard import MIN_SHARDS, SHARD_MULTIPLE, balanced_shard_size, iter_shards, make_shards, shard_name


def test_shards_are_deterministic_consecutive_slices():
    paths = [f"{i:04d}.jpg" for i in range(10)]
    shards = make_shards("/r", paths, 4)
    assert [s.paths for s in shards] == [tuple(paths[0:4]), tuple(paths[4:8]), tuple(paths[8:10])]
    assert [s.name for s in shards] == ["shard-000000", "shard-000001", "shard-000002"]
    assert make_shards("/r", paths, 4) == shards


def test_shards_of_an_arrow_array_are_the_shards_of_its_texts():
    """The plan hands on a chunked Arrow array; its shards hold plain strings, in the same slices."""
    paths = [f"{i:04d}.jpg" for i in range(10)]
    chunked = pa.chunked_array([paths[:3], paths[3:7], paths[7:]])
    assert make_shards("/r", chunked, 4) == make_shards("/r", paths, 4)
    assert all(type(path) is str for shard in make_shards("/r", chunked, 4) for path in shard.paths)


def test_concatenated_shards_keep_the_order_and_lose_nothing():
    paths = [f"{i:05d}.jpg" for i in range(1000)]
    shards = list(iter_shards("/r", paths, 64))
    assert [p for shard in shards for p in shard.paths] == paths
    assert [shard.index for shard in shards] == list(range(16))
    assert all(shard.root == "/r" for shard in shards)


def test_no_shards_for_no_paths():
    assert make_shards("/r", [], 1024) == []


def test_shard_names_sort_in_shard_order():
    names = [shard_name(index) for index in (0, 9, 10, 99, 100, 123456)]
    assert names == sorted(names)
    assert shard_name(42) == "shard-000042"


@pytest.mark.parametrize(
    ("count", "shard_size", "expected"),
    [
        (1000, 1024, 64),
        (3000, 1024, 192),
        (400, 1024, 32),
        (20000, 1024, 1024),
        (100, 1024, 32),
        (1000, 8, 8),
        (0, 1024, 32),
    ],
)
def test_small_inputs_are_cut_into_enough_shards(count, shard_size, expected):
    assert balanced_shard_size(count, shard_size) == expected


@pytest.mark.parametrize("batches_per_shard", [1, 2, 5, 32])
def test_min_shards_whole_batch_shards_for_an_input_that_divides_evenly(batches_per_shard):
    count = MIN_SHARDS * SHARD_MULTIPLE * batches_per_shard
    size = balanced_shard_size(count, 1 << 20)
    assert size == SHARD_MULTIPLE * batches_per_shard
    assert len(make_shards("/r", list(range(count)), size)) == MIN_SHARDS


def test_shards_are_whole_batches_and_never_above_the_asked_size():
    for count in range(0, 40_000, 997):
        size = balanced_shard_size(count, 1024)
        assert size % SHARD_MULTIPLE == 0 and SHARD_MULTIPLE <= size <= 1024


def test_fewer_shards_suffice_for_the_in_process_worker():
    """Its two tasks share one model: four shards keep it busy, where separate workers want sixteen."""
    assert balanced_shard_size(400, 1024, min_shards=4) == 128
    assert balanced_shard_size(400, 1024) == 32
    assert balanced_shard_size(100_000, 1024, min_shards=4) == 1024


def test_balanced_shards_split_evenly_between_two_workers():
    paths = [f"{i:05d}.jpg" for i in range(3000)]
    shards = make_shards("/r", paths, balanced_shard_size(len(paths), 1024))
    sizes = [len(s.paths) for s in shards]
    assert len(shards) >= 16 and sum(sizes) == 3000
    assert sum(sizes[0::2]) / sum(sizes[1::2]) == pytest.approx(1.0, abs=0.1)
