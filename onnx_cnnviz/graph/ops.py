"""The op taxonomy every graph walk and rewrite reads, and the one way to read a node's attributes.

Each set names one property of an ``ai.onnx`` op_type that some pass relies on. Sets that look alike but answer
different questions stay apart (a CAM head may pass a Dropout but not a Transpose; the score search the reverse).
"""
from __future__ import annotations

import onnx
from onnx import helper


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """The value of one attribute of a node.

    Args:
        node: the node.
        name: the attribute's name.
        default: what to return when the node does not set it.

    Returns:
        The value (strings decoded), or ``default``.
    """
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


# --- ops that keep the values -------------------------------------------------------------------------------------
# A new shape, the same values in the same row-major order: walking back through them keeps a weight matrix aligned.
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
# Return their input unchanged at inference (Dropout only drops in training).
INFERENCE_IDENTITIES = {"Identity", "Dropout"}
# Same values in the same order: what lies behind them is the same tensor for a CAM head.
ORDER_KEEPING_VIEWS = RESHAPES | INFERENCE_IDENTITIES
# What an exporter may put between the class normaliser and the graph output: the normaliser still ends the classifier.
SCORE_VIEWS = RESHAPES | {"Identity", "Transpose"}
# The final normalisers the score is taken before (Simonyan et al.; Grad-CAM explain the unnormalised class score).
NORMALISERS = {"Softmax", "LogSoftmax", "Sigmoid"}

# --- elementwise ops ----------------------------------------------------------------------------------------------
# Elementwise activations (PRelu with a learnt slope, the others without parameters).
ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"}
# Ops that keep a convolution's output on its grid and channels: walking back through them from a layer finds its conv.
CHANNEL_KEEPING = ACTIVATIONS | INFERENCE_IDENTITIES | {"BatchNormalization", "InstanceNormalization", "Mul", "Add",
                                                       "Div", "Sub"}
# Applied value by value (with constant parameters): a box of the input gives the same box of the output.
POINTWISE = ACTIVATIONS | INFERENCE_IDENTITIES | {
    "Celu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Abs", "Neg", "Sqrt", "Reciprocal",
    "BatchNormalization", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Cast", "Where"}

# --- windows and reductions over space ----------------------------------------------------------------------------
# Slide a kernel over the grid (kernel, strides, dilations, pads): their receptive-field geometry is modelled.
SLIDING_WINDOWS = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}
# The sliding windows incremental occlusion recomputes on boxes (it re-runs them with zero padding on assembled maps).
BOXABLE_WINDOWS = {"Conv", "MaxPool", "AveragePool"}
# Collapse H and W to 1x1 whatever the map's size.
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
# Reduce over axes given as attribute or input; over H and W they collapse space like a global pool.
REDUCTIONS = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceLogSumExp"}
# Collapses of space with a windowed equivalent: the fully convolutional rewrite slides that window instead.
WINDOWED_EQUIVALENT = {"GlobalAveragePool": "AveragePool", "GlobalMaxPool": "MaxPool", "ReduceMean": "AveragePool",
                       "ReduceMax": "MaxPool"}
# Resample the grid or move the spatial axes: no unit of their output has a receptive field of (size, jump, start).
RESAMPLING = {"Resize", "Upsample", "ConvTranspose", "DepthToSpace", "SpaceToDepth", "Transpose", "Col2Im",
              "GridSample", "Reshape", "Flatten", "Slice", "Gather", "Tile", "Expand"}
# Can leave a map exactly as it is when the output has the input's shape (VGG's adaptive 7x7 -> 7x7 AveragePool).
SHAPE_KEEPING_NO_OPS = INFERENCE_IDENTITIES | {"AveragePool", "MaxPool"}

# --- classifier heads -----------------------------------------------------------------------------------------------
# Fully connected layers: x (N, C) times a weight matrix.
DENSE = {"Gemm", "MatMul"}
# Layers with weights whose input is the representation they classify (a 1x1 classifier Conv included).
LINEAR_LAYERS = DENSE | {"Conv"}
# Where a flattening collapses (N, C, h, w) to (N, C*h*w): the fully convolutional rewrite keeps the 4-D map there.
FLATTENINGS = {"Flatten", "Reshape", "Squeeze"}
# What a classifier puts around its linear layers (views, pooling, bias Add, ReLU, BatchNorm, Dropout, a final
# normaliser): the walk from the score to the penultimate representation passes them.
HEAD_GLUE = ORDER_KEEPING_VIEWS | NORMALISERS | {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
                                                 "AveragePool", "Relu", "Add", "BatchNormalization"}
