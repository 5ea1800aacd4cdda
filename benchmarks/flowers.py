"""Transfer learning on flowers_small (5 classes, 40 images each): stratified 80:20 splits, one per seed.

Method 1 (frozen features + logistic regression): features are extracted once per network (through the
``run`` job, cached), then one cross-validated fit per seed, for each featurizer set (several networks
joined by commas have their features concatenated, as ``batchclf train --featurizer A,B`` does).
Method 2 (``--fine-tune``): one full ``train`` per seed. Prints per-seed test accuracy and log-loss,
their means, and the times.

For a set of several networks, the saved model decodes each image once, at the largest input size, and
resizes inside the model for the smaller networks, whereas training extracts each network's features
from its own decoding. ``--in-model-resize`` also scores the test images through that model's feature
layers (TensorFlow, in this process) with the same heads, to measure what the in-model resize costs.

    python benchmarks/flowers.py --seeds                 # both methods, seeds 0-4, EfficientNet-Lite0
    python benchmarks/flowers.py --methods logistic --in-model-resize \\
        --featurizers efficientnet-lite0 efficientnet-lite2 efficientnet-lite0,efficientnet-lite2
    BATCHCLF_CACHE=/tmp/cold python benchmarks/flowers.py --methods logistic   # include the first extraction
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from batchclf.training.dataset import read_dataset, stratified_split
from batchclf.training.features import ExtractionConfig, extract_concatenated
from batchclf.training.logistic import choose_l2, fit_logistic
from batchclf.training.metrics import log_loss
from batchclf.training.train import FineTuneSettings, TrainConfig, check_featurizers, parse_featurizers, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers_small"
DEFAULT_SEEDS = [0, 1, 2, 3, 4]
METHODS = ("logistic", "fine-tune")


def in_model_features(paths: list[str], featurizers: tuple[str, ...]) -> np.ndarray:
    """The concatenated features as the saved model computes them: one decoding at the largest size."""
    import keras

    from batchclf.training.artifact import CONCATENATED_FEATURES_LAYER, combined_classifier, input_size
    from batchclf.training.finetune import decode_all

    size = input_size(featurizers)
    model = combined_classifier(featurizers, 2, np.zeros((1280 * len(featurizers), 2)), np.zeros(2))
    features = keras.Model(model.inputs, model.get_layer(CONCATENATED_FEATURES_LAYER).output)
    pixels, errors = decode_all(paths, size)
    assert not errors, errors
    return np.asarray(features.predict(pixels.astype(np.float32), batch_size=16, verbose=0), dtype=np.float32)


def method_1(data, featurizers: tuple[str, ...], seeds: list[int], workers: int | None, resize: bool) -> dict:
    started = time.perf_counter()
    features = extract_concatenated(list(data.paths), ExtractionConfig(workers=workers, progress=False), featurizers)
    extraction = time.perf_counter() - started
    assert not features.errors, features.errors
    row = {path: i for i, path in enumerate(features.paths)}
    resized = None
    if resize and len(featurizers) > 1:
        tick = time.perf_counter()
        resized = in_model_features(features.paths, featurizers)
        print(f"in-model features of {len(features.paths)} images in {time.perf_counter() - tick:.0f} s", flush=True)
    classes = data.classes
    name = ",".join(featurizers)
    results = []
    for seed in seeds:
        tick = time.perf_counter()
        train_set, test_set = stratified_split(data, 0.2, seed)
        x = features.vectors[[row[p] for p in train_set.paths]]
        y = np.array([classes.index(label) for label in train_set.labels])
        cross_validation = choose_l2(x, y, len(classes), seed)
        model, _ = fit_logistic(x, y, len(classes), cross_validation.l2)
        truth = np.array([classes.index(label) for label in test_set.labels])
        test_rows = [row[p] for p in test_set.paths]
        probabilities = model.probabilities(features.vectors[test_rows])
        result = {
            "seed": seed,
            "accuracy": float(np.mean(probabilities.argmax(axis=1) == truth)),
            "log_loss": log_loss(probabilities, truth),
            "l2": cross_validation.l2,
            "seconds": round(time.perf_counter() - tick, 2),
        }
        line = f"{name} seed {seed}: accuracy {result['accuracy']:.3f}, log-loss {result['log_loss']:.3f}"
        if resized is not None:
            in_model = model.probabilities(resized[test_rows])
            result["in_model_accuracy"] = float(np.mean(in_model.argmax(axis=1) == truth))
            result["in_model_log_loss"] = log_loss(in_model, truth)
            result["in_model_agreement"] = float(np.mean(in_model.argmax(axis=1) == probabilities.argmax(axis=1)))
            line += f" (in-model resize: accuracy {result['in_model_accuracy']:.3f}, log-loss "
            line += f"{result['in_model_log_loss']:.3f}, same class {result['in_model_agreement']:.3f})"
        results.append(result)
        print(f"{line}, L2 {cross_validation.l2:.3g}, {result['seconds']:.1f} s", flush=True)
    summary = {
        "featurizers": list(featurizers),
        "feature_size": int(features.vectors.shape[1]),
        "extraction_seconds": round(extraction, 1),
        "images_decoded": features.decoded,
        "seeds": results,
        "mean_accuracy": float(np.mean([r["accuracy"] for r in results])),
        "mean_log_loss": float(np.mean([r["log_loss"] for r in results])),
    }
    if resized is not None:
        summary["in_model_mean_accuracy"] = float(np.mean([r["in_model_accuracy"] for r in results]))
        summary["in_model_mean_log_loss"] = float(np.mean([r["in_model_log_loss"] for r in results]))
    return summary


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
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=None, help="split seeds of both methods (none given: 0-4)"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="logistic (method 1), fine-tune (method 2), or both"
    )
    parser.add_argument(
        "--featurizers",
        nargs="+",
        default=["efficientnet-lite0"],
        metavar="NAME[,NAME]",
        help="method 1's featurizer sets, each one network or several joined by commas",
    )
    parser.add_argument("--in-model-resize", action="store_true", help="also score sets through the saved model")
    parser.add_argument("--epochs", type=int, default=FineTuneSettings.epochs)
    parser.add_argument("--unfreeze", type=int, default=FineTuneSettings.unfreeze)
    parser.add_argument("--learning-rate", type=float, default=FineTuneSettings.learning_rate)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    seeds = args.seeds or DEFAULT_SEEDS
    methods = [m.strip() for m in args.methods.split(",")]
    if not methods or any(m not in METHODS for m in methods):
        parser.error(f"--methods takes {' and/or '.join(METHODS)} separated by commas, got {args.methods!r}")
    sets = [parse_featurizers(text) for text in args.featurizers]
    for featurizers in sets:
        check_featurizers(featurizers)
    data = read_dataset(DATA)
    report = {"seeds": seeds, "load_average_at_start": os.getloadavg()}
    if "logistic" in methods:
        report["method_1"] = []
        for featurizers in sets:
            result = method_1(data, featurizers, seeds, args.workers, args.in_model_resize)
            report["method_1"].append(result)
            line = f"method 1, {','.join(featurizers)}: mean accuracy {result['mean_accuracy']:.3f}"
            line += f", mean log-loss {result['mean_log_loss']:.3f}"
            if "in_model_mean_accuracy" in result:
                line += f" (in-model resize: {result['in_model_mean_accuracy']:.3f})"
            print(
                f"{line} over seeds {seeds}; features of {result['images_decoded']} images decoded in "
                f"{result['extraction_seconds']} s",
                flush=True,
            )
    if "fine-tune" in methods:
        settings = FineTuneSettings(unfreeze=args.unfreeze, epochs=args.epochs, learning_rate=args.learning_rate)
        report["method_2"] = method_2(seeds, settings, args.workers)
        print(f"method 2: mean accuracy {report['method_2']['mean_accuracy']:.3f} over seeds {seeds}")
    report["load_average_at_end"] = os.getloadavg()
    start, end = report["load_average_at_start"][0], report["load_average_at_end"][0]
    print(f"load average (1 min) on {os.cpu_count()} CPUs: {start:.1f} at start, {end:.1f} at end")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
