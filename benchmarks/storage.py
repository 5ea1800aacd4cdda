"""Throughput from an S3 API server (moto, local) against the same images on local disk.

    python benchmarks/storage.py [--copies 2]

Builds a folder of hard links to the shared image sets (``--copies`` times each), uploads it once to a
bucket on a moto server started here, then measures (1) raw reads, objects/s with 1 and 8 threads
(``store.read_object`` against ``decode.read_file``), and (2) ``batchclf run`` wall time on each.
Results go to ``benchmarks/results/storage.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = ("imagenet_objects", "food_toy_appliance", "flowers_small")
RESULTS = Path(__file__).resolve().parent / "results" / "storage.json"


def build_tree(root: Path, copies: int) -> list[str]:
    names = []
    for copy in range(copies):
        for name in SETS:
            for file in sorted((DATASETS / name).rglob("*")):
                if file.suffix.lower() in (".jpg", ".jpeg", ".png") and file.is_file():
                    relative = f"c{copy}/{name}/{file.relative_to(DATASETS / name).as_posix()}"
                    (root / relative).parent.mkdir(parents=True, exist_ok=True)
                    os.link(file, root / relative)
                    names.append(relative)
    return names


def reads_per_second(read, paths: list[str], threads: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, paths))
    return len(paths) / (time.perf_counter() - started)


def timed_run(source: str, output: Path, extra: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "batchclf", "run", source, str(output), "--no-progress", *extra],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from batchclf.decode import read_file
    from batchclf.store import StorageOptions, read_object

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2)
    args = parser.parse_args()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    settings = {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    )
    client.create_bucket(Bucket="bench-images")
    results: dict = {"load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "images"
        names = build_tree(tree, args.copies)
        started = time.perf_counter()
        for name in names:
            client.upload_file(str(tree / name), "bench-images", f"images/{name}")
        results["images"] = len(names)
        results["upload_seconds"] = round(time.perf_counter() - started, 2)
        options = StorageOptions(settings)
        urls = [f"s3://bench-images/images/{n}" for n in names]
        for threads in (1, 8):
            results[f"s3_reads_per_s_{threads}_threads"] = round(
                reads_per_second(lambda u: read_object(u, options), urls, threads), 1
            )
            results[f"local_reads_per_s_{threads}_threads"] = round(
                reads_per_second(read_file, [str(tree / n) for n in names], threads), 1
            )
        options_text = json.dumps(settings)
        for label, source, extra in (
            ("local", str(tree), []),
            ("s3", "s3://bench-images/images", ["--storage-options", options_text]),
        ):
            seconds = timed_run(source, Path(scratch) / f"{label}.parquet", extra)
            results[f"run_{label}_seconds"] = round(seconds, 2)
            results[f"run_{label}_images_per_s"] = round(len(names) / seconds, 1)
    server.stop()
    results["load_after"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
