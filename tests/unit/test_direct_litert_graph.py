"""The LiteRT graph written straight from EfficientNet-Lite0's weights: its ops, shapes and outputs.

The checkpoint here is made of zeros with Lite0's tensor shapes, listed from the paper's table
(stages: repeats, kernel, expansion, output channels), an oracle independent of the builder's own
``block_layouts``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from batchclf import backends, worker
from batchclf.decode import Preprocessing
from batchclf.models.efficientnet_lite_tflite import build_tflite
from batchclf.models.registry import ModelSpec

# EfficientNet-Lite0: (repeats, kernel, expansion, output channels) of its seven stages.
LITE0_STAGES = (
    (1, 3, 1, 16),
    (2, 3, 6, 24),
    (2, 5, 6, 40),
    (3, 3, 6, 80),
    (3, 5, 6, 112),
    (4, 5, 6, 192),
    (1, 3, 6, 320),
)
OPERATOR_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def _conv(weights: dict, conv: str, batch_norm: str, shape: tuple[int, ...]) -> None:
    weights[conv] = np.zeros(shape, np.float32)
    for name in ("weight", "bias", "running_mean", "running_var"):
        weights[f"{batch_norm}.{name}"] = np.ones(shape[0], np.float32)
    weights[f"{batch_norm}.num_batches_tracked"] = np.zeros((), np.int64)


@pytest.fixture(scope="module")
def lite0_weights() -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    _conv(weights, "_conv_stem.weight", "_bn0", (32, 3, 3, 3))
    channels, index = 32, 0
    for repeats, kernel, expansion, output in LITE0_STAGES:
        for _ in range(repeats):
            prefix, hidden = f"_blocks.{index}.", channels * expansion
            if expansion != 1:
                _conv(weights, prefix + "_expand_conv.weight", prefix + "_bn0", (hidden, channels, 1, 1))
            _conv(weights, prefix + "_depthwise_conv.weight", prefix + "_bn1", (hidden, 1, kernel, kernel))
            _conv(weights, prefix + "_project_conv.weight", prefix + "_bn2", (output, hidden, 1, 1))
            channels, index = output, index + 1
    _conv(weights, "_conv_head.weight", "_bn1", (1280, 320, 1, 1))
    weights["_fc.weight"] = np.zeros((1000, 1280), np.float32)
    weights["_fc.bias"] = np.zeros(1000, np.float32)
    return weights


def _read(content: bytes) -> schema.ModelT:
    assert content[4:8] == b"TFL3"
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))


@pytest.fixture(scope="module")
def graphs(lite0_weights):
    return {features: _read(build_tflite(lite0_weights, 224, features)) for features in (False, True)}


def _ops(model: schema.ModelT) -> list[tuple[str, schema.OperatorT]]:
    codes = model.operatorCodes
    return [(OPERATOR_NAMES[codes[op.opcodeIndex].builtinCode], op) for op in model.subgraphs[0].operators]


def test_the_ops_are_those_the_converter_makes_of_the_keras_model(graphs):
    """63 ops, as TensorFlow's converter makes of the Keras Lite0: batch norms folded, ReLU6 fused."""
    for model in graphs.values():
        assert Counter(name for name, _ in _ops(model)) == {
            "MUL": 1,  # normalisation: x / 128 ...
            "ADD": 1 + 9,  # ... - 127/128, and the nine residual connections
            "CONV_2D": 33,  # stem, 15 expansions, 16 projections, head
            "DEPTHWISE_CONV_2D": 16,
            "MEAN": 1,
            "FULLY_CONNECTED": 1,
            "SOFTMAX": 1,
        }
        assert len(model.subgraphs) == 1 and model.version == 3
        assert all(code.version == 1 for code in model.operatorCodes)


def test_strides_padding_and_fused_activations(graphs):
    ops = _ops(graphs[False])
    depthwise = [op.builtinOptions for name, op in ops if name == "DEPTHWISE_CONV_2D"]
    strides = [d.strideH for d in depthwise]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    convs = [op.builtinOptions for name, op in ops if name == "CONV_2D"]
    assert {c.padding for c in convs + depthwise} == {schema.Padding.SAME}
    relu6 = schema.ActivationFunctionType.RELU6
    assert all(d.fusedActivationFunction == relu6 for d in depthwise)
    assert sum(c.fusedActivationFunction == relu6 for c in convs) == 1 + 15 + 1  # stem, expansions, head
    assert sum(c.fusedActivationFunction == 0 for c in convs) == 16  # projections: linear


