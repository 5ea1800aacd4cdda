"""Full-integer quantization of the built-in EfficientNet-Lite0: which recipe agrees with float, at what speed.

Every variant is converted from the same Keras model and compared with the float32 LiteRT model on the
shared images (../shared/datasets or BATCHCLF_DATASETS), decoded exactly as `batchclf run` decodes them:

  agreement   top-1 agreement with float32, overall, on the ImageNet-class images (imagenet_objects),
              and on the images float32 is sure of (top-1 probability >= 0.5) vs the others
  |dp|        mean |probability difference| of float32's top-1 class, and mean total-variation distance
  speed       images/s through batchclf's LiteRT backend (batch 32, 2 threads) relative to float32,
              from alternating passes in this one process, repeated; median and min-max of the ratios

Calibration is disjoint from evaluation: the images are split in two folds (alternate files) and each
fold is scored by a model calibrated on the other fold, so every image is evaluated once, by a model
that never saw it, except the product recipe: backends._converter on the calibration set shipped in
batchclf/models/calibration/, whose images are reduced copies of some of the shared ones. Other variants
(see VARIANTS): calibration size and variety (50 images, the whole fold, the fold with flips and crops),
per-tensor weights, float input, the stem and/or logits kept in float (the TFLite quantization debugger's
deny lists), 16x8 (int16 activations) and dynamic-range (int8 weights only).

    python benchmarks/int8.py               # about 20 minutes on an idle 2-core machine
    python benchmarks/int8.py --quick       # 3 variants, one repeat: checks that it works
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from throughput import machine  # benchmarks/ is on the path when a script there runs

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("BATCHCLF_DATASETS", REPO.parent / "shared" / "datasets"))
SHARED_SETS = ("imagenet_objects", "food_toy_appliance", "flowers_small")
SUFFIXES = (".jpg", ".jpeg", ".png")
BATCH_SIZE = 32
THREADS = 2
SURE = 0.5  # float32 top-1 probability above which an image counts as one the model is sure of


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str = "int8"  # int8, 16x8, dynamic (int8 weights, float activations)
    calibration: str = "fold"  # product (the shipped calibration set), fold, 50, augmented
    per_channel: bool = True
    input_type: str = "uint8"
    float_ops: tuple[str, ...] = ()  # TFLite op names kept in float
    float_layers: tuple[str, ...] = ()  # Keras layer-name fragments whose ops are kept in float
    notes: str = field(default="", compare=False)


VARIANTS = (
    Variant("int8 product recipe", calibration="product", notes="backends._converter, the shipped calibration set"),
    Variant("int8 calib 50", calibration="50"),
    Variant("int8 calib fold (~115)"),
    Variant("int8 calib fold x4 flips/crops", calibration="augmented"),
    Variant("int8 per-tensor weights", per_channel=False),
    Variant("int8 float input", input_type="float32"),
    Variant("int8, logits (FC) float", float_ops=("FULLY_CONNECTED",)),
    Variant("int8, stem + logits float", float_ops=("FULLY_CONNECTED",), float_layers=("normalize", "stem_")),
    Variant("16x8 (int16 activations)", mode="16x8"),
    Variant("dynamic range (int8 weights)", mode="dynamic"),
)
QUICK = ("int8 product recipe", "int8, logits (FC) float", "dynamic range (int8 weights)")


# ----------------------------------------------------------------------------- images


def shared_images() -> list[Path]:
    paths = [p for name in SHARED_SETS for p in sorted((DATASETS / name).rglob("*")) if p.suffix.lower() in SUFFIXES]
    if not paths:
        sys.exit(f"no images under {DATASETS}; set BATCHCLF_DATASETS")
    return paths


def decode_all(paths: list[Path], preprocessing) -> np.ndarray:
    from batchclf.decode import decode_image

    return np.stack([decode_image(str(p), preprocessing).pixels for p in paths])


def augmented(paths: list[Path], preprocessing) -> np.ndarray:
    """Each image four ways, through the same decoder: as scored, flipped, uncropped, and a tighter crop."""
    from dataclasses import replace

    plain = decode_all(paths, preprocessing)
    wide = decode_all(paths, replace(preprocessing, crop_fraction=1.0))
    tight = decode_all(paths, replace(preprocessing, crop_fraction=0.6))
    return np.concatenate([plain, plain[:, :, ::-1], wide, tight[:, :, ::-1]])


def calibration_pixels(variant: Variant, paths: list[Path], pixels: np.ndarray, preprocessing) -> np.ndarray:
    from batchclf.models.calibration_set import calibration_images

    if variant.calibration == "product":
        return np.stack(list(calibration_images(preprocessing)))
    if variant.calibration == "50":
        return pixels[np.linspace(0, len(pixels) - 1, 50).round().astype(int)]
    if variant.calibration == "augmented":
        return augmented(paths, preprocessing)
    return pixels


# ----------------------------------------------------------------------------- conversion


def convert(model, variant: Variant, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    from batchclf import backends

    if variant.calibration == "product":
        return backends._converter(model, lambda _model: iter(calibration)).convert()
    ops = tf.lite.OpsSet
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant.mode == "dynamic":
        return converter.convert()

    def dataset():
        for image in calibration:
            yield [image[np.newaxis].astype(np.float32)]

    converter.representative_dataset = dataset
    if variant.mode == "16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
        return converter.convert()
    converter.target_spec.supported_ops = [ops.TFLITE_BUILTINS_INT8]
    if variant.input_type == "uint8":
        converter.inference_input_type = tf.uint8
    converter._experimental_disable_per_channel = not variant.per_channel
    if not (variant.float_ops or variant.float_layers):
        return converter.convert()
    converter.target_spec.supported_ops = [ops.TFLITE_BUILTINS_INT8, ops.TFLITE_BUILTINS]
    nodes = []
    if variant.float_layers:
        names = _tensor_names(converter.convert())
        nodes = [name for name in names if any(f"/{part}" in name for part in variant.float_layers)]
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=list(variant.float_ops) or None, denylisted_nodes=nodes or None
    )
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: dataset(), debug_options=options
    )
    return debugger.get_nondebug_quantized_model()


def _tensor_names(content: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return [tensor["name"] for tensor in Interpreter(model_content=content).get_tensor_details()]


def op_counts(content: bytes) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    return dict(Counter(op["op_name"] for op in interpreter._get_ops_details()))


# ----------------------------------------------------------------------------- measuring


def backend_for(path: Path):
    from batchclf.backends import LiteRTBackend

    return LiteRTBackend(path, BATCH_SIZE, THREADS, 1000, with_features=False)


def predict_all(backend, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([backend.predict(pixels[i : i + BATCH_SIZE])[0] for i in range(0, len(pixels), BATCH_SIZE)])


def compare(got: np.ndarray, reference: np.ndarray, imagenet: np.ndarray) -> dict:
    best = reference.argmax(1)
    same = got.argmax(1) == best
    sure = reference.max(1) >= SURE
    rows = np.arange(len(best))
    return {
        "top1_agreement": float(same.mean()),
        "top1_agreement_imagenet_objects": float(same[imagenet].mean()),
        "top1_agreement_float_sure": float(same[sure].mean()),
        "top1_agreement_float_unsure": float(same[~sure].mean()) if (~sure).any() else None,
        "disagreements": int((~same).sum()),
        "float_top1_probability_of_disagreements": [round(float(p), 3) for p in reference[~same].max(1)],
        "mean_abs_prob_diff_top1": float(np.abs(got[rows, best] - reference[rows, best]).mean()),
        "mean_total_variation": float(0.5 * np.abs(got - reference).sum(1).mean()),
    }


def speed(files: dict[str, Path], pixels: np.ndarray, repeat: int) -> dict[str, dict]:
    """Alternating passes over the same tensors, one variant after another, the order rotated each repeat."""
    names = list(files)
    backends = {name: backend_for(files[name]) for name in names}
    batches = [pixels[i : i + BATCH_SIZE] for i in range(0, len(pixels), BATCH_SIZE)]
    for backend in backends.values():
        backend.predict(batches[0])
    seconds = {name: [] for name in names}
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            for batch in batches:
                backends[name].predict(batch)
            seconds[name].append(time.perf_counter() - started)
    results = {}
    for name in names:
        ratios = np.array(seconds["float32"]) / np.array(seconds[name])
        results[name] = {
            "images_per_s_median": float(len(pixels) / np.median(seconds[name])),
            "speed_ratio_median": float(np.median(ratios)),
            "speed_ratio_min": float(ratios.min()),
            "speed_ratio_max": float(ratios.max()),
        }
    return results


def evaluate(variant: Variant, model, images, reference, workdir: Path) -> tuple[dict, Path]:
    """Convert the variant once per fold, calibrated on the other fold; score each fold with its model."""
    from batchclf.backends import quiet_native_stderr

    paths, pixels, folds, imagenet, preprocessing = images
    got = np.zeros_like(reference)
    seconds, first = 0.0, None
    for k, fold in enumerate(folds):
        calibration_fold = folds[1 - k]
        calibration = calibration_pixels(
            variant, [paths[i] for i in calibration_fold], pixels[calibration_fold], preprocessing
        )
        tick = time.perf_counter()
        with quiet_native_stderr():
            content = convert(model, variant, calibration)
        seconds += time.perf_counter() - tick
        path = workdir / f"{variant.name.replace(' ', '_').replace('/', '-')}-fold{k}.tflite"
        path.write_bytes(content)
        got[fold] = predict_all(backend_for(path), pixels[fold])
        first = first or path
    row = {"recipe": asdict(variant), "calibration_images_per_fold": len(calibration)}
    row.update(compare(got, reference, imagenet))
    row.update(conversion_seconds=round(seconds, 1), ops=op_counts(first.read_bytes()))
    return row, first


def table(results: dict) -> str:
    header = ("variant", "agree", "imagenet", "sure/unsure", "|dp| top1", "TV", "speed (min-max)")
    rows = [header]
    for name, row in results["variants"].items():
        speed_row = row["speed"]
        unsure = row["top1_agreement_float_unsure"]
        rows.append(
            (
                name,
                f"{100 * row['top1_agreement']:.1f} %",
                f"{100 * row['top1_agreement_imagenet_objects']:.1f} %",
                f"{100 * row['top1_agreement_float_sure']:.1f} / {100 * unsure:.1f} %" if unsure is not None else "-",
                f"{row['mean_abs_prob_diff_top1']:.4f}",
                f"{row['mean_total_variation']:.4f}",
                f"{speed_row['speed_ratio_median']:.2f}x ({speed_row['speed_ratio_min']:.2f}-"
                f"{speed_row['speed_ratio_max']:.2f}), {speed_row['images_per_s_median']:.0f} img/s",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three variants, one repeat: checks the script")
    parser.add_argument("--variants", nargs="*", help="names of the variants to run (default: all)")
    parser.add_argument("--repeat", type=int, default=5, help="alternating speed passes per variant")
    parser.add_argument("--speed-images", type=int, default=128, help="tensors per speed pass")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "batchclf-int8", help="converted models"
    )
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/int8-<date>.json)")
    args = parser.parse_args()
    wanted = QUICK if args.quick else tuple(args.variants or (v.name for v in VARIANTS))
    unknown = set(wanted) - {v.name for v in VARIANTS}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {[v.name for v in VARIANTS]}")
    if args.quick:
        args.repeat = 1
    date = time.strftime("%Y-%m-%d", time.gmtime())
    target = args.json or REPO / "benchmarks" / "results" / f"int8-{date}{'-quick' if args.quick else ''}.json"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}

    from batchclf.backends import quiet_native_stderr, scoring_model
    from batchclf.decode import Preprocessing
    from batchclf.models import registry

    spec = registry.resolve_model()
    preprocessing = spec.preprocessing or Preprocessing(224)
    paths = shared_images()
    pixels = decode_all(paths, preprocessing)
    imagenet = np.array([p.parent.name == "imagenet_objects" for p in paths])
    folds = [np.arange(len(paths))[k::2] for k in range(2)]
    with quiet_native_stderr():
        model = scoring_model(registry.load_keras_model(spec), spec.feature_layer, False, logits=True)
        float_file = args.workdir / "float32.tflite"
        import tensorflow as tf

        float_file.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    reference = predict_all(backend_for(float_file), pixels)
    results["images"] = {"count": len(paths), "imagenet_objects": int(imagenet.sum()), "folds": [len(f) for f in folds]}
    results["float32_sure_images"] = int((reference.max(1) >= SURE).sum())
    results["variants"], results["failed"] = {}, {}
    images = (paths, pixels, folds, imagenet, preprocessing)
    files = {"float32": float_file}
    for variant in (v for v in VARIANTS if v.name in wanted):
        print(f"[{time.perf_counter() - started:5.0f} s] {variant.name}", flush=True)
        try:
            row, files[variant.name] = evaluate(variant, model, images, reference, args.workdir)
        except Exception as error:  # a recipe the converter refuses is a result too
            results["failed"][variant.name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            print(f"    failed: {results['failed'][variant.name]}", flush=True)
            continue
        results["variants"][variant.name] = row
        print(f"    agreement {100 * row['top1_agreement']:.1f} %", flush=True)
    print(f"[{time.perf_counter() - started:5.0f} s] speed", flush=True)
    speeds = speed(files, pixels[: args.speed_images], args.repeat)
    results["float32_images_per_s_median"] = speeds.pop("float32")["images_per_s_median"]
    for name, row in speeds.items():
        results["variants"][name]["speed"] = row
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(
        f"\nfloat32: {results['float32_images_per_s_median']:.0f} img/s; {len(paths)} images, "
        f"{results['float32_sure_images']} with float32 top-1 >= {SURE}; load "
        f"{results['machine']['load_average_at_start']} -> {results['load_average_at_end']}. Results: {target}"
    )


if __name__ == "__main__":
    main()
