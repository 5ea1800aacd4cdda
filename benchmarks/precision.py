"""float32 against int8 (`--quantize int8`) on real ImageNet photos: accuracy, agreement and speed.

Both precisions score the same folder of ImageNet photos end to end with `batchclf run` (a subprocess
each, start-up included), alternating float32 and int8 so that both see the same machine:

  accuracy    top-1 (and top-5) against the true class, which the file name gives: the photos of
              imagenet_sample_500 are named after their WordNet synset (`n01440764_tench.JPEG`) and are
              the classes of even index, so the class index is twice the synset's rank in the folder
  agreement   share of photos whose int8 top-1 is float32's top-1, overall and where float32's top-1
              probability is at least 0.5 (the photos the model is sure of) or below
  speed       images/s from wall time (start-up included) and from the run's own timer, median of the
              repeats; the int8 model is built (and cached) by a warm-up run of each precision first

    python benchmarks/precision.py                    # 500 photos, 3 repeats: about 6 minutes idle
    python benchmarks/precision.py --repeats 1        # one timed pass of each
    python benchmarks/precision.py --images DIR       # another folder named the same way

Two ImageNet classes share a name with another class ("crane", "maillot"); a prediction is counted
right when its name is the true class's name, which credits those two pairs either way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from throughput import batchclf_run, machine  # benchmarks/ is on the path when a script there runs

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("BATCHCLF_DATASETS", REPO.parent / "shared" / "datasets"))
SURE = 0.5
PRECISIONS = {"float32": [], "int8": ["--quantize", "int8"]}


def true_labels(folder: Path) -> dict[str, str]:
    """Relative path → true class name, from the synset id that starts each file name."""
    from batchclf.models.registry import imagenet_labels

    labels = imagenet_labels()
    files = sorted(p.name for p in folder.iterdir() if p.name.startswith("n") and "_" in p.name)
    synsets = sorted({name.split("_", 1)[0] for name in files})
    if len(synsets) != len(files):
        sys.exit(f"{folder}: expected one photo per synset, got {len(files)} photos of {len(synsets)} synsets")
    if len(synsets) == 500:  # imagenet_sample_500: the classes of even index
        index = {synset: 2 * rank for rank, synset in enumerate(synsets)}
    elif len(synsets) == len(labels):
        index = {synset: rank for rank, synset in enumerate(synsets)}
    else:
        sys.exit(f"{folder}: {len(synsets)} synsets; expected 500 (every other class) or {len(labels)}")
    return {name: labels[index[name.split("_", 1)[0]]] for name in files}


def rows(output: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["path", "label", "score", "topk", "status"]).to_pylist()
    return {row["path"]: row for row in table}


def quality(truth: dict[str, str], float_rows: dict, int8_rows: dict) -> dict:
    def accuracy(found: dict, k: int) -> float:
        right = sum(truth[path] in [entry["label"] for entry in (found[path]["topk"] or [])[:k]] for path in truth)
        return right / len(truth)

    def agree(paths) -> dict:
        paths = list(paths)
        same = sum(float_rows[p]["label"] == int8_rows[p]["label"] for p in paths)
        return {"photos": len(paths), "agreement": same / len(paths) if paths else None}

    sure = [p for p in truth if (float_rows[p]["score"] or 0) >= SURE]
    unsure = [p for p in truth if (float_rows[p]["score"] or 0) < SURE]
    return {
        "photos": len(truth),
        "errors": {
            "float32": sum(float_rows[p]["status"] != "ok" for p in truth),
            "int8": sum(int8_rows[p]["status"] != "ok" for p in truth),
        },
        "top1": {"float32": accuracy(float_rows, 1), "int8": accuracy(int8_rows, 1)},
        "top5": {"float32": accuracy(float_rows, 5), "int8": accuracy(int8_rows, 5)},
        "agreement": agree(truth),
        "agreement_float_sure": agree(sure),
        "agreement_float_unsure": agree(unsure),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DATASETS / "imagenet_sample_500")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"{args.images} is not a folder; give --images or set BATCHCLF_DATASETS")
    truth = true_labels(args.images)
    results = {"machine": machine(), "images": str(args.images), "repeats": args.repeats, "runs": {}}
    with tempfile.TemporaryDirectory() as workdir:
        outputs = {name: Path(workdir) / f"{name}.parquet" for name in PRECISIONS}
        env = {"BATCHCLF_CACHE": os.environ.get("BATCHCLF_CACHE", str(Path(workdir) / "cache"))}
        for name, extra in PRECISIONS.items():  # warm-up: builds and caches the int8 model
            batchclf_run(args.images, outputs[name], ["--top-k", "5", *extra], env)
        runs = {name: [] for name in PRECISIONS}
        for repeat in range(args.repeats):
            for name, extra in PRECISIONS.items():
                outputs[name].unlink()
                run = batchclf_run(args.images, outputs[name], ["--top-k", "5", *extra], env)
                runs[name].append(run)
                print(
                    f"repeat {repeat + 1} {name:8s} {run['wall_s']:6.2f} s wall, "
                    f"{run['images_per_s_wall']:6.1f} img/s wall, {run['images_per_s_summary']:6.1f} img/s run",
                    flush=True,
                )
        found = quality(truth, rows(outputs["float32"]), rows(outputs["int8"]))
    for name, measured in runs.items():
        results["runs"][name] = {
            "wall_s": [r["wall_s"] for r in measured],
            "images_per_s_wall": statistics.median(r["images_per_s_wall"] for r in measured),
            "images_per_s_run": statistics.median(r["images_per_s_summary"] for r in measured),
        }
    wall = {name: results["runs"][name]["images_per_s_wall"] for name in PRECISIONS}
    run = {name: results["runs"][name]["images_per_s_run"] for name in PRECISIONS}
    results["speedup_wall"] = wall["int8"] / wall["float32"]
    results["speedup_run"] = run["int8"] / run["float32"]
    results["quality"] = found
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]

    top1, top5 = found["top1"], found["top5"]
    print(
        f"\n{found['photos']} photos, {args.repeats} timed repeat(s); load average at start "
        f"{results['machine']['load_average_at_start']}, at end {results['load_average_at_end']}"
    )
    print(
        f"top-1 accuracy   float32 {top1['float32']:.1%}   int8 {top1['int8']:.1%}   "
        f"difference {100 * (top1['int8'] - top1['float32']):+.1f} points"
    )
    print(f"top-5 accuracy   float32 {top5['float32']:.1%}   int8 {top5['int8']:.1%}")
    print(
        f"top-1 agreement  {found['agreement']['agreement']:.1%} of {found['agreement']['photos']}; "
        f"float sure (p >= {SURE}) {found['agreement_float_sure']['agreement']:.1%} of "
        f"{found['agreement_float_sure']['photos']}, unsure {found['agreement_float_unsure']['agreement']:.1%} of "
        f"{found['agreement_float_unsure']['photos']}"
    )
    print(f"images/s wall    float32 {wall['float32']:.1f}   int8 {wall['int8']:.1f}   x{results['speedup_wall']:.2f}")
    print(f"images/s run     float32 {run['float32']:.1f}   int8 {run['int8']:.1f}   x{results['speedup_run']:.2f}")
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved {args.save}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{time.perf_counter() - start:.0f} s in all")