def test_shapes_inputs_and_outputs(graphs):
    for features, model in graphs.items():
        subgraph = model.subgraphs[0]
        tensors = subgraph.tensors
        (image,) = [tensors[i] for i in subgraph.inputs]
        assert list(image.shape) == [1, 224, 224, 3] and list(image.shapeSignature) == [-1, 224, 224, 3]
        assert image.type == schema.TensorType.FLOAT32
        outputs = [tensors[i] for i in subgraph.outputs]
        assert [list(t.shape) for t in outputs] == ([[1, 1000], [1, 1280]] if features else [[1, 1000]])
        assert [t.name for t in outputs] == ([b"probabilities", b"avg_pool"] if features else [b"probabilities"])
        sizes = [tensors[op.outputs[0]].shape[1] for name, op in _ops(model) if name == "DEPTHWISE_CONV_2D"]
        assert sorted(set(sizes), reverse=True) == [112, 56, 28, 14, 7]  # "same" padding: ceil(size / stride)
        signature = model.signatureDefs[0]
        assert [m.name for m in signature.outputs] == [f"output_{i}".encode() for i in range(len(outputs))]


def test_every_constant_is_aligned_for_use_in_place(lite0_weights):
    content = build_tflite(lite0_weights, 224)
    model = schema.Model.GetRootAs(content, 0)
    for index in range(1, model.BuffersLength()):
        buffer = model.Buffers(index)
        assert buffer.DataLength() > 0
        start = buffer._tab.Vector(buffer._tab.Offset(4))  # where the data bytes begin in the file
        assert start % 16 == 0, index


def test_a_checkpoint_with_a_tensor_the_graph_does_not_use_is_refused(lite0_weights):
    with pytest.raises(ValueError, match="loaded 247 of 248 tensors"):
        build_tflite({**lite0_weights, "_extra.weight": np.zeros(3, np.float32)}, 224)


def test_the_direct_file_has_its_own_cache_key_and_int8_still_converts():
    """A file TensorFlow's converter made for the same model and outputs is never taken for the direct one."""
    spec = ModelSpec("efficientnet-lite0", "builtin", "efficientnet-lite0", ("a",) * 1000, Preprocessing(224))
    direct = worker._conversion_key(spec, worker.ScoringOptions())
    assert direct == backends.conversion_key(spec.id, False, direct=True)
    assert direct != backends.conversion_key(spec.id, False)
    assert worker._conversion_key(spec, worker.ScoringOptions(embeddings=True)) != direct
    assert worker._written_directly(spec, worker.ScoringOptions())
    assert not worker._written_directly(spec, worker.ScoringOptions(quantize="int8"))
    user = ModelSpec("m@1234", "keras", "/m.keras", ("a", "b"), Preprocessing(224))
    assert not worker._written_directly(user, worker.ScoringOptions())


def test_a_converted_model_with_a_feature_layer_is_one_file_with_and_without_embeddings():
    """The conversion (about 20 s) keeps the pooled features whenever the model has them, in float: a run with
    ``--embeddings`` after one without reuses its file. int8 and a model without a feature layer keep one per choice."""
    trained = ModelSpec("food@1234", "keras", "/food/model.keras", ("a", "b"), Preprocessing(224), "avg_pool")
    plain, embeddings = worker.ScoringOptions(), worker.ScoringOptions(embeddings=True)
    assert worker._conversion_key(trained, plain) == worker._conversion_key(trained, embeddings)
    assert worker._conversion_key(trained, plain) == backends.conversion_key(trained.id, True)
    int8 = worker.ScoringOptions(quantize="int8")
    assert worker._conversion_key(trained, int8) != worker._conversion_key(trained, replace(int8, embeddings=True))
    bare = replace(trained, feature_layer=None)
    assert worker._conversion_key(bare, plain) == backends.conversion_key(bare.id, False)
