"""Recipro-CAM (methods/reciprocam.py) against a plain re-derivation: numpy on hand-built ONNX models (a GAP
classifier, one with a skip connection around the layer, one whose head reshapes by the batch size), torch on a
torchvision ResNet-18 (random weights). OpenVINO XAI's own ReciproCAM is compared in tests/openvino (its venv).

Reference: for each image and each position (i, j) of the layer, zero every other position (all channels), run the
rest of the network on that feature map, and read the target's score there.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError, ModelStructureError
from onnx_cnnviz.maps import finish_maps
from onnx_cnnviz.methods.reciprocam import reciprocam

from ..tiny_models import make_model

K = 6


def _conv(x, w, b):
    """3x3 convolution, padding 1, stride 1: (N, Ci, H, W) x (Co, Ci, 3, 3) -> (N, Co, H, W)."""
    n, ci, hh, ww = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], hh, ww), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nchw,oc->nohw", p[:, :, dy:dy + hh, dx:dx + ww], w[:, :, dy, dx])
    return out + b[None, :, None, None]


def _weights(seed=0, c=8):
    rng = np.random.default_rng(seed)
    return {"w1": rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.5,
            "b1": rng.standard_normal(c).astype(np.float32) * 0.1,
            "w2": rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.3,
            "b2": rng.standard_normal(c).astype(np.float32) * 0.1,
            "fc_w": rng.standard_normal((K, c)).astype(np.float32),
            "fc_b": rng.standard_normal(K).astype(np.float32)}


def two_conv_model(skip: bool = False, batch_reshape: bool = False, seed: int = 0, size: int = 10):
    """x -> Conv/Relu 'r1' -> Conv/Relu 'r2' [-> Add(r2, r1) 'sum'] -> GAP -> Flatten (or Reshape to (Shape(x)[0],
    -1)) -> Gemm 'logits'. The layer explained is 'r2'; with ``skip`` the head also reads 'r1', from before it."""
    p = _weights(seed)
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"])]
    last = "r2"
    if skip:
        nodes.append(helper.make_node("Add", ["r2", "r1"], ["sum"]))
        last = "sum"
    nodes.append(helper.make_node("GlobalAveragePool", [last], ["pool"]))
    if batch_reshape:
        inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
                  numpy_helper.from_array(np.array([1], np.int64), "one"),
                  numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
        nodes += [helper.make_node("Shape", ["x"], ["xshape"]),
                  helper.make_node("Slice", ["xshape", "zero", "one"], ["nbatch"]),
                  helper.make_node("Concat", ["nbatch", "minus_one"], ["flat_shape"], axis=0),
                  helper.make_node("Reshape", ["pool", "flat_shape"], ["flat"])]
    else:
        nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K])], inits)
    return model, p


def reference(p, x, targets, skip: bool):
    """(N, h, w) raw Recipro-CAM in float64: the head run on every masked copy of 'r2'."""
    r1 = np.maximum(_conv(x.astype(np.float64), p["w1"], p["b1"]), 0)
    r2 = np.maximum(_conv(r1, p["w2"], p["b2"]), 0)
    n, _, h, w = r2.shape
    out = np.zeros((n, h, w))
    for k in range(n):
        for i in range(h):
            for j in range(w):
                mosaic = np.zeros_like(r2[k])
                mosaic[:, i, j] = r2[k, :, i, j]
                if skip:
                    mosaic = mosaic + r1[k]
                scores = mosaic.mean(axis=(1, 2)) @ p["fc_w"].T.astype(np.float64) + p["fc_b"]
                out[k, i, j] = scores[targets[k]]
    return out


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip-around-layer"])
def test_raw_map_equals_the_definition(skip):
    model, p = two_conv_model(skip=skip)
    m = cv.load(model, device="cpu")
    x = np.random.default_rng(1).standard_normal((3, 3, 10, 10)).astype(np.float32)
    ours = reciprocam(m, x, layer="r2", upsample=False, normalize=False)
    top1 = m.scores(x).argmax(axis=1)
    ref = reference(p, x, top1, skip)
    assert ours.shape == (3, 10, 10)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    targets = [0, 5, 2]
    ours_t = reciprocam(m, x, targets=targets, layer="r2", upsample=False, normalize=False)
    np.testing.assert_allclose(ours_t, reference(p, x, targets, skip), rtol=1e-5, atol=1e-5)
    assert not np.allclose(ours_t, ours)  # another class, another map


def test_post_processing_chunks_and_progress():
    model, p = two_conv_model()
    m = cv.load(model, device="cpu")
    x = np.random.default_rng(2).standard_normal((2, 3, 10, 10)).astype(np.float32)
    raw = reciprocam(m, x, targets=3, layer="r2", upsample=False, normalize=False)
    calls = []
    maps = reciprocam(m, x, targets=3, layer="r2", batch_size=1, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(maps, finish_maps(raw, (10, 10), True, True), atol=1e-6)
    assert maps.min() == 0.0 and maps.max() == 1.0
    assert calls == [(100, 200), (200, 200)]  # one image's 10 x 10 masked maps per run of the head
    # default run size and run size 1 give the same numbers
    np.testing.assert_allclose(reciprocam(m, x, targets=3, layer="r2", batch_size=1, upsample=False,
                                          normalize=False), raw, rtol=1e-6, atol=1e-6)


def test_default_layer_and_bad_arguments():
    model, _ = two_conv_model()
    m = cv.load(model, device="cpu")
    x = np.random.default_rng(3).standard_normal((1, 3, 10, 10)).astype(np.float32)
    assert m.default_layer == "r2"
    np.testing.assert_array_equal(reciprocam(m, x), reciprocam(m, x, layer="r2"))
    with pytest.raises(InputError, match="one layer"):
        reciprocam(m, x, layer=["r1", "r2"])
    with pytest.raises(InputError, match="batch_size"):
        reciprocam(m, x, batch_size=0)
    with pytest.raises(InputError):
        reciprocam(m, x, targets=K)  # out of range


def test_head_reading_the_batch_size_is_refused():
    """A head that reshapes by Shape(x)[0] (the image's batch) cannot score h*w masked maps per image: a typed error
    naming the tensor, not a wrong map."""
    model, _ = two_conv_model(batch_reshape=True)
    m = cv.load(model, device="cpu")
    x = np.random.default_rng(4).standard_normal((2, 3, 10, 10)).astype(np.float32)
    with pytest.raises(ModelStructureError, match="'flat_shape'.*batch size"):
        reciprocam(m, x, targets=1, layer="r2")


def test_resnet18_against_torch(torchvision_onnx):
    torch = pytest.importorskip("torch")
    net, path, size = torchvision_onnx("resnet18")
    m = cv.load(path, device="cpu")
    x = np.random.default_rng(5).standard_normal((2, 3, size, size)).astype(np.float32)
    ours = reciprocam(m, x, upsample=False, normalize=False)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        f = net.maxpool(net.relu(net.bn1(net.conv1(xt))))
        f = net.layer4(net.layer3(net.layer2(net.layer1(f))))
        top1 = net.fc(torch.flatten(net.avgpool(f), 1)).argmax(1)
        n, c, h, w = f.shape
        eye = torch.eye(h * w).reshape(h * w, 1, h, w)
        ref = torch.stack([net.fc(torch.flatten(net.avgpool(f[k][None] * eye), 1))[:, top1[k]].reshape(h, w)
                           for k in range(n)])
    assert ours.shape == tuple(ref.shape)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-4, atol=1e-5)
