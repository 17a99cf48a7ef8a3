"""Receptive fields computed from the graph: published values and the support of a unit's gradient."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import ModelStructureError
from onnx_cnnviz.methods.receptive_field import receptive_field

from ..conftest import CACHE, export_onnx


def _gradient_support(m, layer, c, i, j, x):
    """Input box (x0, y0, x1, y1) of the nonzero gradient of unit (c, i, j): the field actually used."""
    shape = m.layer(layer).shape
    seed = np.zeros((1, *shape[1:]), np.float32)
    seed[0, c, i, j] = 1.0
    g = np.abs(m.vjp(x, layer, seed).grads[m.input_name][0]).max(axis=0)
    ys, xs = np.nonzero(g)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def test_resnet18_published(torchvision_onnx):
    """torchvision ResNet-18: layer1 r=43, layer4 r=435, effective stride 4 / 32, effective padding 21 / 217
    (3 + 1*2 + 4*1*4 = 21)."""
    _, path, size = torchvision_onnx("resnet18")
    m = cv.load(path)
    layer1 = receptive_field(m, "/layer1/layer1.1/relu_1/Relu_output_0")
    assert layer1.size == (43, 43) and layer1.jump == (4, 4) and layer1.padding == (21, 21)
    layer4 = receptive_field(m, "/layer4/layer4.1/relu_1/Relu_output_0")
    assert layer4.size == (435, 435) and layer4.jump == (32, 32) and layer4.padding == (217, 217)
    # the downsample branch (1x1 stride 2) is smaller: the union over the Add takes the larger main path
    down = receptive_field(m, "/layer4/layer4.0/downsample/downsample.0/Conv_output_0")
    assert down.size == (211, 211)
    assert receptive_field(m, "/layer4/layer4.0/Add_output_0").size == (307, 307)
    # boxes: unit (0, 0) of layer4 starts 217 px into the padding and is clipped to the image
    assert layer4.box(0, 0, clip=False) == (-217, -217, 218, 218)
    assert layer4.box(0, 0) == (0, 0, size, size)


def test_vgg16_published():
    """torchvision VGG-16 features: conv5_3 r=196, pool5 r=212 (Araujo et al., Distill 2019: VGG-16 r=212, S=32,
    P=90 at pool5)."""
    import torch
    import torchvision

    path = CACHE / "vgg16_features_gap_64.onnx"
    if not path.exists():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torchvision.models.vgg16(weights=None).features, torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten()).eval()
        export_onnx(net, torch.zeros(1, 3, 64, 64), path)
    m = cv.load(path)
    convs = [layer.name for layer in m.layers if layer.op_type == "Conv"]
    pools = [layer.name for layer in m.layers if layer.op_type == "MaxPool"]
    assert len(convs) == 13 and len(pools) == 5
    conv5_3, pool5 = receptive_field(m, convs[-1]), receptive_field(m, pools[-1])
    assert (conv5_3.size, conv5_3.jump, conv5_3.padding) == ((196, 196), (16, 16), (90, 90))
    assert (pool5.size, pool5.jump, pool5.padding) == ((212, 212), (32, 32), (90, 90))
    assert receptive_field(m, convs[1]).size == (5, 5)  # conv1_2


@pytest.fixture(scope="module")
def squeezenet_avgpool(squeezenet_path):
    """The SqueezeNet with its max pools made average pools: a max pool passes gradient through one pixel per
    window, so only with average pools does the gradient support fill the whole theoretical field."""
    model = onnx.load(str(squeezenet_path))
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            node.op_type = "AveragePool"
    return cv.load(model)


@pytest.mark.parametrize("layer", ["conv1_2", "pool3_1", "fire5/concat_1", "pool5_1", "fire9/concat_1"])
def test_squeezenet_field_is_gradient_support(squeezenet_avgpool, layer):
    """The field of a unit is the box where its gradient wrt the image is nonzero (ceil-mode pools, Concat)."""
    m = squeezenet_avgpool
    rf = receptive_field(m, layer)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32) * 50
    h, w = rf.layer_hw
    acts = m.run(x, outputs=[layer]).outputs[layer][0]
    for i, j in [(h // 2, w // 3), (1, 2), (0, 0), (h - 1, w - 1)]:
        # a channel of the expand3x3 half: after a Concat the layer's field is the union over its branches, and
        # the expand1x1 channels see 16 px less on each side
        c = acts.shape[0] // 2 + int(np.argmax(acts[acts.shape[0] // 2:, i, j]))
        support = _gradient_support(m, layer, c, i, j, x)
        box = rf.box(i, j)
        if 0 < box[0] and 0 < box[1] and box[2] < 224 and box[3] < 224:
            assert support == box
        else:
            # at the border the clipped field may claim pixels no window reaches (conv1 3x3/2 on 224 never sees
            # column 223); the support lies inside it, at most a pixel short
            _assert_inside(support, box)
            assert support[2] - support[0] >= box[2] - box[0] - 1 and support[3] - support[1] >= box[3] - box[1] - 1


def test_max_pool_support_inside_field(squeezenet_path):
    m = cv.load(squeezenet_path)
    rf = receptive_field(m, "fire5/concat_1")
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32) * 50
    c = int(np.argmax(m.run(x, outputs=["fire5/concat_1"]).outputs["fire5/concat_1"][0, :, 13, 13]))
    support = _gradient_support(m, "fire5/concat_1", c, 13, 13, x)
    _assert_inside(support, rf.box(13, 13))


def _assert_inside(inner, outer):
    assert outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _one_node_model(nodes, inits, out_shape):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 2])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_auto_pad_dilation_and_pad_node():
    """SAME_UPPER padding, a dilated kernel and an explicit Pad node, checked against the gradient support."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(np.abs(rng.standard_normal((4, 1, 3, 3))).astype(np.float32) + 0.1, "w1")
    w2 = numpy_helper.from_array(np.abs(rng.standard_normal((4, 4, 3, 3))).astype(np.float32) + 0.1, "w2")
    wf = numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "wf")
    pads = numpy_helper.from_array(np.array([0, 0, 2, 1, 0, 0, 0, 3], np.int64), "pads")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Pad", ["c1", "pads"], ["p1"]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], dilations=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf"], ["scores"], transB=1),
    ]
    m = cv.load(_one_node_model(nodes, [w1, w2, wf, pads], [None, 2]))
    rf = receptive_field(m, "c2")
    # conv1: k3 s2, SAME_UPPER on 32 -> 16 needs 1 pixel of padding, at the end: start 0; Pad adds 2 rows, 1 column
    # before (in conv1 units, jump 2); conv2: k_eff 5, pad 1.
    assert rf.size == (3 + 4 * 2, 3 + 4 * 2) and rf.jump == (2, 2)
    assert rf.start == (0 - 2 * 2 - 1 * 2, 0 - 1 * 2 - 1 * 2)
    x = np.abs(rng.standard_normal((1, 1, 32, 32))).astype(np.float32)
    h, w = rf.layer_hw
    for i, j in [(3, 4), (h // 2, 7), (9, 5)]:
        assert _gradient_support(m, "c2", 0, i, j, x) == rf.box(i, j)
    for i, j in [(0, 0), (h - 1, w - 1)]:
        # at the border the dilated taps that land in the padding skip image rows: inside the box, not equal
        _assert_inside(_gradient_support(m, "c2", 0, i, j, x), rf.box(i, j))


def test_resampling_is_reported():
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w1")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c1", "", "scales"], ["r"], mode="nearest"),
             helper.make_node("ReduceMean", ["r"], ["g"], axes=[2, 3], keepdims=0),
             helper.make_node("Identity", ["g"], ["scores"])]
    model = _one_node_model(nodes, [w1, scales], [None, 2])
    m = cv.load(model)
    assert receptive_field(m, "c1").size == (3, 3)
    with pytest.raises(ModelStructureError, match="Resize"):
        receptive_field(m, "r")


