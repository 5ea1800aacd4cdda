"""``batchclf predict``: classify a few images in this process and print their top classes.

No cluster and no output file: the arguments are checked first, then ``batchclf.Classifier`` builds the
model once and scores each image in turn. An image that cannot be decoded is reported and the others
still print; the exit status says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config import BACKENDS, DEFAULT_TOP_K
from ..errors import EXIT_ALL_FAILED, UsageError
from .common import DefaultsHelpFormatter, add_model_arguments

EXIT_IMAGE_FAILED = EXIT_ALL_FAILED  # 3: as for `run`, images that could not be decoded
PREDICT_EXIT_CODES_HELP = """exit codes:
  0    every image was classified
  2    usage error: bad option, missing image, unknown model
  3    some image could not be decoded (the others are printed)
  130  interrupted (Ctrl-C)
"""


def add_parser(subparsers) -> None:
    predict = subparsers.add_parser(
        "predict",
        help="classify a few images here and print their top classes",
        description="Classify each IMAGE in this process (no cluster, no output file) and print its top "
        "classes, best first.",
        formatter_class=DefaultsHelpFormatter,
        epilog=PREDICT_EXIT_CODES_HELP,
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    add_model_arguments(predict)
    predict.add_argument(
        "--backend", default="auto", choices=BACKENDS, help="inference engine: auto picks LiteRT on CPU, TF on GPU"
    )
    predict.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes printed for each image")
    predict.add_argument(
        "--json", action="store_true", help="one JSON object a line: image, status, label, score, topk (or error)"
    )
    predict.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Check the images and options, then load the model once and print each image's classes."""
    if args.top_k < 1:
        raise UsageError(f"--top-k must be a positive number, got {args.top_k}")
    for image in args.images:
        if image.is_dir():
            raise UsageError(f"{image} is a folder: give image files, or classify a folder with 'batchclf run'")
        if not image.exists():
            raise UsageError(f"image not found: {image}")

    from ..classifier import Classifier
    from ..decode import ImageDecodeError

    classifier = Classifier(args.model, args.backend, args.top_k, labels=args.labels, trust_model=args.trust_model)
    failed = 0
    for image in args.images:
        try:
            prediction = classifier.predict(image)
        except (ImageDecodeError, OSError) as error:  # OSError: the file went away since it was checked
            failed += 1
            reason = str(error) if isinstance(error, ImageDecodeError) else error.strerror or str(error)
            if args.json:
                print(json.dumps({"image": os.fspath(image), "status": "error", "error": reason}), flush=True)
            else:
                print(f"batchclf: {image}: {reason}", file=sys.stderr, flush=True)
            continue
        if args.json:
            print(json.dumps({"image": os.fspath(image), "status": "ok", **prediction.to_dict()}), flush=True)
        else:
            print(format_prediction(prediction, heading=len(args.images) > 1), flush=True)
    return EXIT_IMAGE_FAILED if failed else 0


def format_prediction(prediction, heading: bool) -> str:
    """``label  score`` lines, best first; with ``heading``, the image's path above them."""
    width = max(len(category.label) for category in prediction.categories)
    lines = [f"{category.label:<{width}}  {category.score:.4f}" for category in prediction.categories]
    if heading:
        lines = [f"{prediction.image}:"] + [f"  {line}" for line in lines]
    return "\n".join(lines)
