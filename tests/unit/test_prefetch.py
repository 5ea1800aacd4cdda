"""The in-process worker's warm-up: images decoded while the cluster starts are taken by the shards, once."""

from __future__ import annotations

import threading
from typing import NamedTuple

import pytest
from PIL import Image

from batchclf import worker
from batchclf.decode import DecodedImage, ImageDecodeError, Preprocessing

OPTIONS = worker.ScoringOptions(batch_size=4, decode_threads=2)


class Spec(NamedTuple):  # what the scorer cache and the decoding read of a ModelSpec
    preprocessing: Preprocessing | None


SPEC = Spec(Preprocessing(32))


@pytest.fixture
def scorers(monkeypatch):
    """A fresh scorer cache whose builds make a scorer with no model, and a count of the decodes."""
    built, decoded = [], []
    monkeypatch.setattr(worker, "_SCORERS", {})

    def build(spec, options, pool):
        built.append(spec)
        return worker.Scorer(None, Preprocessing(32), pool, None)

    real_decode = worker._decode_one

    def decode(path, preprocessing, options, read=None):
        decoded.append(path)
        return real_decode(path, preprocessing, options, read)

    monkeypatch.setattr(worker, "_build_scorer", build)
    monkeypatch.setattr(worker, "_decode_one", decode)
    return built, decoded


def photos(folder, count: int) -> list[str]:
    paths = []
    for index in range(count):
        path = folder / f"{index:02d}.jpg"
        Image.new("RGB", (64, 48), (index * 20, 10, 200)).save(path)
        paths.append(str(path))
    (folder / "broken.jpg").write_bytes(b"not an image")
    return [*paths, str(folder / "broken.jpg")]


def test_prefetched_images_are_taken_in_order_and_not_decoded_again(scorers, tmp_path):
    built, decoded = scorers
    paths = photos(tmp_path, 6)
    assert worker.prefetch(SPEC, OPTIONS, str(tmp_path), paths[:4])
    scorer = worker.get_scorer(SPEC, OPTIONS)
    assert built == [SPEC] and set(scorer.prefetched) == set(paths[:4])

    results = list(worker._decode_ahead(paths, scorer, 2, OPTIONS))

    assert sorted(decoded) == sorted(paths)  # each file once: the first four by the warm-up
    assert [type(r) for r in results] == [DecodedImage] * 6 + [ImageDecodeError]
    assert [int(r.pixels[0, 0, 0]) for r in results[:6]] == pytest.approx([i * 20 for i in range(6)], abs=3)
    assert scorer.prefetched == {}


def test_decoding_starts_before_the_model_is_built(monkeypatch, tmp_path):
    """LiteRT holds the GIL while it allocates its tensors: the first images are decoding by then."""
    monkeypatch.setattr(worker, "_SCORERS", {})
    paths = photos(tmp_path, 4)[:4]
    first_decoded = threading.Event()

    def decode(path, preprocessing, options, read=None):
        first_decoded.set()
        return path

    def build(spec, options, pool):
        assert first_decoded.wait(10), "the model was built before any image was decoded"
        return worker.Scorer(None, spec.preprocessing, pool, None)

    monkeypatch.setattr(worker, "_decode_one", decode)
    monkeypatch.setattr(worker, "_build_scorer", build)
    assert worker.prefetch(SPEC, OPTIONS, str(tmp_path), paths)
    assert {path: future.result() for path, future in worker.get_scorer(SPEC, OPTIONS).prefetched.items()} == {
        path: path for path in paths
    }


def test_a_failed_build_cancels_the_decoding_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(worker, "_SCORERS", {})
    pools = []

    def build(spec, options, pool):
        pools.append(pool)
        raise RuntimeError("no model")

    monkeypatch.setattr(worker, "_build_scorer", build)
    with pytest.raises(RuntimeError, match="no model"):
        worker.prefetch(SPEC, OPTIONS, str(tmp_path), photos(tmp_path, 40))
    with pytest.raises(RuntimeError, match="shutdown"):
        pools[0].submit(print)
    assert worker._SCORERS == {}


def test_a_scorer_built_by_a_task_first_gets_no_prefetch(scorers, tmp_path):
    built, decoded = scorers
    paths = photos(tmp_path, 2)
    worker.get_scorer(SPEC, OPTIONS)
    assert not worker.prefetch(SPEC, OPTIONS, str(tmp_path), paths)
    assert built == [SPEC] and decoded == []


def test_what_no_shard_took_is_discarded(scorers, tmp_path):
    paths = photos(tmp_path, 3)
    worker.prefetch(SPEC, OPTIONS, str(tmp_path), paths)
    worker.discard_prefetched(SPEC, OPTIONS)
    assert worker.get_scorer(SPEC, OPTIONS).prefetched == {}
    worker.discard_prefetched(Spec(None), OPTIONS)  # nothing built for it: nothing to do


def test_the_decode_window_covers_two_batches_and_every_decode_thread():
    assert worker.decode_window(worker.ScoringOptions(batch_size=32, decode_threads=2)) == 64
    assert worker.decode_window(worker.ScoringOptions(batch_size=2, decode_threads=8)) == 16


def test_only_a_build_with_litert_alone_is_started_early(monkeypatch, tmp_path):
    """A model still to convert (TensorFlow), an ONNX model or a GPU in sight: the first task builds it."""
    from dataclasses import replace

    from batchclf import machine
    from batchclf.backends import tflite_path
    from batchclf.models.registry import resolve_model

    monkeypatch.setenv("BATCHCLF_CACHE", str(tmp_path))
    monkeypatch.setattr(machine, "visible_gpus", lambda: ())
    spec = resolve_model()
    options = worker.ScoringOptions(backend="litert")
    assert worker.ready_to_prefetch(spec, options)  # the built-in float model is written without TensorFlow
    int8 = worker.ScoringOptions(backend="litert", quantize="int8")
    assert not worker.ready_to_prefetch(spec, int8)  # TensorFlow's converter, not run yet
    converted = tflite_path(worker._conversion_key(spec, int8))
    converted.parent.mkdir(parents=True)
    converted.write_bytes(b"")
    assert worker.ready_to_prefetch(spec, int8)
    assert not worker.ready_to_prefetch(spec, worker.ScoringOptions(backend="tf"))
    assert not worker.ready_to_prefetch(replace(spec, kind="onnx"), options)
    monkeypatch.setattr(machine, "visible_gpus", lambda: ("0",))
    assert not worker.ready_to_prefetch(spec, options)
