"""``batchclf train``: a custom classifier on top of the pretrained network, saved as a model folder.

Method 1 (default) freezes the network and fits multinomial logistic regression on its pooled
features (extracted by the ``run`` job, cached). Method 2 (``fine_tune``) also retrains the top blocks
of the network with Keras (see ``finetune.py``), starting from the method-1 head. Either way the
result is one Keras model (network up to ``avg_pool`` + a ``Dense`` softmax head) with its labels and
a ``metadata.json`` that records how it was made and how well it did.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..backends import quiet_native_stderr
from ..config import FineTuneSettings
from ..errors import UsageError
from ..models.efficientnet_lite import FEATURE_LAYER
from ..models.registry import BUILTIN_MODELS, DEFAULT_MODEL, resolve_model
from .artifact import (
    CONCATENATED_FEATURES_LAYER,
    base_network,
    check_model_dir,
    classifier,
    combined_classifier,
    input_size,
    save_model_dir,
)
from .dataset import (
    LabelledImages,
    check_known_labels,
    check_trainable,
    data_fingerprint,
    read_dataset,
    stratified_split,
)
from .features import ExtractionConfig, Features, extract_concatenated, featurizer_id
from .logistic import choose_l2, fit_logistic
from .metrics import compute_metrics

LARGEST_SEED = 2**32 - 1  # NumPy's and Keras's global seeds are 32-bit


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    model_dir: Path
    images: Path | None = None
    test: Path | None = None
    test_images: Path | None = None
    test_fraction: float = 0.2
    seed: int = 0
    l2: float | None = None  # None: chosen by cross-validation
    fine_tune: FineTuneSettings | None = None
    featurizers: tuple[str, ...] = (DEFAULT_MODEL,)  # built-in networks whose pooled features are concatenated
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    verbose: bool = False

    def validate(self) -> None:
        """Every option checked before any work, each message naming the value given."""
        if not 0 <= self.seed <= LARGEST_SEED:
            raise UsageError(f"--seed must be a whole number from 0 to {LARGEST_SEED}, got {self.seed}")
        if self.extraction.workers is not None and self.extraction.workers < 1:
            raise UsageError(f"--workers must be a positive number, got {self.extraction.workers}")
        if self.test_images is not None and self.test is None:
            raise UsageError("--test-images gives the folder of the --test TSV's images; it needs --test")
        if not 0.0 <= self.test_fraction < 1.0:
            raise UsageError(f"--test-fraction must be at least 0 and below 1, got {self.test_fraction}")
        if self.l2 is not None and self.l2 < 0:
            raise UsageError(f"--l2 must not be negative, got {self.l2}")
        if self.fine_tune:
            settings = self.fine_tune
            for option, value in (("--epochs", settings.epochs), ("--batch-size", settings.batch_size)):
                if value < 1:
                    raise UsageError(f"{option} must be a positive number, got {value}")
            for option, value in (("--unfreeze", settings.unfreeze), ("--patience", settings.patience)):
                if value < 0:
                    raise UsageError(f"{option} must be 0 or more, got {value}")
            if settings.learning_rate <= 0:
                raise UsageError(f"--learning-rate must be positive, got {settings.learning_rate}")
            if not 0.0 < settings.validation_fraction < 1.0:
                raise UsageError(f"--validation-fraction must be between 0 and 1, got {settings.validation_fraction}")
        check_featurizers(self.featurizers)
        if self.fine_tune and len(self.featurizers) > 1:
            raise UsageError(
                f"--fine-tune retrains one network; got --featurizer {','.join(self.featurizers)}: give one"
            )
        check_model_dir(self.model_dir)


def parse_featurizers(text: str) -> tuple[str, ...]:
    """``--featurizer lite0,lite2`` → the network names, in order (the order of the concatenated features)."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise UsageError(f"--featurizer takes built-in model names separated by commas, got {text!r}")
    return names


def check_featurizers(featurizers: tuple[str, ...]) -> None:
    if not featurizers:
        raise UsageError("--featurizer needs at least one built-in model name")
    for name in featurizers:
        if name not in BUILTIN_MODELS:
            raise UsageError(f"--featurizer {name!r} is not a built-in model; choose from {', '.join(BUILTIN_MODELS)}")
        resolve_model(name)  # its weights package is installed
    repeated = sorted({name for name in featurizers if featurizers.count(name) > 1})
    if repeated:
        raise UsageError(f"--featurizer names {repeated[0]} twice; give each network once")


