"""Throughput of `batchclf run` against the hardware limit and against the usual Keras way.

One command, on the same images in one run:

  (a)  inference alone: the backend on pre-decoded tensors, same model and batch size, all cores
  (a') decoding + resizing alone, all cores; bound = 1 / (1/a + 1/a'), what a perfect pipeline
       sharing the same cores could reach
  (b)  `batchclf run` end to end (subprocess; images/s from wall time including start-up, and from
       the run's own summary)
  (c)  the usual Keras way: keras.utils.image_dataset_from_directory + model.predict, same model
  (b') `batchclf run` on 1,000 images: warm cache, a first run with an empty cache (the LiteRT
       file made first), and `--backend tf`
  (d)  (a'), (b), (c) on 12-megapixel JPEGs, and (b) with full-size decoding (BATCHCLF_FULL_DECODE=1)
  (b'') `batchclf run --workers N` (N = cores): worker processes instead of the plan's layout, on the
       1,000 images and on the 12 MP JPEGs
  (e)  a plain pipeline, on the 1,000 images and the 12 MP JPEGs: one process, LiteRT with all cores'
       threads, batchclf's own decoding in a thread pool as wide, no Dask, no Parquet (wall time of
       the subprocess, start-up included): what the same cores do with nothing around the model
  int8 inference alone, and its top-1 agreement with fp32 on the same tensors

plus ratios, top-1 agreement and peak memory (psutil, sampled over the process tree).
`--scale` instead measures the per-image cost and driver memory at 1,000 and 20,000 images.

    python benchmarks/throughput.py            # about 10 minutes on an idle 2-core machine
    python benchmarks/throughput.py --scale    # about 5 minutes
    python benchmarks/throughput.py --all      # both, one after the other
    python benchmarks/throughput.py --quick    # small sizes, to check that it works
    python benchmarks/throughput.py --ratio --images 1000 --large 200 --repeats 3
                                               # only (b) against (e), alternating: their ratio

Images are hard links to ../shared/datasets (or BATCHCLF_DATASETS) in --workdir; the 12 MP JPEGs
are generated once there by upscaling them. batchclf's bytecode is written first, as `pip install`
writes an installed package's (`compile_batchclf`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("BATCHCLF_DATASETS", REPO.parent / "shared" / "datasets"))
SUFFIXES = (".jpg", ".jpeg", ".png")
BATCH_SIZE = 32


# ----------------------------------------------------------------------------- inputs


def source_images() -> list[Path]:
    found = sorted(p for p in DATASETS.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not found:
        sys.exit(f"no images under {DATASETS}; set BATCHCLF_DATASETS")
    return found


def linked_tree(folder: Path, count: int, sources: list[Path] | None = None) -> Path:
    """``count`` hard links (copies across file systems) to ``sources`` (the shared images), 500 a folder."""
    sources = sources or source_images()
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.*")) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(count):
        source = sources[i % len(sources)]
        target = folder / f"{i // 500:03d}" / f"{i:06d}{source.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy(source, target)
    return folder


def _upscale(job: tuple[str, str]) -> None:
    from PIL import Image

    source, target = job
    with Image.open(source) as image:
        image = image.convert("RGB")
        landscape = image.width >= image.height
        image.resize((4000, 3000) if landscape else (3000, 4000), Image.Resampling.BICUBIC).save(target, quality=90)


def twelve_megapixel_tree(folder: Path, count: int, processes: int, sources: list[Path] | None = None) -> Path:
    """``count`` 12-megapixel JPEGs (4000×3000) upscaled from ``sources`` (the shared images), generated once."""
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = sources or source_images()
    jobs = [(str(sources[i * 7 % len(sources)]), str(folder / f"{i:05d}.jpg")) for i in range(count)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_upscale, jobs)
    return folder


def image_paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)


# ----------------------------------------------------------------------------- memory


def forked_job(command):
    """The child `batchclf run` forked to run its job (it has the command's own command line), or None."""
    import psutil

    for child in command.children():
        try:
            if child.cmdline() == command.cmdline():
                return child
        except psutil.Error:
            continue
    return None


class PeakMemory:
    """Peak RSS of a process (the driver) and of its descendants (workers), sampled every 0.1 s, and of
    the process that runs the job: the driver, or the child `batchclf run` forked to run it (same
    command line; it hosts the in-process worker).

    Also the CPU seconds the whole tree used (last sample of each process): unlike wall time, hardly
    changed by other programs sharing the machine.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.driver = 0
        self.worker = 0
        self.job = 0
        self.total = 0
        self.cpu_by_pid: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                driver = job = root.memory_info().rss
                self._add_cpu(root)
                job_process = forked_job(root)
                children = []
                for child in root.children(recursive=True):
                    try:
                        children.append(child.memory_info().rss)
                        self._add_cpu(child)
                        if child == job_process:
                            job = children[-1]
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.driver = max(self.driver, driver)
            self.job = max(self.job, job)
            self.worker = max(self.worker, max(children, default=0))
            self.total = max(self.total, driver + sum(children))
            self._stop.wait(0.1)

    def _add_cpu(self, process) -> None:
        times = process.cpu_times()
        self.cpu_by_pid[process.pid] = times.user + times.system

    def as_dict(self) -> dict:
        mb = 1 << 20
        return {
            "cpu_s": round(sum(self.cpu_by_pid.values()), 2),
            "driver_mb": round(self.driver / mb),
            "job_process_mb": round(self.job / mb),
            "worker_max_mb": round(self.worker / mb),
            "total_mb": round(self.total / mb),
        }


def timed_subprocess(command: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess, dict]:
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    with PeakMemory(process.pid) as memory:
        stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if process.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{stderr[-3000:]}")
    return seconds, result, memory.as_dict()


# ----------------------------------------------------------------------------- (a), (a')


def _inference_process(tflite, tensors_file, indices, threads, repeat, barrier, results) -> None:
    from batchclf.backends import LiteRTBackend

    tensors = np.load(tensors_file, mmap_mode="r")
    backend = LiteRTBackend(Path(tflite), BATCH_SIZE, threads, 1000, with_features=False)
    backend.predict(np.asarray(tensors[indices[:BATCH_SIZE]]))
    batches = [np.asarray(tensors[indices[i : i + BATCH_SIZE]]) for i in range(0, len(indices), BATCH_SIZE)]
    barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    top1 = []
    for _ in range(repeat):
        top1 = [backend.predict(batch)[0].argmax(axis=1) for batch in batches]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    results.put((list(indices), np.concatenate(top1).tolist(), len(indices) * repeat, elapsed, cpu))


def _decode_process(paths, preprocessing, barrier, results) -> None:
    from batchclf.decode import ImageDecodeError, decode_image

    decode_image(paths[0], preprocessing)
    barrier.wait()
    started = time.perf_counter()
    for path in paths:
        try:
            decode_image(path, preprocessing)
        except ImageDecodeError:
            pass
    results.put((None, None, len(paths), time.perf_counter() - started, None))


def run_in_parallel(target, per_process_args: list[tuple], env: dict | None = None) -> tuple[float, dict, float]:
    """Start one process per entry, line them up on a barrier; return images/s, top-1 by index, CPU ms/image."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(per_process_args))
    results = context.Queue()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        processes = [context.Process(target=target, args=(*args, barrier, results)) for args in per_process_args]
        for process in processes:
            process.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    outputs = [results.get() for _ in processes]
    for process in processes:
        process.join()
    images = sum(o[2] for o in outputs)
    seconds = max(o[3] for o in outputs)
    top1 = {i: t for o in outputs if o[0] is not None for i, t in zip(o[0], o[1])}
    cpu_ms = 1000 * sum(o[4] for o in outputs) / images if outputs[0][4] is not None else float("nan")
    return images / seconds, top1, cpu_ms


def inference_alone(tflite: Path, tensors_file: Path, count: int, plan, repeat: int) -> tuple[float, dict, float]:
    shares = np.array_split(np.arange(count), plan.workers)
    args = [(str(tflite), str(tensors_file), share, plan.inference_threads, repeat) for share in shares]
    return run_in_parallel(_inference_process, args)


def decode_alone(paths: list[str], preprocessing, plan, full_decode: bool = False) -> float:
    shares = [paths[i :: plan.workers] for i in range(plan.workers)]
    env = {"BATCHCLF_FULL_DECODE": "1"} if full_decode else {}
    return run_in_parallel(_decode_process, [(share, preprocessing) for share in shares], env)[0]


# ----------------------------------------------------------------------------- (b), (c)


def batchclf_run(folder: Path, output: Path, extra: list[str] = (), env: dict | None = None) -> dict:
    from batchclf.writer import read_run_metadata

    command = [
        sys.executable,
        "-m",
        "batchclf",
        "run",
        str(folder),
        str(output),
        "--no-progress",
        "--dashboard-address",
        ":0",
        *extra,
    ]
    seconds, _, memory = timed_subprocess(command, env)
    metadata = read_run_metadata(output)
    files = metadata["files"]
    return {
        "images": files,
        "errors": metadata["errors"],
        "wall_s": round(seconds, 2),
        "images_per_s_wall": files / seconds,
        "images_per_s_summary": files / metadata["seconds"],
        "memory": memory,
    }


KERAS_SCRIPT = """
import json, sys
import keras
from batchclf.models.registry import load_keras_model, resolve_model
spec = resolve_model()
model = load_keras_model(spec)
size = spec.preprocessing.image_size
dataset = keras.utils.image_dataset_from_directory(sys.argv[1], labels=None, image_size=(size, size),
                                                   batch_size=32, shuffle=False)
probabilities = model.predict(dataset, verbose=0)
json.dump({"paths": list(dataset.file_paths), "top1": probabilities.argmax(axis=1).tolist()}, open(sys.argv[2], "w"))
"""


PLAIN_SCRIPT = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from batchclf.backends import LiteRTBackend
from batchclf.models.registry import resolve_model
tflite, threads, paths = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read().split(chr(10))
spec = resolve_model()
backend = LiteRTBackend(tflite, 32, threads, len(spec.labels), False)
from batchclf.decode import decode_image
pool = ThreadPoolExecutor(threads)
batch, scored, started = [], 0, time.perf_counter()
for pixels in pool.map(lambda path: decode_image(path, spec.preprocessing).pixels, paths):
    batch.append(pixels)
    if len(batch) == 32:
        backend.predict(np.stack(batch))
        scored, batch = scored + len(batch), []
if batch:
    backend.predict(np.stack(batch))
    scored += len(batch)
print(scored, time.perf_counter() - started)
"""


def plain_pipeline(tflite: Path, paths: list[str], threads: int, workdir: Path) -> dict:
    """(e): decode in a pool and score in batches in one process, nothing else."""
    listed = workdir / "plain-paths.txt"
    listed.write_text("\n".join(paths))
    command = [sys.executable, "-c", PLAIN_SCRIPT, str(tflite), str(threads), str(listed)]
    seconds, result, memory = timed_subprocess(command)
    scored, working = result.stdout.split()
    return {
        "images": int(scored),
        "wall_s": round(seconds, 2),
        "images_per_s_wall": int(scored) / seconds,
        "images_per_s_after_model_load": int(scored) / float(working),
        "memory": memory,
    }


def keras_way(folder: Path, output: Path) -> dict:
    command = [sys.executable, "-c", KERAS_SCRIPT, str(folder), str(output)]
    seconds, _, memory = timed_subprocess(command, {"TF_CPP_MIN_LOG_LEVEL": "2"})
    result = json.loads(output.read_text())
    return {
        "images": len(result["paths"]),
        "wall_s": round(seconds, 2),
        "images_per_s_wall": len(result["paths"]) / seconds,
        "memory": memory,
        "top1": dict(zip(result["paths"], result["top1"])),
    }


def run_top1(output: Path, root: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    from batchclf.models.registry import imagenet_labels

    index = {label: i for i, label in enumerate(imagenet_labels())}
    table = pq.read_table(output, columns=["path", "label", "status"]).to_pylist()
    return {str(root / row["path"]): index[row["label"]] for row in table if row["status"] == "ok"}


def agreement(first: dict, second: dict) -> tuple[float, int]:
    common = first.keys() & second.keys()
    return (sum(first[k] == second[k] for k in common) / len(common) if common else float("nan")), len(common)


# ----------------------------------------------------------------------------- the benchmark


def compile_batchclf() -> str:
    """Write batchclf's bytecode (``__pycache__``), as ``pip install`` does for an installed package, and
    say where. A source checkout run with PYTHONDONTWRITEBYTECODE=1 would compile every batchclf module
    in every run (about 0.13 s of each start-up on 2 cores), a cost no installed batchclf pays."""
    import compileall

    import batchclf

    folder = Path(batchclf.__file__).parent
    compileall.compile_dir(folder, quiet=1)
    return str(folder)


def machine() -> dict:
    import psutil

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        # pyarrow would import it (~0.2 s) in a run but for store.parquet.answer_arrows_pandas_probe
        "pandas_installed": importlib.util.find_spec("pandas") is not None,
        "load_average_at_start": [round(v, 2) for v in load],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def prepare_models():
    """Convert (or find cached) the fp32 and int8 models, exactly as a worker would."""
    from batchclf import worker
    from batchclf.models.registry import resolve_model

    spec = resolve_model()
    files = {}
    for quantize in (None, "int8"):
        options = worker.ScoringOptions(backend="litert", quantize=quantize)
        files[quantize or "fp32"] = worker.get_scorer(spec, options).backend.path
    return spec, files


def save_tensors(paths: list[str], preprocessing, target: Path) -> Path:
    from batchclf.decode import decode_image

    np.save(target, np.stack([decode_image(p, preprocessing).pixels for p in paths]))
    return target


def keras_on_tensors(spec, tensors_file: Path, count: int) -> dict[int, int]:
    """The Keras model on the very tensors LiteRT and `batchclf run` saw: isolates the backend."""
    from batchclf.backends import TensorFlowBackend, quiet_native_stderr
    from batchclf.models.registry import load_keras_model

    with quiet_native_stderr():
        backend = TensorFlowBackend(load_keras_model(spec), with_features=False)
    tensors = np.load(tensors_file, mmap_mode="r")
    top1 = [
        backend.predict(np.asarray(tensors[i : i + BATCH_SIZE]))[0].argmax(axis=1) for i in range(0, count, BATCH_SIZE)
    ]
    return dict(enumerate(np.concatenate(top1).tolist()))


def main_benchmark(args, workdir: Path, results: dict) -> None:
    from batchclf.machine import available_cores, plan_workers, total_memory
    from batchclf.models.calibration_set import calibration_files

    plan = plan_workers(available_cores(), total_memory())
    web = linked_tree(workdir / "web", args.images)
    large = twelve_megapixel_tree(workdir / "12mp", args.large, plan.workers)
    web_paths, large_paths = image_paths(web), image_paths(large)
    step("models: converting or reusing the cached fp32 and int8 files")
    spec, tflite = prepare_models()
    preprocessing = spec.preprocessing
    tensor_count = min(len(web_paths), args.tensors)
    tensors_file = save_tensors(web_paths[:tensor_count], preprocessing, workdir / "tensors.npy")

    step(f"(a) inference alone: {plan.workers} process(es) x {plan.inference_threads} thread(s), batch {BATCH_SIZE}")
    a, a_top1, a_cpu_ms = inference_alone(tflite["fp32"], tensors_file, tensor_count, plan, args.repeat)
    a_int8, int8_top1, int8_cpu_ms = inference_alone(tflite["int8"], tensors_file, tensor_count, plan, args.repeat)
    step("(a') decoding alone")
    decode_web = decode_alone(web_paths, preprocessing, plan)
    decode_large = decode_alone(large_paths, preprocessing, plan)
    decode_large_full = decode_alone(large_paths[: max(plan.workers, len(large_paths) // 2)], preprocessing, plan, True)

    step("start-up: batchclf run on 64 images (cluster start, model load, a first shard)")
    startup = batchclf_run(linked_tree(workdir / "startup-64", 64), workdir / "startup.parquet")["wall_s"]
    step(f"(b) batchclf run on {len(web_paths)} web-size images")
    b = batchclf_run(web, workdir / "web.parquet")
    thousand = linked_tree(workdir / "web-1000", args.thousand)
    step(f"(b) batchclf run on {args.thousand} images: warm cache, empty cache (first run), --backend tf")
    b_thousand = batchclf_run(thousand, workdir / "web-1000.parquet")
    with tempfile.TemporaryDirectory(dir=workdir) as empty_cache:  # what a new machine's first run costs
        b_first = batchclf_run(thousand, workdir / "web-1000-first.parquet", env={"BATCHCLF_CACHE": empty_cache})
    b_tf = batchclf_run(thousand, workdir / "web-1000-tf.parquet", ["--backend", "tf"])
    cores = plan.workers * plan.inference_threads
    step(f"(b) with worker processes (--workers {cores}) instead of the plan's layout, on the same images")
    b_processes = batchclf_run(thousand, workdir / "web-1000-processes.parquet", ["--workers", str(cores)])
    step(f"(e) a plain pipeline on the same {args.thousand} images and on the 12 MP JPEGs")
    e_thousand = plain_pipeline(tflite["fp32"], image_paths(thousand), cores, workdir)
    e_large = plain_pipeline(tflite["fp32"], large_paths, cores, workdir)
    step(f"(c) image_dataset_from_directory + model.predict on {len(web_paths)} images")
    c = keras_way(web, workdir / "web-keras.json")
    step(f"(d) the same on {len(large_paths)} 12-megapixel JPEGs")
    b_large = batchclf_run(large, workdir / "12mp.parquet")
    b_large_full = batchclf_run(large, workdir / "12mp-full.parquet", env={"BATCHCLF_FULL_DECODE": "1"})
    b_large_processes = batchclf_run(large, workdir / "12mp-processes.parquet", ["--workers", str(cores)])
    c_large = keras_way(large, workdir / "12mp-keras.json")

    step("agreement")
    b_top1 = run_top1(workdir / "web.parquet", web)
    keras_top1 = keras_on_tensors(spec, tensors_file, tensor_count)
    tensor_paths = {i: web_paths[i] for i in range(tensor_count)}
    b_vs_c, compared = agreement(b_top1, c.pop("top1"))
    b_on_tensors = {i: b_top1[p] for i, p in tensor_paths.items() if p in b_top1}
    b_vs_keras_tensors, compared_tensors = agreement(b_on_tensors, keras_top1)
    int8_vs_fp32, _ = agreement(int8_top1, a_top1)
    b_large_vs_c, _ = agreement(run_top1(workdir / "12mp.parquet", large), c_large.pop("top1"))

    bound = 1 / (1 / a + 1 / decode_web)
    bound_large = 1 / (1 / a + 1 / decode_large)
    fixed = max(0.0, startup - 64 / bound)  # the 64-image run, less its images at the bound rate
    for run in (b, b_large, b_large_full, b_large_processes):  # the steady rate: what start-up costs once is taken out
        run["images_per_s_after_startup"] = run["images"] / max(1e-3, run["wall_s"] - fixed)
    results["web"] = {
        "images": len(web_paths),
        "a_inference_alone": a,
        "a_decode_alone": decode_web,
        "bound": bound,
        "b_batchclf_run": b,
        "c_keras_way": c,
        "b_over_bound_wall": b["images_per_s_wall"] / bound,
        "b_over_bound_summary": b["images_per_s_summary"] / bound,
        "b_over_bound_after_startup": b["images_per_s_after_startup"] / bound,
        "startup_s_from_64_image_run": startup,
        "b_over_c": b["images_per_s_wall"] / c["images_per_s_wall"],
        "top1_agreement_b_c": b_vs_c,
        "top1_compared": compared,
        "top1_agreement_b_keras_same_tensors": b_vs_keras_tensors,
        "same_tensors_compared": compared_tensors,
    }
    results["web"]["thousand"] = {
        "warm_cache": b_thousand,
        "empty_cache": b_first,
        "backend_tf": b_tf,
        "worker_processes": b_processes,
        "e_plain_pipeline": e_thousand,
        "b_over_e_wall": b_thousand["images_per_s_wall"] / e_thousand["images_per_s_wall"],
    }
    results["12mp"] = {
        "images": len(large_paths),
        "a_decode_alone": decode_large,
        "a_decode_alone_full_size": decode_large_full,
        "bound": bound_large,
        "b_batchclf_run": b_large,
        "b_full_size_decoding": b_large_full,
        "c_keras_way": c_large,
        "b_over_bound_wall": b_large["images_per_s_wall"] / bound_large,
        "b_over_b_full_size": b_large["images_per_s_wall"] / b_large_full["images_per_s_wall"],
        "b_over_b_full_size_after_startup": b_large["images_per_s_after_startup"]
        / b_large_full["images_per_s_after_startup"],
        "b_over_bound_after_startup": b_large["images_per_s_after_startup"] / bound_large,
        "b_over_c": b_large["images_per_s_wall"] / c_large["images_per_s_wall"],
        "top1_agreement_b_c": b_large_vs_c,
        "b_worker_processes": b_large_processes,
        "e_plain_pipeline": e_large,
        "b_over_e_wall": b_large["images_per_s_wall"] / e_large["images_per_s_wall"],
    }
    results["int8"] = {
        "a_inference_alone": a_int8,
        "speed_ratio_int8_over_fp32": a_int8 / a,
        "cpu_ms_per_image_fp32": a_cpu_ms,
        "cpu_ms_per_image_int8": int8_cpu_ms,
        "cpu_speed_ratio_int8_over_fp32": a_cpu_ms / int8_cpu_ms,
        "top1_agreement_with_fp32_same_tensors": int8_vs_fp32,
        "tensors": tensor_count,
        "calibration_images": len(calibration_files()),
    }
    results["plan"] = {
        "workers": plan.workers,
        "inference_threads": plan.inference_threads,
        "decode_threads": plan.decode_threads,
        "batch_size": BATCH_SIZE,
        "cores": cores,
        "decode_per_core_web": decode_web / cores,  # to size a GPU node: how many cores keep one GPU fed
        "decode_per_core_12mp": decode_large / cores,
    }


def scale_benchmark(args, workdir: Path, results: dict) -> None:
    runs = {}
    for count in (64, args.small, args.large_count):
        folder = linked_tree(workdir / f"scale-{count}", count)
        step(f"scale: batchclf run on {count} images")
        runs[count] = batchclf_run(folder, workdir / f"scale-{count}.parquet")
    startup = runs[64]["wall_s"]  # cluster start-up and model load: paid once per run
    small, big = runs[args.small], runs[args.large_count]

    def per_image_ms(run, subtract=0.0):
        """Wall milliseconds per image; with ``subtract``, the marginal cost beyond the 64-image run."""
        return 1000 * (run["wall_s"] - subtract) / (run["images"] - (64 if subtract else 0))

    results["scale"] = {
        "runs": {str(k): v for k, v in runs.items()},
        "per_image_ms_wall": {str(args.small): per_image_ms(small), str(args.large_count): per_image_ms(big)},
        "per_image_ms_after_startup": {
            str(args.small): per_image_ms(small, startup),
            str(args.large_count): per_image_ms(big, startup),
        },
        "cost_ratio_wall": per_image_ms(big) / per_image_ms(small),
        "cost_ratio_after_startup": per_image_ms(big, startup) / per_image_ms(small, startup),
        "driver_peak_mb": {
            str(args.small): small["memory"]["driver_mb"],
            str(args.large_count): big["memory"]["driver_mb"],
        },
        "job_process_peak_mb": {
            str(args.small): small["memory"]["job_process_mb"],
            str(args.large_count): big["memory"]["job_process_mb"],
        },
        "startup_s_from_64_image_run": startup,
        "per_image_cpu_ms_after_startup": {
            str(args.small): per_image_cpu_ms(small, runs[64]),
            str(args.large_count): per_image_cpu_ms(big, runs[64]),
        },
        "cost_ratio_cpu_after_startup": per_image_cpu_ms(big, runs[64]) / per_image_cpu_ms(small, runs[64]),
    }


def ratio_benchmark(args, workdir: Path, results: dict) -> None:
    """`batchclf run` against the plain pipeline (e) on the same images, alternating, ``--repeats`` times.

    Each repeat runs the two back to back on each image set, in turn first (ABBA), so a load that
    comes and goes on a shared machine falls on both; the ratio of each pair is what is reported.
    """
    from batchclf.machine import available_cores

    cores = available_cores()
    sets = {"web": linked_tree(workdir / f"web-{args.images}", args.images)}
    if args.large:
        sets["12mp"] = twelve_megapixel_tree(workdir / f"12mp-{args.large}", args.large, cores)
    step("model: converting or reusing the cached fp32 file")
    tflite = fp32_model()
    for name, folder in sets.items():
        paths = image_paths(folder)
        pairs = []
        for repeat in range(args.repeats):
            step(f"{name}: {len(paths)} images, pair {repeat + 1} of {args.repeats}")
            output, summary = workdir / f"ratio-{name}.parquet", workdir / f"ratio-{name}.summary.json"
            output.unlink(missing_ok=True)

            dashboard = ":0" if args.dashboard else "none"  # none: what a run from cron or a script gets
            extra = ["--summary", str(summary), "--dashboard-address", dashboard]
            ours = functools.partial(batchclf_run, folder, output, extra)
            plain = functools.partial(plain_pipeline, tflite, paths, cores, workdir)
            first, second = ("b", "e") if repeat % 2 == 0 else ("e", "b")
            runs = {}
            for which in (first, second):
                runs[which] = ours() if which == "b" else plain()
            b, e = runs["b"], runs["e"]
            record = json.loads(summary.read_text())
            b["stage_seconds"], b["task_seconds"] = record.get("stage_seconds"), record.get("task_seconds")
            pairs.append({"batchclf": b, "plain": e, "ratio_wall": e["wall_s"] / b["wall_s"]})
            step(f"  batchclf {b['wall_s']:.2f} s, plain {e['wall_s']:.2f} s: ratio {pairs[-1]['ratio_wall']:.3f}")
        ratios = sorted(pair["ratio_wall"] for pair in pairs)
        cpu = sorted(p["plain"]["memory"]["cpu_s"] / p["batchclf"]["memory"]["cpu_s"] for p in pairs)
        results.setdefault("ratio", {})[name] = {
            "images": len(paths),
            "pairs": pairs,
            "ratio_wall_median": statistics.median(ratios),
            "ratio_wall_range": [ratios[0], ratios[-1]],
            "ratio_cpu_median": statistics.median(cpu),
        }


def fp32_model() -> Path:
    """The built-in model's fp32 LiteRT file, converted (or found cached) exactly as a worker would."""
    from batchclf import worker
    from batchclf.models.registry import resolve_model

    return worker.get_scorer(resolve_model(), worker.ScoringOptions(backend="litert")).backend.path


def per_image_cpu_ms(run: dict, startup_run: dict) -> float:
    """Marginal CPU milliseconds per image of the whole process tree: start-up (a 64-image run) removed."""
    extra_images = max(1, run["images"] - startup_run["images"])
    return 1000 * (run["memory"]["cpu_s"] - startup_run["memory"]["cpu_s"]) / extra_images


def step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(results: dict) -> str:
    rows = []

    def add(what, value, unit=""):
        rows.append((what, f"{value:,.1f}{unit}" if isinstance(value, float) else str(value)))

    if "web" in results:
        web, large, int8 = results["web"], results["12mp"], results["int8"]
        n = web["images"]
        add(f"(a) LiteRT inference alone, pre-decoded ({int8['tensors']} tensors)", web["a_inference_alone"], " img/s")
        add("(a') decode + resize alone, web-size", web["a_decode_alone"], " img/s")
        if "decode_per_core_web" in results.get("plan", {}):
            plan = results["plan"]
            add(
                "(a') decode per core, web-size / 12 MP (to size nodes)",
                f"{plan['decode_per_core_web']:.0f} / {plan['decode_per_core_12mp']:.1f} img/s",
            )
        add("bound 1/(1/a + 1/a')", web["bound"], " img/s")
        b, startup = web["b_batchclf_run"], web["startup_s_from_64_image_run"]
        add(f"(b) batchclf run, {n} images, wall incl. start-up", b["images_per_s_wall"], " img/s")
        add("(b) batchclf run, from the run's summary", b["images_per_s_summary"], " img/s")
        add(f"(b) batchclf run, after start-up (~{startup:.1f} s)", b["images_per_s_after_startup"], " img/s")
        if "thousand" in web:
            runs = web["thousand"]
            count = runs["warm_cache"]["images"]
            for label, key in (
                ("", "warm_cache"),
                (", first run, empty cache", "empty_cache"),
                (", --backend tf", "backend_tf"),
                (", worker processes (--workers N)", "worker_processes"),
            ):
                if key not in runs:
                    continue
                add(f"(b) batchclf run, {count} images{label}, wall", runs[key]["images_per_s_wall"], " img/s")
            if "e_plain_pipeline" in runs:
                add(
                    f"(e) plain pipeline, {count} images, wall", runs["e_plain_pipeline"]["images_per_s_wall"], " img/s"
                )
                add("(b) / (e), wall", f"{runs['b_over_e_wall']:.2f}")
        add(f"(c) Keras image_dataset_from_directory + predict, {n}", web["c_keras_way"]["images_per_s_wall"], " img/s")
        add(
            "b / bound (wall; summary; after start-up)",
            f"{web['b_over_bound_wall']:.2f}; {web['b_over_bound_summary']:.2f}; "
            f"{web['b_over_bound_after_startup']:.2f}",
        )
        add("b / c", f"{web['b_over_c']:.2f}")
        add("top-1 agreement b vs c (different resize code)", f"{100 * web['top1_agreement_b_c']:.1f} %")
        add(
            f"top-1 agreement b vs Keras on b's tensors ({web['same_tensors_compared']})",
            f"{100 * web['top1_agreement_b_keras_same_tensors']:.1f} %",
        )
        m, k = web["b_batchclf_run"]["memory"], web["c_keras_way"]["memory"]
        add(
            "peak memory b: driver / largest worker / total",
            f"{m['driver_mb']} / {m['worker_max_mb']} / {m['total_mb']} MB",
        )
        add("peak memory c (one process)", f"{k['driver_mb']} MB")
        add(
            f"12 MP (a') decode alone, draft / full size ({large['images']} images)",
            f"{large['a_decode_alone']:.1f} / {large['a_decode_alone_full_size']:.1f} img/s",
        )
        add("12 MP bound", large["bound"], " img/s")
        for label, key in (
            ("12 MP (b) batchclf run", "b_batchclf_run"),
            ("12 MP (b) full-size decoding", "b_full_size_decoding"),
            ("12 MP (b) worker processes (--workers N)", "b_worker_processes"),
        ):
            if key not in large:
                continue
            run = large[key]
            add(
                f"{label}, wall; after start-up",
                f"{run['images_per_s_wall']:.1f}; {run['images_per_s_after_startup']:.1f} img/s",
            )
        add("12 MP (c) Keras way, wall", large["c_keras_way"]["images_per_s_wall"], " img/s")
        if "e_plain_pipeline" in large:
            add("12 MP (e) plain pipeline, wall", large["e_plain_pipeline"]["images_per_s_wall"], " img/s")
            add("12 MP (b) / (e), wall", f"{large['b_over_e_wall']:.2f}")
        add(
            "12 MP b / full-size b (wall; after start-up)",
            f"{large['b_over_b_full_size']:.2f}; {large['b_over_b_full_size_after_startup']:.2f}",
        )
        add(
            "12 MP b / c; b / bound (wall; after start-up)",
            f"{large['b_over_c']:.2f}; {large['b_over_bound_wall']:.2f}; {large['b_over_bound_after_startup']:.2f}",
        )
        add("12 MP top-1 agreement b vs c", f"{100 * large['top1_agreement_b_c']:.1f} %")
        add(
            "int8 inference alone; speed ratio int8/fp32",
            f"{int8['a_inference_alone']:.1f} img/s; {int8['speed_ratio_int8_over_fp32']:.2f}",
        )
        add(
            "CPU ms per image fp32 / int8 (ratio; load-independent)",
            f"{int8['cpu_ms_per_image_fp32']:.1f} / {int8['cpu_ms_per_image_int8']:.1f} "
            f"({int8['cpu_speed_ratio_int8_over_fp32']:.2f})",
        )
        add(
            "int8 top-1 agreement with fp32 (same tensors)",
            f"{100 * int8['top1_agreement_with_fp32_same_tensors']:.1f} %",
        )
    for name, section in results.get("ratio", {}).items():
        low, high = section["ratio_wall_range"]
        add(
            f"{name}: batchclf / plain pipeline, wall incl. start-up ({section['images']} images, "
            f"{len(section['pairs'])} pairs)",
            f"{section['ratio_wall_median']:.3f} median ({low:.3f}-{high:.3f}); "
            f"CPU time {section['ratio_cpu_median']:.3f}",
        )
        for pair in section["pairs"]:
            b, e = pair["batchclf"], pair["plain"]
            add(
                f"  {name}: batchclf / plain",
                f"{b['images_per_s_wall']:.1f} / {e['images_per_s_wall']:.1f} img/s = {pair['ratio_wall']:.3f}",
            )
    if "scale" in results:
        s = results["scale"]
        small, big = list(s["per_image_ms_wall"])
        add(
            f"per-image ms, wall: {small} / {big} images",
            f"{s['per_image_ms_wall'][small]:.2f} / {s['per_image_ms_wall'][big]:.2f} "
            f"(ratio {s['cost_ratio_wall']:.2f})",
        )
        add(
            f"per-image ms after start-up ({s['startup_s_from_64_image_run']:.1f} s)",
            f"{s['per_image_ms_after_startup'][small]:.2f} / {s['per_image_ms_after_startup'][big]:.2f} "
            f"(ratio {s['cost_ratio_after_startup']:.2f})",
        )
        cpu = s["per_image_cpu_ms_after_startup"]
        add(
            "per-image CPU ms (all processes) after start-up",
            f"{cpu[small]:.2f} / {cpu[big]:.2f} (ratio {s['cost_ratio_cpu_after_startup']:.2f})",
        )
        add(
            f"driver peak memory: {small} / {big} images",
            f"{s['driver_peak_mb'][small]} / {s['driver_peak_mb'][big]} MB",
        )
        if "job_process_peak_mb" in s:
            add(
                f"peak memory of the process running the job: {small} / {big} images",
                f"{s['job_process_peak_mb'][small]} / {s['job_process_peak_mb'][big]} MB",
            )
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{what:<{width}}  {value}" for what, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the machine")
    parser.add_argument("--scale", action="store_true", help="measure 1,000 vs 20,000 images instead")
    parser.add_argument("--all", action="store_true", help="the main benchmark, then --scale (about 15 minutes)")
    parser.add_argument("--images", type=int, default=3000, help="web-size images for (a)-(c)")
    parser.add_argument("--thousand", type=int, default=1000, help="web-size images for the cache and tf runs")
    parser.add_argument("--large", type=int, default=400, help="12-megapixel JPEGs for (d)")
    parser.add_argument("--tensors", type=int, default=512, help="pre-decoded tensors for (a)")
    parser.add_argument("--repeat", type=int, default=4, help="passes over the tensors in (a)")
    parser.add_argument(
        "--ratio",
        action="store_true",
        help="only batchclf run against the plain pipeline (e), alternating, on --images and --large images",
    )
    parser.add_argument("--repeats", type=int, default=3, help="--ratio: pairs of runs on each image set")
    parser.add_argument(
        "--dashboard", action="store_true", help="--ratio: batchclf run with its dashboard (as on a terminal)"
    )
    parser.add_argument("--small", type=int, default=1000, help="--scale: the small run")
    parser.add_argument("--large-count", type=int, default=20000, help="--scale: the large run")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "batchclf-benchmark",
        help="where the generated images (kept between runs) and outputs go",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "benchmarks" / "results" / "throughput.json",
        help="results file; a --scale run adds its section to it",
    )
    args = parser.parse_args()
    if args.quick:
        args.images, args.large, args.tensors, args.repeat = 300, 12, 128, 1
        args.small, args.large_count, args.thousand = 200, 600, 100
        args.json = args.json.with_name("throughput-quick.json")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.workdir.mkdir(parents=True, exist_ok=True)
    compiled = compile_batchclf()
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    if args.ratio:
        parts = [("ratio_run", ratio_benchmark)]
    else:
        parts = [] if args.scale else [("main_run", main_benchmark)]
        parts += [("scale_run", scale_benchmark)] if args.scale or args.all else []
    for name, benchmark in parts:
        started = time.perf_counter()
        section = {
            "machine": machine(),
            "command": command,
            "bytecode_compiled": compiled,
            "python_executable": sys.executable,
        }
        benchmark(args, args.workdir, section)
        section["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
        section["benchmark_seconds"] = round(time.perf_counter() - started, 1)
        results[name] = section
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(table(section))
        info = section["machine"]
        print(
            f"\n{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; Python {sys.executable}, pandas "
            f"{'installed' if info['pandas_installed'] else 'not installed'}; load average "
            f"{info['load_average_at_start']} at start, {section['load_average_at_end']} at end; "
            f"{section['benchmark_seconds']:.0f} s. Results: {args.json}\n"
        )


if __name__ == "__main__":
    main()
