"""The GPU path, end to end: agreement with LiteRT, images/s, the worker plan and peak GPU memory.

One command on a machine with an NVIDIA GPU and `pip install -e ".[gpu,test]"` (TensorFlow with CUDA):

    python benchmarks/gpu.py --save benchmarks/results/gpu.json     # about 5 minutes on one GPU
    python benchmarks/gpu.py --dry-run                                # CPU only: small sizes, checks it works

It runs `batchclf run` (a subprocess each, start-up included) and reports:

  agreement   the test images (tests/data, in the repository) scored with `--backend tf` (TensorFlow,
              on the GPU when there is one) and with `--backend litert` (LiteRT on the CPU): top-1
              agreement (the goal is >= 99.9 %) and the largest top-1 score difference
  throughput  images/s from wall time on 1,000 web-size images (hard links to the test images) and on
              400 12-megapixel JPEGs made from them, with the default backend (`auto`: TensorFlow on
              the GPU) and the plan's workers and decode threads; the plan is printed as the run records it
  memory      peak GPU memory during each run, sampled every 0.2 s with nvidia-smi

--dry-run needs no GPU: agreement on the 19 ImageNet-class test images only (TensorFlow on the CPU), then
64 web images and 8 12-MP JPEGs with the default backend (LiteRT on a CPU); the test suite runs it,
so the script stays ready for the day a GPU is at hand. Exit status 1 when agreement is under the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from throughput import linked_tree, twelve_megapixel_tree  # benchmarks/ is on the path when a script there runs

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGES = REPO / "tests" / "data"
SUFFIXES = (".jpg", ".jpeg", ".png")
AGREEMENT_GOAL = 0.999
SIZES = {"full": {"web": 1000, "large": 400}, "dry": {"web": 64, "large": 8}}


def source_images() -> list[Path]:
    return sorted(p for p in TEST_IMAGES.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


class GpuMemory:
    """Peak memory used on each GPU while the block runs, from nvidia-smi (empty without one)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak_mib = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _read(self) -> dict[int, int]:
        query = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
        try:
            text = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
        return {int(i): int(m) for i, m in (line.split(",") for line in text.strip().splitlines() if "," in line)}

    def _sample(self) -> None:
        while not self._stop.is_set():
            for index, used in self._read().items():
                self.peak_mib[index] = max(used, self.peak_mib.get(index, 0))
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()


def batchclf_run(folder: Path, output: Path, workdir: Path, extra: list[str], env: dict) -> dict:
    summary = workdir / f"{output.stem}.summary.json"
    command = [sys.executable, "-m", "batchclf", "run", str(folder), str(output), "--no-progress"]
    command += ["--summary", str(summary), *extra]
    with GpuMemory() as memory:
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    record = json.loads(summary.read_text())
    return {
        "command": " ".join(["batchclf", *command[3:]]),
        "images": record["files"],
        "errors": record["errors"],
        "wall_s": round(seconds, 2),
        "images_per_s_wall": round(record["files"] / seconds, 1),
        "plan": record.get("worker_plan"),
        "peak_gpu_memory_mib": memory.peak_mib or None,
    }


def top1(output: Path) -> dict[str, tuple[str, float]]:
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["path", "label", "score", "status"]).to_pylist()
    return {row["path"]: (row["label"], row["score"]) for row in table if row["status"] == "ok"}


def agreement(images: Path, workdir: Path, env: dict) -> dict:
    runs, found = {}, {}
    for backend in ("tf", "litert"):
        output = workdir / f"agreement-{backend}.parquet"
        runs[backend] = batchclf_run(images, output, workdir, ["--backend", backend, "--top-k", "1"], env)
        found[backend] = top1(output)
    common = sorted(found["tf"].keys() & found["litert"].keys())
    same = sum(found["tf"][p][0] == found["litert"][p][0] for p in common)
    differences = [abs(found["tf"][p][1] - found["litert"][p][1]) for p in common]
    return {
        "images": len(common),
        "top1_agreement": same / len(common) if common else 0.0,
        "max_top1_score_difference": max(differences, default=0.0),
        "disagreements": [
            {"path": p, "tf": found["tf"][p], "litert": found["litert"][p]}
            for p in common
            if found["tf"][p][0] != found["litert"][p][0]
        ],
        "runs": runs,
    }


def tensorflow_devices() -> list[str]:
    code = "import tensorflow as tf; print([d.name for d in tf.config.list_physical_devices('GPU')])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    return result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else [result.stderr.strip()[-300:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU only, small sizes: checks that the script works")
    parser.add_argument("--save", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    sizes = SIZES["dry" if args.dry_run else "full"]
    gpus = GpuMemory().available
    if not gpus and not args.dry_run:
        print("no nvidia-smi here: measuring the CPU path (use --dry-run for a quick check)", flush=True)
    results = {"dry_run": args.dry_run, "nvidia_smi": gpus, "tensorflow_gpus": tensorflow_devices(), "runs": {}}
    print(f"TensorFlow sees: {results['tensorflow_gpus']}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        env = {"BATCHCLF_CACHE": os.environ.get("BATCHCLF_CACHE", str(workdir / "cache")), "TF_CPP_MIN_LOG_LEVEL": "2"}
        images = TEST_IMAGES / "imagenet_objects" if args.dry_run else TEST_IMAGES
        results["agreement"] = found = agreement(images, workdir, env)
        print(
            f"agreement: TensorFlow and LiteRT give the same top-1 on {found['top1_agreement']:.2%} of "
            f"{found['images']} test images; largest top-1 score difference {found['max_top1_score_difference']:.2e}",
            flush=True,
        )
        trees = {
            f"{sizes['web']} web images": linked_tree(workdir / "web", sizes["web"], source_images()),
            f"{sizes['large']} 12-MP JPEGs": twelve_megapixel_tree(
                workdir / "large", sizes["large"], max(1, len(os.sched_getaffinity(0))), source_images()
            ),
        }
        for name, tree in trees.items():
            # The default backend, as on the GPU (`auto`): LiteRT on a CPU. The agreement above ran TensorFlow.
            run = batchclf_run(tree, workdir / f"{tree.name}.parquet", workdir, [], env)
            results["runs"][name] = run
            print(
                f"{name}: {run['wall_s']} s, {run['images_per_s_wall']} images/s (wall, start-up included), "
                f"{run['errors']} errors; peak GPU memory {run['peak_gpu_memory_mib']} MiB",
                flush=True,
            )
            print(f"  plan: {json.dumps(run['plan'])}", flush=True)
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved {args.save}")
    if found["top1_agreement"] < AGREEMENT_GOAL:
        print(f"agreement {found['top1_agreement']:.2%} is under the goal of {AGREEMENT_GOAL:.1%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