@dataclass
class TrainResult:
    classes: tuple[str, ...]
    metadata: dict
    seconds: float = 0.0
    unreadable: dict = field(default_factory=dict)


def _load_data(config: TrainConfig) -> tuple[LabelledImages, LabelledImages | None]:
    """Read and check everything before any image is decoded."""
    data = read_dataset(config.data, config.images)
    check_trainable(data)
    if config.test is not None:
        test = read_dataset(config.test, config.test_images, "--test-images")
        check_known_labels(test, data.classes)
    elif config.test_fraction == 0:
        test = None
    else:
        data, test = stratified_split(data, config.test_fraction, config.seed)
    if config.fine_tune and not len(stratified_split(data, config.fine_tune.validation_fraction, config.seed)[1]):
        raise UsageError("no training image is left for validation; raise --validation-fraction or add images")
    return data, test


def _drop_unreadable(data: LabelledImages, features: Features) -> LabelledImages:
    readable = set(features.paths)
    return data.subset([i for i, path in enumerate(data.paths) if path in readable])


def _matrix(data: LabelledImages, features: Features) -> np.ndarray:
    row = {path: i for i, path in enumerate(features.paths)}
    return features.vectors[[row[path] for path in data.paths]]


def _fit_head(config: TrainConfig, train_data: LabelledImages, features: Features, classes: tuple[str, ...], log):
    """Method 1's classifier (and method 2's starting head): L2 logistic regression on the pooled features."""
    head_data = train_data
    if config.fine_tune:  # the head must not see the images that decide when fine-tuning stops
        head_data = stratified_split(train_data, config.fine_tune.validation_fraction, config.seed)[0]
    x_head = _matrix(head_data, features)
    y_head = np.array([classes.index(label) for label in head_data.labels])
    cross_validation, l2, chosen_by = None, config.l2, "given"
    if config.l2 is None:
        cross_validation = choose_l2(x_head, y_head, len(classes), config.seed)
        l2 = cross_validation.l2
        if cross_validation.folds:
            chosen_by = f"{cross_validation.folds}-fold cross-validation"
            log(f"L2 strength {l2:.3g} chosen by {chosen_by}", file=sys.stderr)
        else:
            chosen_by = "default"
            log(f"a class has a single image, too few to cross-validate: L2 strength {l2:.3g}", file=sys.stderr)
    head, _ = fit_logistic(x_head, y_head, len(classes), l2)
    if not head.converged:
        log(f"warning: L-BFGS stopped after {head.iterations} iterations before converging", file=sys.stderr)
    hyperparameters = {
        "l2": l2,
        "l2_chosen_by": chosen_by,
        "iterations": head.iterations,
        "converged": head.converged,
        "seed": config.seed,
    }
    return head, hyperparameters, cross_validation


