"""Transfer learning on flowers_small (5 classes, 40 images each): stratified 80:20 splits, one per seed.

Method 1 (frozen features + logistic regression): features are extracted once (through the ``run``
job, cached), then one cross-validated fit per seed. Method 2 (``--fine-tune``): one full ``train``
per seed. Prints per-seed test accuracy and log-loss, their means, and the times.

    python benchmarks/flowers.py                        # method 1, seeds 0-4, and method 2, seeds 0-4
    python benchmarks/flowers.py --fine-tune-seeds      # method 1 only
    BATCHCLF_CACHE=/tmp/cold python benchmarks/flowers.py --fine-tune-seeds   # include the first extraction
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from batchclf.dataset import read_dataset, stratified_split
from batchclf.features import ExtractionConfig, extract_features
from batchclf.logistic import choose_l2, fit_logistic, log_loss
from batchclf.train import FineTuneSettings, TrainConfig, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers_small"


def method_1(data, seeds: list[int], workers: int | None) -> dict:
    started = time.perf_counter()
    features = extract_features(list(data.paths), ExtractionConfig(workers=workers, progress=False))
    extraction = time.perf_counter() - started
    row = {path: i for i, path in enumerate(features.paths)}
    classes = data.classes
    results = []
    for seed in seeds:
        tick = time.perf_counter()
        train_set, test_set = stratified_split(data, 0.2, seed)
        x = features.vectors[[row[p] for p in train_set.paths]]
        y = np.array([classes.index(label) for label in train_set.labels])
        cross_validation = choose_l2(x, y, len(classes), seed)
        model, _ = fit_logistic(x, y, len(classes), cross_validation.l2)
        truth = np.array([classes.index(label) for label in test_set.labels])
        probabilities = model.probabilities(features.vectors[[row[p] for p in test_set.paths]])
        results.append(
            {
                "seed": seed,
                "accuracy": float(np.mean(probabilities.argmax(axis=1) == truth)),
                "log_loss": log_loss(probabilities, truth),
                "l2": cross_validation.l2,
                "seconds": round(time.perf_counter() - tick, 2),
            }
        )
        print(
            f"method 1 seed {seed}: accuracy {results[-1]['accuracy']:.3f}, log-loss {results[-1]['log_loss']:.3f}, "
            f"L2 {cross_validation.l2:.3g}, {results[-1]['seconds']:.1f} s",
            flush=True,
        )
    return {
        "extraction_seconds": round(extraction, 1),
        "images_decoded": features.decoded,
        "seeds": results,
        "mean_accuracy": float(np.mean([r["accuracy"] for r in results])),
        "mean_log_loss": float(np.mean([r["log_loss"] for r in results])),
    }


def method_2(seeds: list[int], settings: FineTuneSettings, workers: int | None) -> dict:
    results = []
    for seed in seeds:
        tick = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            config = TrainConfig(
                DATA,
                Path(scratch) / "model",
                test_fraction=0.2,
                seed=seed,
                fine_tune=settings,
                extraction=ExtractionConfig(workers=workers, progress=False),
            )
            result = train(config, log=lambda *args, **kwargs: print(*args, flush=True))
        test = result.metadata["metrics"]["test"]
        results.append(
            {
                "seed": seed,
                "accuracy": test["micro_accuracy"],
                "log_loss": test["log_loss"],
                "epochs_run": result.metadata["hyperparameters"]["epochs_run"],
                "seconds": round(time.perf_counter() - tick, 1),
            }
        )
        print(
            f"method 2 seed {seed}: accuracy {test['micro_accuracy']:.3f}, log-loss {test['log_loss']:.3f}, "
            f"{results[-1]['epochs_run']} epochs, {results[-1]['seconds']:.0f} s",
            flush=True,
        )
    return {
        "settings": settings.__dict__,
        "seeds": results,
        "mean_accuracy": float(np.mean([r["accuracy"] for r in results])),
        "mean_log_loss": float(np.mean([r["log_loss"] for r in results])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4], help="method 1 seeds")
    parser.add_argument("--fine-tune-seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4], help="method 2 seeds")
    parser.add_argument("--epochs", type=int, default=FineTuneSettings.epochs)
    parser.add_argument("--unfreeze", type=int, default=FineTuneSettings.unfreeze)
    parser.add_argument("--learning-rate", type=float, default=FineTuneSettings.learning_rate)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    data = read_dataset(DATA)
    report = {}
    if args.seeds:
        report["method_1"] = method_1(data, args.seeds, args.workers)
        print(
            f"method 1: mean accuracy {report['method_1']['mean_accuracy']:.3f} over seeds {args.seeds}; "
            f"features of {report['method_1']['images_decoded']} images decoded in "
            f"{report['method_1']['extraction_seconds']} s"
        )
    if args.fine_tune_seeds:
        settings = FineTuneSettings(unfreeze=args.unfreeze, epochs=args.epochs, learning_rate=args.learning_rate)
        report["method_2"] = method_2(args.fine_tune_seeds, settings, args.workers)
        print(f"method 2: mean accuracy {report['method_2']['mean_accuracy']:.3f} over seeds {args.fine_tune_seeds}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
