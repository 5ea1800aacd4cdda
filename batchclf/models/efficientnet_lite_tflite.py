"""EfficientNet-Lite written straight to a float LiteRT flatbuffer from the checkpoint, without TensorFlow.

TensorFlow's converter takes about 20 s to turn the Keras model into the same graph; this writes it op
by op in well under a second, with LiteRT's own schema (``ai_edge_litert.schema_py_generated``). It
mirrors what the converter makes of ``efficientnet_lite.build_efficientnet_lite``: the input
normalisation as MUL and ADD (it cannot be folded into the stem, whose "same" padding pads the
normalised image with zeros), each convolution with its batch norm folded into weights and bias and
ReLU6 fused, ADD for the residuals, MEAN for the pooled features (an optional second output),
FULLY_CONNECTED and SOFTMAX. The layer layout comes from ``efficientnet_lite.block_layouts``.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from .efficientnet_lite import (
    BATCH_NORM_EPSILON,
    CLASSIFIER,
    FEATURE_LAYER,
    HEAD,
    PIXEL_MEAN,
    PIXEL_STD,
    STEM,
    ConvKeys,
    batch_norm,
    block_layouts,
    check_all_used,
)

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
BUFFER_ALIGNMENT = 16  # what the schema asks of buffer data (force_align), so weights can be used in place
INPUT_NAME = "image"
PROBABILITIES_NAME = "probabilities"
TENSOR_TYPES = {np.dtype(np.float32): schema.TensorType.FLOAT32, np.dtype(np.int32): schema.TensorType.INT32}
CONVOLUTIONS = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D)


class _AlignedBuffer(schema.BufferT):
    """A constant's bytes, packed on a 16-byte boundary (the generated ``Pack`` aligns to one byte)."""

    def Pack(self, builder):  # noqa: N802 (the schema's name)
        data = self.data
        builder.StartVector(1, len(data), BUFFER_ALIGNMENT)
        builder.head -= len(data)
        builder.Bytes[builder.head : builder.head + len(data)] = data
        builder.vectorNumElems = len(data)
        vector = builder.EndVector()
        schema.BufferStart(builder)
        schema.BufferAddData(builder, vector)
        return schema.BufferEnd(builder)


