"""One-image latency: ``Classifier.predict`` once the model is loaded, and ``batchclf predict`` end to end.

In process: the model is built once (timed apart), then one web-size JPEG (``examples/images/pizza.jpg``,
640×404, 86 kB) is classified from its path again and again: decode, crop, resize, inference and top-k.
End to end: ``batchclf predict IMAGE`` as a fresh process, with the model cache warm (one untimed run
first), which is what a user or a script pays; whether Dask, Arrow or TensorFlow were imported on the
way is printed too (none should be).

    python benchmarks/predict.py                  # 50 predictions, 5 commands
    python benchmarks/predict.py --runs 200 --commands 11 --image photo.jpg
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "pizza.jpg"
HEAVY = ("dask", "distributed", "pyarrow", "tensorflow", "keras")
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['batchclf'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('batchclf', run_name='__main__')\n"
    "except SystemExit as exit:\n"
    "    code = exit.code\n"
    "print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"
    "raise SystemExit(code)\n"
)


def spread(seconds: list[float], cpu_seconds: list[float]) -> dict:
    """Wall time, and CPU time (every thread, user and system): the steadier figure on a shared machine."""
    ordered = sorted(seconds)
    return {
        "median_ms": round(1000 * statistics.median(ordered), 1),
        "min_ms": round(1000 * ordered[0], 1),
        "p90_ms": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 1),
        "median_cpu_ms": round(1000 * statistics.median(cpu_seconds), 1),
        "runs": len(ordered),
    }


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def in_process(image: Path, runs: int) -> dict:
    started = time.perf_counter()
    import batchclf

    imported = time.perf_counter()
    classifier = batchclf.Classifier().load()
    loaded = time.perf_counter()
    label = classifier.predict(image).label  # the first call also starts the decode thread
    seconds, cpu_seconds = [], []
    for _ in range(runs):
        tick, cpu = time.perf_counter(), time.process_time()
        classifier.predict(image)
        seconds.append(time.perf_counter() - tick)
        cpu_seconds.append(time.process_time() - cpu)
    return {
        "import_s": round(imported - started, 3),
        "model_load_s": round(loaded - imported, 3),  # numpy, Pillow and LiteRT imported, the interpreter made
        "label": label,
        **spread(seconds, cpu_seconds),
    }


def end_to_end(image: Path, runs: int) -> dict:
    beside = Path(sys.executable).with_name("batchclf")  # the console script itself, not a version manager's shim
    script = str(beside) if beside.is_file() else shutil.which("batchclf")
    command = [script] if script else [sys.executable, "-m", "batchclf"]
    probe = [sys.executable, "-c", PROBE.format(heavy=HEAVY)]
    warm = subprocess.run([*command, "predict", str(image)], capture_output=True, text=True)  # converts once
    if warm.returncode != 0:
        raise SystemExit(f"batchclf predict failed: {warm.stderr.strip()}")
    seconds, cpu_seconds = [], []
    for _ in range(runs):
        tick, cpu = time.perf_counter(), children_cpu()
        subprocess.run([*command, "predict", str(image)], capture_output=True, check=True)
        seconds.append(time.perf_counter() - tick)
        cpu_seconds.append(children_cpu() - cpu)
    heavy = subprocess.run([*probe, "predict", str(image)], capture_output=True, text=True).stderr
    imported = next((line[6:] for line in heavy.splitlines() if line.startswith("HEAVY=")), "?")
    return {
        "command": " ".join([Path(command[0]).name, *command[1:], "predict", str(image)]),
        "first_line": warm.stdout.splitlines()[0],
        "heavy_imports": imported.split(",") if imported else [],
        **spread(seconds, cpu_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--runs", type=int, default=50, help="timed predictions in process")
    parser.add_argument("--commands", type=int, default=5, help="timed commands, each a fresh process")
    args = parser.parse_args()
    result = {
        "image": str(args.image),
        "cores": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg()[0],
        "classifier_predict": in_process(args.image, args.runs),
        "batchclf_predict": end_to_end(args.image, args.commands),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
