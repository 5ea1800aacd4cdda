"""How many classes a user model outputs, found in the driver without importing TensorFlow.

A label list that does not match the model would fail every shard, so the driver compares the two
before any work. Keras files say it in their config (a ``.keras`` zip's ``config.json``, an ``.h5``
file's ``model_config`` attribute); when the config does not (a custom last layer, a SavedModel),
a short subprocess loads the model and reports its output shape, so the driver itself stays light.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import UsageError

# Layers whose output has the shape of their input: the class count is found further back.
SHAPE_PRESERVING = {
    "Activation",
    "Softmax",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "Dropout",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "BatchNormalization",
    "LayerNormalization",
    "Rescaling",
    "Identity",
}
CODE_LAYERS = {"Lambda"}  # layers whose config carries Python code
PROBE_TIMEOUT = 600


def keras_output_size(kind: str, source: Path, trusted: bool = False) -> int:
    """The class count of a ``.keras``/``.h5`` file or SavedModel folder; a model that cannot load is refused.

    A Keras file with a ``Lambda`` layer holds Python code that runs on load: refused unless ``trusted``.
    """
    config = keras_config(kind, source)
    if config is not None and _layer_classes(config) & CODE_LAYERS and not trusted:
        raise UsageError(
            f"model {source} holds a Lambda layer, Python code that would run on load (Keras safe mode refuses it); "
            "pass --trust-model if you trust whoever made it, or rebuild it with built-in layers only"
        )
    size = _config_output_size(config) if config is not None else None
    return size if size is not None else _probe_output_size(kind, source, trusted)


def keras_config(kind: str, source: Path) -> dict | None:
    """The model config a Keras file stores (no TensorFlow needed), or None where there is none to read."""
    try:
        if kind == "keras" and zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                config = json.loads(archive.read("config.json"))
        elif kind == "keras" and source.suffix == ".h5":
            config = _h5_config(source)
        else:
            return None
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None
    return config if isinstance(config, dict) else None


def _layer_classes(config: object) -> set[str]:
    """Every ``class_name`` anywhere in a config, nested models and wrappers included."""
    found: set[str] = set()
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("class_name"), str):
                found.add(item["class_name"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _h5_config(source: Path) -> dict | None:
    import h5py

    with h5py.File(source, "r") as file:
        text = file.attrs.get("model_config")
    if text is None:
        return None
    return json.loads(text.decode() if isinstance(text, bytes) else text)


def _layer_name(layer: dict) -> str | None:
    return layer.get("name") or layer.get("config", {}).get("name")


def _inbound_name(layer: dict) -> str | None:
    """The layer feeding ``layer``, in the Keras 3 and the Keras 2 config formats."""
    nodes = layer.get("inbound_nodes") or []
    if not nodes:
        return None
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [{"class_name": "__keras_tensor__", "config": {...}}]}
        args = node.get("args") or []
        if args and isinstance(args[0], dict):
            history = args[0].get("config", {}).get("keras_history")
            return history[0] if history else None
        return None
    if isinstance(node, list) and node and isinstance(node[0], list):  # Keras 2: [[name, node, tensor, {}]]
        return node[0][0]
    return None


def _config_output_size(model: dict, depth: int = 0) -> int | None:
    """Walk back from the model's first output through shape-preserving layers to a ``Dense``."""
    if depth > 8:
        return None
    config = model.get("config") or {}
    layers = config.get("layers") or []
    if not layers:
        return None
    by_name = {_layer_name(layer): layer for layer in layers}
    if model.get("class_name") == "Sequential":
        layer, previous = layers[-1], {id(layers[i + 1]): layers[i] for i in range(len(layers) - 1)}
        inbound = lambda current: previous.get(id(current))  # noqa: E731
    else:
        outputs = config.get("output_layers") or []
        if not outputs:
            return None
        first = outputs[0] if isinstance(outputs[0], list) else outputs
        layer = by_name.get(first[0])
        inbound = lambda current: by_name.get(_inbound_name(current))  # noqa: E731
    for _ in range(len(layers)):
        if layer is None:
            return None
        name = layer.get("class_name")
        if name == "Dense":
            units = layer.get("config", {}).get("units")
            return units if isinstance(units, int) else None
        if name in ("Functional", "Sequential", "Model"):
            return _config_output_size(layer, depth + 1)
        if name not in SHAPE_PRESERVING:
            return None
        layer = inbound(layer)
    return None


PROBE = """
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from batchclf.models.registry import ModelSpec, load_keras_model
spec = ModelSpec("probe", sys.argv[1], sys.argv[2], (), None, trusted=sys.argv[3] == "trusted")
model = load_keras_model(spec)
print(json.dumps({"classes": int(model.outputs[0].shape[-1])}))
"""


def _probe_output_size(kind: str, source: Path, trusted: bool) -> int:
    """Load the model in a subprocess (TensorFlow stays out of the driver) and read its output width."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", PROBE, kind, str(source), "trusted" if trusted else "untrusted"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise UsageError(f"model {source} did not load within {PROBE_TIMEOUT} s; check that it is a model") from None
    lines = result.stdout.strip().splitlines()
    if result.returncode == 0 and lines:
        try:
            return int(json.loads(lines[-1])["classes"])
        except (ValueError, KeyError, TypeError):
            pass
    reason = next((line for line in reversed(result.stderr.strip().splitlines()) if line.strip()), "unknown error")
    raise UsageError(f"cannot load model {source}: {reason.strip()[:300]}")