class _Graph:
    """One subgraph being written: tensors, their buffers, operators and the operator codes they use."""

    def __init__(self):
        self.tensors: list[schema.TensorT] = []
        self.buffers: list[schema.BufferT] = [schema.BufferT()]  # buffer 0: "no data", by convention
        self.operators: list[schema.OperatorT] = []
        self.codes: dict[int, int] = {}
        self.shapes: list[tuple[int, ...]] = []

    def _tensor(self, name: str, shape: tuple[int, ...], dtype: int, buffer: int, batched: bool) -> int:
        tensor = schema.TensorT()
        tensor.name, tensor.type, tensor.buffer = name, dtype, buffer
        tensor.shape = np.array(shape, np.int32)
        if batched:  # the batch is resized at load time (``resize_tensor_input``)
            tensor.shapeSignature = np.array((-1, *shape[1:]), np.int32)
        self.tensors.append(tensor)
        self.shapes.append(shape)
        return len(self.tensors) - 1

    def constant(self, name: str, values: np.ndarray) -> int:
        values = np.ascontiguousarray(values)
        buffer = _AlignedBuffer()
        buffer.data = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
        self.buffers.append(buffer)
        return self._tensor(name, values.shape, TENSOR_TYPES[values.dtype], len(self.buffers) - 1, batched=False)

    def activation(self, name: str, shape: tuple[int, ...]) -> int:
        return self._tensor(name, shape, schema.TensorType.FLOAT32, 0, batched=True)

    def operator(self, code: int, inputs: list[int], output: int, options_type: int = 0, options=None) -> int:
        op = schema.OperatorT()
        op.opcodeIndex = self.codes.setdefault(code, len(self.codes))
        op.inputs, op.outputs = np.array(inputs, np.int32), np.array([output], np.int32)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.operators.append(op)
        return output

    def code_of(self, op: schema.OperatorT) -> int:
        return next(code for code, index in self.codes.items() if index == op.opcodeIndex)

    def operator_codes(self) -> list[schema.OperatorCodeT]:
        codes = []
        for code in sorted(self.codes, key=self.codes.get):
            entry = schema.OperatorCodeT()
            entry.builtinCode = code
            entry.deprecatedBuiltinCode = min(code, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            entry.version = 1
            codes.append(entry)
        return codes


def _fold(weights: dict[str, np.ndarray], keys: ConvKeys) -> tuple[np.ndarray, np.ndarray]:
    """The convolution's kernel (PyTorch layout, output channels first) and a bias with the batch norm folded in."""
    gamma, beta, mean, variance = (v.astype(np.float32) for v in batch_norm(weights, keys.batch_norm))
    scale = (gamma / np.sqrt(variance + np.float32(BATCH_NORM_EPSILON))).astype(np.float32)
    kernel = weights[keys.conv].astype(np.float32) * scale[:, None, None, None]
    return kernel, (beta - mean * scale).astype(np.float32)


def _same_size(size: int, stride: int) -> int:
    return -(-size // stride)  # "same" padding: TFLite's SAME pads like Keras, more at the bottom and right


def _conv(graph: _Graph, x: int, weights, keys: ConvKeys, stride: int, relu6: bool, name: str) -> int:
    kernel, bias = _fold(weights, keys)
    _, height, width, _ = graph.shapes[x]
    options = schema.Conv2DOptionsT()
    options.padding, options.strideH, options.strideW = schema.Padding.SAME, stride, stride
    options.fusedActivationFunction = schema.ActivationFunctionType.RELU6 if relu6 else 0
    inputs = [x, graph.constant(f"{name}/kernel", kernel.transpose(0, 2, 3, 1)), graph.constant(f"{name}/bias", bias)]
    shape = (1, _same_size(height, stride), _same_size(width, stride), kernel.shape[0])
    output = graph.activation(name, shape)
    return graph.operator(schema.BuiltinOperator.CONV_2D, inputs, output, schema.BuiltinOptions.Conv2DOptions, options)


def _depthwise(graph: _Graph, x: int, weights, keys: ConvKeys, stride: int, name: str) -> int:
    kernel, bias = _fold(weights, keys)  # (channels, 1, k, k)
    _, height, width, channels = graph.shapes[x]
    options = schema.DepthwiseConv2DOptionsT()
    options.padding, options.strideH, options.strideW = schema.Padding.SAME, stride, stride
    options.depthMultiplier = 1
    options.fusedActivationFunction = schema.ActivationFunctionType.RELU6
    inputs = [x, graph.constant(f"{name}/kernel", kernel.transpose(1, 2, 3, 0)), graph.constant(f"{name}/bias", bias)]
    output = graph.activation(name, (1, _same_size(height, stride), _same_size(width, stride), channels))
    return graph.operator(
        schema.BuiltinOperator.DEPTHWISE_CONV_2D, inputs, output, schema.BuiltinOptions.DepthwiseConv2DOptions, options
    )


def _elementwise(graph: _Graph, code: int, x: int, y: int, name: str) -> int:
    options, kind = (
        (schema.AddOptionsT(), schema.BuiltinOptions.AddOptions)
        if code == schema.BuiltinOperator.ADD
        else (schema.MulOptionsT(), schema.BuiltinOptions.MulOptions)
    )
    return graph.operator(code, [x, y], graph.activation(name, graph.shapes[x]), kind, options)


def build_tflite(weights: dict[str, np.ndarray], image_size: int, with_features: bool = False) -> bytes:
    """The float LiteRT model of EfficientNet-Lite: uint8-range RGB in (as float32), class probabilities out.

    With ``with_features`` the pooled features (the Keras model's ``avg_pool``) are a second output.
    """
    graph = _Graph()

    def conv(x, keys, stride, relu6, name):
        return _conv(graph, x, weights, keys, stride, relu6, name)

    image = graph.activation(INPUT_NAME, (1, image_size, image_size, 3))
    scale = graph.constant("normalize/scale", np.array(1.0 / PIXEL_STD, np.float32))
    offset = graph.constant("normalize/offset", np.array(-PIXEL_MEAN / PIXEL_STD, np.float32))
    x = _elementwise(graph, schema.BuiltinOperator.MUL, image, scale, "normalize/mul")
    x = _elementwise(graph, schema.BuiltinOperator.ADD, x, offset, "normalize")
    x = conv(x, STEM, 2, True, "stem")
    for block in block_layouts(weights):
        prefix = f"block{block.index}"
        shortcut = x
        if block.expand_filters is not None:
            x = conv(x, block.expand, 1, True, f"{prefix}_expand")
        x = _depthwise(graph, x, weights, block.depthwise, block.stride, f"{prefix}_dwconv")
        x = conv(x, block.project, 1, False, f"{prefix}_project")
        if block.residual:
            x = _elementwise(graph, schema.BuiltinOperator.ADD, shortcut, x, f"{prefix}_add")
    x = conv(x, HEAD, 1, True, "head")

    reducer = schema.ReducerOptionsT()
    reducer.keepDims = False
    axes = graph.constant(f"{FEATURE_LAYER}/axes", np.array([1, 2], np.int32))
    features = graph.activation(FEATURE_LAYER, (1, graph.shapes[x][-1]))
    graph.operator(schema.BuiltinOperator.MEAN, [x, axes], features, schema.BuiltinOptions.ReducerOptions, reducer)

    kernel, bias = (weights[key].astype(np.float32) for key in CLASSIFIER)  # (classes, features): LiteRT's layout
    convolutions = sum(graph.code_of(op) in CONVOLUTIONS for op in graph.operators)
    check_all_used(weights, 5 * convolutions + len(CLASSIFIER))  # a kernel and 4 batch-norm tensors each
    logits = graph.activation("logits", (1, kernel.shape[0]))
    graph.operator(
        schema.BuiltinOperator.FULLY_CONNECTED,
        [features, graph.constant("logits/kernel", kernel), graph.constant("logits/bias", bias)],
        logits,
        schema.BuiltinOptions.FullyConnectedOptions,
        schema.FullyConnectedOptionsT(),
    )
    softmax = schema.SoftmaxOptionsT()
    softmax.beta = 1.0
    probabilities = graph.activation(PROBABILITIES_NAME, (1, kernel.shape[0]))
    graph.operator(
        schema.BuiltinOperator.SOFTMAX, [logits], probabilities, schema.BuiltinOptions.SoftmaxOptions, softmax
    )
    outputs = [probabilities, features] if with_features else [probabilities]
    return _serialise(graph, [image], outputs)


def _serialise(graph: _Graph, inputs: list[int], outputs: list[int]) -> bytes:
    subgraph = schema.SubGraphT()
    subgraph.name = "main"
    subgraph.tensors, subgraph.operators = graph.tensors, graph.operators
    subgraph.inputs, subgraph.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)

    def tensor_map(name: str, index: int) -> schema.TensorMapT:
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, index
        return entry

    signature = schema.SignatureDefT()  # as the converter names them: the image in, output_0 (and output_1) out
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs = [tensor_map(INPUT_NAME, inputs[0])]
    signature.outputs = [tensor_map(f"output_{i}", index) for i, index in enumerate(outputs)]

    model = schema.ModelT()
    model.version, model.description = SCHEMA_VERSION, "batchclf EfficientNet-Lite"
    model.operatorCodes, model.subgraphs, model.buffers = graph.operator_codes(), [subgraph], graph.buffers
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(sum(len(b.data) for b in graph.buffers[1:]) + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
