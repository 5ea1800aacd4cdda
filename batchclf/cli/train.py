"""The ``train`` and ``evaluate`` commands: parse, build the config, call the library, print the result."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import BACKENDS, BUILTIN_MODEL_NAMES, DEFAULT_MODEL, FineTuneSettings
from .common import DefaultsHelpFormatter

DATA_HELP = "a tags.tsv file (image_path<TAB>label, paths relative to its folder) or a folder of class folders"


def add_parser(subparsers) -> None:
    _add_train(subparsers)
    _add_evaluate(subparsers)


def _add_cluster_options(parser) -> None:
    group = parser.add_argument_group("feature extraction (the same job as 'run')")
    group.add_argument("--backend", default="auto", choices=BACKENDS, help="inference engine")
    group.add_argument("--workers", type=int, default=None, help="worker processes of the embedded cluster")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS", help="attach to a running Dask scheduler")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument(
        "--verbose", action="store_true", help="list unreadable images (and, for evaluate, every prediction)"
    )


def _add_train(subparsers) -> None:

    defaults = FineTuneSettings()
    train = subparsers.add_parser(
        "train",
        help="train a classifier for your own classes on top of the pretrained network",
        description="Train a classifier of the labelled images in DATA and write it to MODEL_DIR (model.keras, "
        "labels.txt, metadata.json), ready for 'batchclf run --model MODEL_DIR'. By default the network is "
        "frozen and a logistic regression is fit on its pooled features; --fine-tune also retrains its top blocks.",
        formatter_class=DefaultsHelpFormatter,
    )
    train.add_argument("data", type=Path, help=DATA_HELP)
    train.add_argument("model_dir", type=Path, help="folder to write the trained model to")
    train.add_argument("--images", type=Path, default=None, help="folder the TSV's image paths are relative to")
    train.add_argument(
        "--featurizer",
        default=DEFAULT_MODEL,
        metavar="NAME[,NAME]",
        help=f"the pretrained network ({', '.join(BUILTIN_MODEL_NAMES)}), or several separated by commas whose "
        "pooled features are concatenated",
    )
    split = train.add_argument_group("test set")
    split.add_argument("--test", type=Path, default=None, metavar="DATA", help="a separate labelled test set")
    split.add_argument(
        "--test-images",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder the --test TSV's image paths are relative to (default: the TSV's folder)",
    )
    split.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="hold out this fraction of each class for testing (default 0.2 without --test)",
    )
    split.add_argument("--seed", type=int, default=0, help="seed of the split, the cross-validation and training")
    method = train.add_argument_group("method 1: logistic regression on frozen features")
    method.add_argument(
        "--l2", type=float, default=None, help="L2 regularisation strength (default: chosen by cross-validation)"
    )
    tune = train.add_argument_group("method 2: fine-tuning")
    tune.add_argument("--fine-tune", action="store_true", help="also retrain the top blocks of the network")
    tune.add_argument("--unfreeze", type=int, default=defaults.unfreeze, help="blocks retrained, from the top")
    tune.add_argument("--epochs", type=int, default=defaults.epochs, help="most epochs (early stopping may end sooner)")
    tune.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per training step")
    tune.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="Adam learning rate")
    tune.add_argument(
        "--validation-fraction",
        type=float,
        default=defaults.validation_fraction,
        help="fraction of the training images used to stop early",
    )
    tune.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help="epochs without a better validation loss before stopping",
    )
    _add_cluster_options(train)
    train.set_defaults(handler=_train)


def _train(args) -> int:
    from ..errors import UsageError
    from ..training.features import ExtractionConfig
    from ..training.train import TrainConfig, parse_featurizers, summary_lines, train

    if args.test is not None and args.test_fraction is not None:
        raise UsageError("give --test or --test-fraction, not both")
    fine_tune = None
    if args.fine_tune:
        fine_tune = FineTuneSettings(
            args.unfreeze, args.epochs, args.batch_size, args.learning_rate, args.validation_fraction, args.patience
        )
    config = TrainConfig(
        data=args.data,
        model_dir=args.model_dir,
        images=args.images,
        test=args.test,
        test_images=args.test_images,
        test_fraction=0.2 if args.test_fraction is None else args.test_fraction,
        seed=args.seed,
        l2=args.l2,
        fine_tune=fine_tune,
        featurizers=parse_featurizers(args.featurizer),
        verbose=args.verbose,
        extraction=ExtractionConfig(
            backend=args.backend, workers=args.workers, scheduler=args.scheduler, progress=args.progress
        ),
    )
    result = train(config, log=print)
    for line in summary_lines(result):
        print(line)
    print(f"model written to {args.model_dir}")
    return 0


def _add_evaluate(subparsers) -> None:

    evaluate = subparsers.add_parser(
        "evaluate",
        help="measure a model on labelled images: accuracy, log-loss, per-class scores, confusion matrix",
        description="Score the labelled images in DATA with a model (a folder written by 'batchclf train', or a "
        "built-in ImageNet model when the labels are ImageNet class names) and report micro and macro accuracy, "
        "log-loss, per-class log-loss, precision, recall and F1, and the confusion matrix.",
        formatter_class=DefaultsHelpFormatter,
    )
    evaluate.add_argument("data", type=Path, help=DATA_HELP)
    evaluate.add_argument(
        "--model", default=DEFAULT_MODEL, help="a trained model folder, a built-in model, or a model file as for run"
    )
    evaluate.add_argument(
        "--trust-model",
        action="store_true",
        help="allow a model whose loading runs the code it holds (a SavedModel, a Keras Lambda layer)",
    )
    evaluate.add_argument("--images", type=Path, default=None, help="folder the TSV's image paths are relative to")
    evaluate.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    evaluate.add_argument("--batch-size", type=int, default=32, help="images per inference batch")
    _add_cluster_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from ..training.evaluate import EvaluateConfig, check_json_target, evaluate, format_report, write_json

    if args.json is not None:
        check_json_target(args.json)
    config = EvaluateConfig(
        data=args.data,
        model=args.model,
        images=args.images,
        backend=args.backend,
        batch_size=args.batch_size,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=args.progress,
        trust_model=args.trust_model,
    )
    report = evaluate(config, log=print)
    print(format_report(report, args.verbose))
    if args.json is not None:
        write_json(report, args.json)
        print(f"report written to {args.json}", file=sys.stderr)
    return 0
