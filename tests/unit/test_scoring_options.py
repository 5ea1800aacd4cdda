"""The options the driver sends its workers: a run smaller than a batch gets a batch of its size."""

from __future__ import annotations

import pyarrow as pa

from batchclf.config import RunConfig
from batchclf.decode import Preprocessing
from batchclf.dispatch import ScoringTask, _scoring_options
from batchclf.machine import WorkerPlan
from batchclf.models.registry import ModelSpec


def _options(tmp_path, images: int, batch_size: int = 32):
    config = RunConfig(input=tmp_path, output=tmp_path / "out.parquet", batch_size=batch_size)
    spec = ModelSpec("m", "builtin", "efficientnet-lite0", ("a", "b"), Preprocessing(224))
    to_score = pa.chunked_array([[f"{i}.jpg" for i in range(images)]], pa.string())
    task = ScoringTask(config, spec, None, str(tmp_path), to_score, store=None)
    return _scoring_options(task, None, WorkerPlan(1, 2, 2, in_process=True))


def test_six_images_are_one_batch_of_six_not_six_padded_to_32(tmp_path):
    """The interpreter pads every batch to its size: a small run would pay for the padding."""
    assert _options(tmp_path, 6).batch_size == 6
    assert _options(tmp_path, 1).batch_size == 1


def test_a_run_of_a_batch_or_more_keeps_the_batch_size(tmp_path):
    assert _options(tmp_path, 32).batch_size == 32
    assert _options(tmp_path, 1000).batch_size == 32
    assert _options(tmp_path, 1000, batch_size=8).batch_size == 8
