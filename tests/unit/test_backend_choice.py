"""``--backend auto``: LiteRT on a CPU, TensorFlow only where a GPU is visible and TensorFlow can use it."""

from __future__ import annotations

import pytest

from batchclf import backends


def test_auto_backend_on_a_cpu_machine_is_litert(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(backends, "gpu_count", lambda: pytest.fail("no GPU is visible, TensorFlow need not be asked"))
    assert backends.choose_backend("auto") == "litert"
    assert backends.choose_backend("tf") == "tf"


def test_auto_backend_asks_tensorflow_only_when_a_gpu_is_visible(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(backends, "gpu_count", lambda: 1)
    assert backends.choose_backend("auto") == "tf"
    assert backends.choose_backend("auto", quantize="int8") == "litert"
    monkeypatch.setattr(backends, "gpu_count", lambda: 0)  # a CPU-only TensorFlow build
    assert backends.choose_backend("auto") == "litert"