def _runtime_pad_model(opset: int, axes: bool):
    """conv1 (3x3, no padding) -> Pad whose amounts come from Shape arithmetic, as TF-style "same" padding is exported
    (EfficientNet's ``static_padding``): begin = h mod 4 = 2 (on 30 rows), end = h mod 7 = 2 -> conv2 (3x3,
    stride 2)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(np.abs(rng.standard_normal((4, 1, 3, 3))).astype(np.float32) + 0.1, "w1")
    w2 = numpy_helper.from_array(np.abs(rng.standard_normal((4, 4, 3, 3))).astype(np.float32) + 0.1, "w2")
    wf = numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "wf")
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              [("i2", [2]), ("i4", [4]), ("four", [4, 4]), ("seven", [7, 7]), ("zeros", [0, 0]), ("axes", [2, 3])]]
    pads = (["begin", "end"] if axes else ["zeros", "begin", "zeros", "end"])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Shape", ["c1"], ["shape"]),
        helper.make_node("Slice", ["shape", "i2", "i4"], ["hw"]),
        helper.make_node("Mod", ["hw", "four"], ["begin"]),
        helper.make_node("Mod", ["hw", "seven"], ["end"]),
        helper.make_node("Concat", pads, ["pads"], axis=0),
        helper.make_node("Pad", ["c1", "pads", "", "axes"] if axes else ["c1", "pads"], ["p1"]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 2])], initializer=[w1, w2, wf, *consts])
    return cv.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8))


@pytest.mark.parametrize("opset,axes", [(17, False), (18, True)])
def test_pad_amounts_computed_at_run_time(opset, axes):
    """A Pad whose amounts are Shape arithmetic (constant once the input size is fixed, ``Model.spec().constants``)
    has a known field, equal to the gradient support; before, the field was refused ("pads computed at run time")."""
    m = _runtime_pad_model(opset, axes)
    assert list(m.spec().constants["pads"]) == ([2, 2, 2, 2] if axes else [0, 0, 2, 2, 0, 0, 2, 2])
    rf = receptive_field(m, "c2")
    # conv1: r 3, j 1, s 0; Pad: 2 rows / columns before -> s -2; conv2 (k3 s2): r 5, j 2
    assert rf.size == (5, 5) and rf.jump == (2, 2) and rf.start == (-2, -2) and rf.layer_hw == (16, 16)
    x = np.abs(np.random.default_rng(1).standard_normal((1, 1, 32, 32))).astype(np.float32)
    for i, j in [(3, 4), (8, 8), (14, 2)]:
        assert _gradient_support(m, "c2", 0, i, j, x) == rf.box(i, j)
    _assert_inside(_gradient_support(m, "c2", 0, 0, 0, x), rf.box(0, 0))

