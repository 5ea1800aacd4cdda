"""benchmarks/gpu.py stays ready to run: its CPU-only dry mode runs here, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_gpu_benchmark_dry_run_measures_agreement_throughput_and_the_plan(tmp_path):
    saved = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--dry-run", "--save", str(saved)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(saved.read_text())
    assert figures["dry_run"] is True

    agreement = figures["agreement"]
    assert agreement["images"] == 19  # the ImageNet-class test images, scored by both backends
    assert agreement["top1_agreement"] >= 0.999, agreement["disagreements"]
    assert agreement["max_top1_score_difference"] < 1e-3
    assert {run["command"].split("--backend ")[1].split()[0] for run in agreement["runs"].values()} == {"tf", "litert"}

    web, large = figures["runs"]["64 web images"], figures["runs"]["8 12-MP JPEGs"]
    assert (web["images"], web["errors"]) == (64, 0)
    assert (large["images"], large["errors"]) == (8, 0)
    for run in (web, large):
        assert run["images_per_s_wall"] > 0
        assert run["plan"]["workers"] >= 1  # the embedded cluster's plan, as the run recorded it
    assert "agreement: TensorFlow and LiteRT give the same top-1" in result.stdout
    assert "plan: {" in result.stdout