def train(config: TrainConfig, log=print) -> TrainResult:
    """Train, evaluate on the test images, and write ``config.model_dir``."""
    started = time.perf_counter()
    config.validate()
    train_data, test_data = _load_data(config)
    paths = list(dict.fromkeys(train_data.paths + (test_data.paths if test_data else ())))
    features = extract_concatenated(paths, config.extraction, config.featurizers, log=log)
    if features.errors:
        log(f"skipped {len(features.errors)} unreadable images", file=sys.stderr)
        if config.verbose:
            named = {**(test_data.described() if test_data else {}), **train_data.described()}
            for path, error in features.errors.items():
                log(f"  {named[path]}: {error}", file=sys.stderr)
    train_data = _drop_unreadable(train_data, features)
    check_trainable(train_data, "readable training data")
    classes = train_data.classes
    x_train = _matrix(train_data, features)

    head, hyperparameters, cross_validation = _fit_head(config, train_data, features, classes, log)
    if len(config.featurizers) == 1:
        model = classifier(base_network(config.featurizers[0]), len(classes), head.weights, head.bias)
    else:
        model = combined_classifier(config.featurizers, len(classes), head.weights, head.bias)
    if config.fine_tune:
        from .finetune import fine_tune, refit_head

        history = fine_tune(
            model, train_data, classes, config.fine_tune, config.seed, base_model_name=config.featurizers[0], log=log
        )
        final_head = refit_head(model, train_data, classes, config.seed)
        hyperparameters = {
            **asdict(config.fine_tune),
            "seed": config.seed,
            "head_initialised_by": hyperparameters,
            "epochs_run": len(history),
            "history": history,
            "final_head": final_head,
        }
        train_probabilities = _predict_pixels(model, train_data, log)
    else:
        train_probabilities = head.probabilities(x_train)

    metrics = {"train": _rounded(compute_metrics(train_data.labels, train_probabilities, classes))}
    test_digests: list[str] = []
    if test_data is not None:
        test_data = _drop_unreadable(test_data, features)
        if len(test_data):
            if config.fine_tune:
                test_probabilities = _predict_pixels(model, test_data, log)
            else:
                test_probabilities = head.probabilities(_matrix(test_data, features))
            metrics["test"] = _rounded(compute_metrics(test_data.labels, test_probabilities, classes))
            test_digests = _digests(test_data, features)
    metadata = {
        "format": "batchclf-model",
        "batchclf_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classes": list(classes),
        "image_size": input_size(config.featurizers),
        "crop_fraction": resolve_model(config.featurizers[0]).preprocessing.crop_fraction,
        "input": "RGB pixels 0..255, float32, shape (batch, size, size, 3); normalisation is inside the model",
        "feature_layer": FEATURE_LAYER if len(config.featurizers) == 1 else CONCATENATED_FEATURES_LAYER,
        "base_model": ",".join(config.featurizers),
        "featurizers": list(config.featurizers),
        "featurizer": "+".join(
            featurizer_id(ExtractionConfig(**{**asdict(config.extraction), "model": name}))
            for name in config.featurizers
        ),
        "feature_size": int(features.vectors.shape[1]),
        "method": "fine-tune" if config.fine_tune else "logistic-regression",
        "hyperparameters": hyperparameters,
        "metrics": metrics,
        "data": {
            "train": _describe(config.data, train_data, features),
            "test": None
            if test_data is None
            else {
                **_describe(config.test or config.data, test_data, features, test_digests),
                "split": None if config.test else {"test_fraction": config.test_fraction, "seed": config.seed},
            },
            "unreadable": len(features.errors),
        },
    }
    if cross_validation and cross_validation.folds:
        metadata["cross_validation"] = {f"{k:.3g}": round(v, 6) for k, v in cross_validation.scores.items()}
    save_model_dir(model, config.model_dir, classes, metadata)
    return TrainResult(classes, metadata, time.perf_counter() - started, features.errors)


def _digests(data: LabelledImages, features: Features) -> list[str]:
    digest = dict(zip(features.paths, features.digests))
    return [digest[path] for path in data.paths]


def _describe(source: Path, data: LabelledImages, features: Features, digests: list[str] | None = None) -> dict:
    digests = digests or _digests(data, features)
    return {
        "source": str(source),
        "images": len(data),
        "per_class": {label: data.labels.count(label) for label in data.classes},
        "fingerprint": data_fingerprint(digests, list(data.labels)),
    }


def _predict_pixels(model, data: LabelledImages, log) -> np.ndarray:
    from .finetune import decode_all

    pixels, _ = decode_all(list(data.paths), model.inputs[0].shape[1])
    with quiet_native_stderr():
        return np.asarray(model.predict(pixels.astype(np.float32), batch_size=32, verbose=0), dtype=np.float64)


def _rounded(metrics: dict) -> dict:
    def walk(value):
        if isinstance(value, float):
            return float(f"{value:.6g}")
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(metrics)


def summary_lines(result: TrainResult) -> list[str]:
    metadata = result.metadata
    lines = [
        f"trained {metadata['method']} on {metadata['data']['train']['images']} images, "
        f"{len(result.classes)} classes ({', '.join(result.classes)}) in {result.seconds:.1f} s"
    ]
    for split in ("train", "test"):
        if split in metadata["metrics"]:
            m = metadata["metrics"][split]
            lines.append(
                f"{split}: {m['images']} images, micro accuracy {m['micro_accuracy']:.4f}, "
                f"macro accuracy {m['macro_accuracy']:.4f}, log-loss {m['log_loss']:.4f}"
            )
    return lines
