"""The in-process worker's warm-up: images decoded while the cluster starts are taken by the shards, once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from batchclf import worker
from batchclf.decode import DecodedImage, ImageDecodeError, Preprocessing

OPTIONS = worker.ScoringOptions(batch_size=4, decode_threads=2)


@pytest.fixture
def scorers(monkeypatch):
    """A fresh scorer cache whose builds make a scorer with no model, and a count of the decodes."""
    built, decoded = [], []
    monkeypatch.setattr(worker, "_SCORERS", {})

    def build(spec, options):
        built.append(spec)
        return worker.Scorer(None, Preprocessing(32), ThreadPoolExecutor(2), None)

    real_decode = worker._decode_one

    def decode(path, scorer, options, read=None):
        decoded.append(path)
        return real_decode(path, scorer, options, read)

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
    assert worker.prefetch("spec", OPTIONS, str(tmp_path), paths[:4])
    scorer = worker.get_scorer("spec", OPTIONS)
    assert built == ["spec"] and set(scorer.prefetched) == set(paths[:4])

    results = list(worker._decode_ahead(paths, scorer, 2, OPTIONS))

    assert sorted(decoded) == sorted(paths)  # each file once: the first four by the warm-up
    assert [type(r) for r in results] == [DecodedImage] * 6 + [ImageDecodeError]
    assert [int(r.pixels[0, 0, 0]) for r in results[:6]] == pytest.approx([i * 20 for i in range(6)], abs=3)
    assert scorer.prefetched == {}


def test_a_scorer_built_by_a_task_first_gets_no_prefetch(scorers, tmp_path):
    built, decoded = scorers
    paths = photos(tmp_path, 2)
    worker.get_scorer("spec", OPTIONS)
    assert not worker.prefetch("spec", OPTIONS, str(tmp_path), paths)
    assert built == ["spec"] and decoded == []


def test_what_no_shard_took_is_discarded(scorers, tmp_path):
    paths = photos(tmp_path, 3)
    worker.prefetch("spec", OPTIONS, str(tmp_path), paths)
    worker.discard_prefetched("spec", OPTIONS)
    assert worker.get_scorer("spec", OPTIONS).prefetched == {}
    worker.discard_prefetched("other spec", OPTIONS)  # nothing built for it: nothing to do


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
