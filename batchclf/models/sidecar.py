"""The input a ``.onnx`` or ``.tflite`` model expects, from a small JSON file beside it.

Such files carry no preprocessing of their own the way a Keras model can (normalisation layers), so
``MODEL.json`` (e.g. ``resnet50.onnx.json``) says how the image was prepared in training:
``image_size``, ``crop_fraction``, ``interpolation``, and the normalisation
``input = (pixel * scale - mean) / std`` per RGB channel. Missing keys take the format's defaults.
Decoding still yields uint8 HxWx3; the backend applies the normalisation and the layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

INTERPOLATIONS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputFormat:
    """How uint8 RGB pixels become the model's input tensor."""

    layout: str = "NHWC"  # or "NCHW"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """A batch of uint8 NHWC pixels as the float32 tensor the model takes."""
        values = pixels.astype(np.float32)
        if not self.is_identity:
            mean = np.asarray(self.mean, np.float32)
            std = np.asarray(self.std, np.float32)
            values = (values * np.float32(self.scale) - mean) / std
        if self.layout == "NCHW":
            values = np.ascontiguousarray(values.transpose(0, 3, 1, 2))
        return values


@dataclass(frozen=True)
class SidecarDefaults:
    image_size: int | None  # None: the model's input shape must give it
    crop_fraction: float = 0.875
    interpolation: str = "bicubic"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


# A typical torchvision / timm ImageNet export: 224 px, crop 0.875, bilinear, ImageNet mean and std on 0-1.
ONNX_DEFAULTS = SidecarDefaults(224, 0.875, "bilinear", 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
# A .tflite converted from Keras takes 0-255 pixels and normalises inside, like the built-in models.
TFLITE_DEFAULTS = SidecarDefaults(None, 0.875, "bicubic")


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


NORMALISATION_KEYS = ("scale", "mean", "std")


def read_sidecar(model_path: Path, defaults: SidecarDefaults, carried: tuple | None = None) -> dict:
    """The sidecar's settings over ``defaults``, checked: a typo is refused, not silently ignored.

    ``carried``: the (mean, std) the model file itself says (a ``.tflite``'s metadata), used unless
    the sidecar sets any of scale, mean or std, which then replace it whole.
    """
    settings = {
        "image_size": defaults.image_size,
        "crop_fraction": defaults.crop_fraction,
        "interpolation": defaults.interpolation,
        "scale": defaults.scale,
        "mean": defaults.mean,
        "std": defaults.std,
    }
    path = sidecar_path(model_path)
    if carried is not None:
        settings["mean"], settings["std"] = carried
    if not path.is_file():
        return settings
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}; write a JSON object of preprocessing settings") from None
    if not isinstance(given, dict):
        raise UsageError(f"{path} must hold a JSON object of preprocessing settings")
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise UsageError(f"{path}: unknown setting {', '.join(unknown)}; known: {', '.join(settings)}")
    if carried is not None and any(key in given for key in NORMALISATION_KEYS):
        settings.update(scale=defaults.scale, mean=defaults.mean, std=defaults.std)
    settings.update(given)
    _check(path, settings)
    settings["mean"], settings["std"] = tuple(map(float, settings["mean"])), tuple(map(float, settings["std"]))
    return settings


def _check(path: Path, settings: dict) -> None:
    size = settings["image_size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise UsageError(f"{path}: image_size must be a positive whole number of pixels, got {size!r}")
    crop = settings["crop_fraction"]
    if not isinstance(crop, int | float) or not 0 < crop <= 1:
        raise UsageError(f"{path}: crop_fraction must be in (0, 1], got {crop!r}")
    if settings["interpolation"] not in INTERPOLATIONS:
        raise UsageError(f"{path}: interpolation must be one of {', '.join(INTERPOLATIONS)}")
    if not isinstance(settings["scale"], int | float) or settings["scale"] <= 0:
        raise UsageError(f"{path}: scale must be a positive number, got {settings['scale']!r}")
    for name in ("mean", "std"):
        value = settings[name]
        if not (isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(v, int | float) for v in value)):
            raise UsageError(f"{path}: {name} must be three numbers (R, G, B), got {value!r}")
    if min(settings["std"]) <= 0:
        raise UsageError(f"{path}: std must be positive, got {settings['std']!r}")
