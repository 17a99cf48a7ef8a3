"""References on the Keras side, shared by the Keras test modules: the pre-softmax score, its input gradient by
``tf.GradientTape``, and the staged Grad-CAM comparison with tf-keras-vis (see test_keras_gradcam.py's docstring for
why the comparison is staged: raw maps, normalised maps, each library's post-processing on the other's raw map).

Imported only where TensorFlow is installed (the modules that use it skip themselves first).
"""
from __future__ import annotations

import contextlib
import warnings

import cv2
import keras
import numpy as np
import tensorflow as tf
from scipy.ndimage import zoom

with warnings.catch_warnings():  # tf-keras-vis imports scipy.ndimage.interpolation (deprecated)
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils import normalize as tkv_normalize
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

import onnx_cnnviz as cv
from onnx_cnnviz.maps import normalize_maps


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def linear_head(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (same weights) whose last layer has no activation: its output is the pre-softmax score,
    what onnx_cnnviz differentiates (tf-keras-vis's ReplaceToLinear does the same to its clone)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.layers[-1].activation = keras.activations.linear
    return copy


def tape_gradient(linear: keras.Model, x_nhwc: np.ndarray, targets) -> np.ndarray:
    """d(sum_n S[n, targets[n]]) / dx by tf.GradientTape on the NHWC input, returned NCHW."""
    x = tf.convert_to_tensor(x_nhwc, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        scores = linear(x, training=False)
        picked = tf.reduce_sum(tf.gather(scores, targets, axis=1, batch_dims=1))
    return nchw(tape.gradient(picked, x).numpy())


@contextlib.contextmanager
def pinned(linear: keras.Model, m, x: np.ndarray):
    """Within the block, every ReLU / ReLU6 / max pool of ``linear`` takes its decision from the ONNX forward of
    ``m`` on ``x`` (the NCHW batch given to ``m``), as tests/reference.py's ``pinned`` does for torch: TensorFlow's
    and onnxruntime's float32 kernels differ by ~1e-6, enough to flip a unit near its kink in a deep random network,
    after which the two gradients are exact for *different* linear regions. One forward of ``linear`` on ``x``
    inside the block.

    ``onnx_kink_pattern`` lists the Relu and Clip outputs and the MaxPool ``Indices`` (flat NCHW) in node order;
    ReLU layers (``max_value`` None or 6), layers whose ``activation`` is ReLU and MaxPooling2D layers use them in
    call order. A pattern that does not line up (another count or shape) raises AssertionError."""
    from tests.reference import onnx_kink_pattern

    pattern = onnx_kink_pattern(m, np.asarray(x, dtype=np.float32))
    used = {"Relu": 0, "Clip": 0, "MaxPool": 0}

    def take(kind, shape):
        i = used[kind]
        used[kind] += 1
        assert i < len(pattern[kind]), f"{kind}: Keras calls more than the {len(pattern[kind])} in the ONNX graph"
        value = pattern[kind][i]
        if shape is None:
            return value
        if tuple(value.shape) != tuple(shape) and value.ndim == 4:
            value = value.transpose(0, 2, 3, 1)  # the ONNX graph holds it NCHW
        assert tuple(value.shape) == tuple(shape), f"{kind} #{i}: ONNX {pattern[kind][i].shape} vs Keras {shape}"
        return tf.constant(value)

    def relu(x, max_value=None):
        kind = "Relu" if max_value is None else "Clip"
        y = take(kind, x.shape)
        on = y > 0 if max_value is None else (y > 0) & (y < max_value)
        off = tf.stop_gradient(tf.clip_by_value(x, 0.0, max_value if max_value is not None else np.inf))
        return tf.where(on, x, off)

    def max_pool(x, call):
        expected = call(x)  # for the output's shape (NHWC)
        idx = take("MaxPool", None)
        n, h, w, c = expected.shape
        assert idx.shape == (n, c, h, w) and int(idx.max()) < int(np.prod(x.shape)), \
            f"MaxPool: ONNX indices {idx.shape} for a Keras output {tuple(expected.shape)}"
        flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1])
        return tf.transpose(tf.reshape(tf.gather(flat, idx.reshape(-1)), idx.shape), [0, 2, 3, 1])

    saved = []

    def patch(layer, attr, value):
        saved.append((layer, attr, getattr(layer, attr)))
        setattr(layer, attr, value)

    try:
        for layer in _all_layers(linear):
            if isinstance(layer, keras.layers.MaxPooling2D):
                patch(layer, "call", lambda x, _call=layer.call: max_pool(x, _call))
            elif isinstance(layer, keras.layers.ReLU):
                assert float(layer.negative_slope) == 0 and float(layer.threshold) == 0, layer.name
                max_value = None if layer.max_value is None else float(layer.max_value)
                patch(layer, "call", lambda x, _m=max_value: relu(x, _m))
            elif getattr(layer, "activation", None) is keras.activations.relu:
                patch(layer, "activation", relu)
        yield
    finally:
        for layer, attr, value in reversed(saved):
            setattr(layer, attr, value)
    assert used == {k: len(pattern[k]) for k in used}, \
        f"Keras pinned {used}, the ONNX graph has { {k: len(pattern[k]) for k in used} }"


def pinned_tape_gradient(linear: keras.Model, m, x: np.ndarray, targets) -> np.ndarray:
    """:func:`tape_gradient` of ``linear`` on the NCHW batch ``x``, :func:`pinned` to ``m``'s activation pattern."""
    with pinned(linear, m, x):
        return tape_gradient(linear, nchw_to_nhwc(x), targets)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # a nested model
            yield from _all_layers(layer)


def activations(model: keras.Model, layer: str, x_nhwc: np.ndarray) -> np.ndarray:
    """The Keras layer's output (NHWC, as Keras computes it)."""
    return keras.Model(model.input, model.get_layer(layer).output)(x_nhwc, training=False).numpy()


def find_layer(m, model: keras.Model, layer: str, x_nhwc: np.ndarray, view: str | None = None) -> str:
    """The name of the candidate layer of ``m`` that holds the Keras layer's activations, found by comparing them
    (transposed to NCHW: onnx_cnnviz gives every layer as (N, C, h, w)) with every candidate of the same shape.
    Asserts one matches, so a layer listed with the wrong layout cannot pass. ``view``: take the match the model keeps
    in that layout ("NHWC"; a Transpose to NCHW after it holds the same map)."""
    expected = nchw(activations(model, layer, x_nhwc))
    same_shape = [entry.name for entry in m.layers if tuple(entry.shape[1:]) == expected.shape[1:]]
    assert same_shape, f"no candidate layer of shape {expected.shape[1:]}: {[(e.name, e.shape) for e in m.layers]}"
    values = m.run(nchw(x_nhwc), outputs=same_shape).outputs
    scale = float(np.abs(expected).max())
    found = [name for name in same_shape
             if values[name].shape == expected.shape
             and float(np.abs(values[name] - expected).max()) <= 1e-4 * scale]
    assert len(found) >= 1, f"none of {same_shape} holds the activations of Keras layer {layer!r}"
    if view is not None:
        found = [name for name in found if m.layer(name).view is not None and m.layer(name).view.kind == view]
        assert found, f"no match of Keras layer {layer!r} is kept {view} in the graph"
    # Several tensors can hold the same values (a Relu's output and an Identity of it): take the last, as
    # layer_tensor does; they are the same map.
    return found[-1]


class TkvGradcam:
    """tf-keras-vis Grad-CAM on one model, its clone made once."""

    def __init__(self, model: keras.Model, layer: str):
        self.gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
        self.layer = layer

    def __call__(self, x_nhwc, targets, **kwargs) -> np.ndarray:
        cam = self.gradcam(CategoricalScore(list(targets)), x_nhwc, penultimate_layer=self.layer,
                           seek_penultimate_conv_layer=False, **kwargs)
        return np.asarray(cam.numpy() if hasattr(cam, "numpy") else cam, dtype=np.float32)


def tkv_saliency(linear: keras.Model, x_nhwc, targets) -> np.ndarray:
    """tf-keras-vis Saliency of the pre-softmax model ``linear`` (used as it is, so that :func:`pinned` applies), raw
    (max over channels of |dS/dx|, not normalised), (N, H, W)."""
    saliency = Saliency(linear, model_modifier=None, clone=False)
    out = saliency(CategoricalScore(list(targets)), x_nhwc, normalize_map=False)
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)


def assert_gradcam_parity(m, tkv: TkvGradcam, x_nhwc, targets, layer: str, raw_rtol: float = 1e-4) -> dict:
    """onnx_cnnviz's Grad-CAM at ``layer`` against tf-keras-vis's, in the three stages of test_keras_gradcam.py.
    Returns the measured errors (for the messages and the README)."""
    x = nchw(x_nhwc)
    size = x.shape[2:]
    raw_tkv = tkv(x_nhwc, targets, expand_cam=False, normalize_cam=False)
    raw_cv = cv.grad_cam(m, x, targets=targets, layer=layer, upsample=False, normalize=False)
    assert raw_cv.shape == raw_tkv.shape, (raw_cv.shape, raw_tkv.shape)
    assert (raw_tkv.max(axis=(1, 2)) > 0).all(), "a map is all zero: the comparison would be empty"
    errors = {"raw": float(np.abs(raw_cv - raw_tkv).max() / raw_tkv.max(axis=(1, 2)).min())}
    assert errors["raw"] <= raw_rtol, errors

    norm_cv = cv.grad_cam(m, x, targets=targets, layer=layer, upsample=False)
    errors["normalised"] = float(np.abs(norm_cv - normalize_maps(raw_tkv)).max())
    assert errors["normalised"] <= 1e-3, errors

    full_tkv = tkv(x_nhwc, targets)
    full_cv = cv.grad_cam(m, x, targets=targets, layer=layer)
    assert full_tkv.shape == full_cv.shape == (len(x), *size)
    factors = (1.0, size[0] / raw_cv.shape[1], size[1] / raw_cv.shape[2])
    errors["tkv_postprocessing"] = float(np.abs(tkv_normalize(zoom(raw_cv, factors, order=1)) - full_tkv).max())
    tkv_as_cv = normalize_maps(np.stack([cv2.resize(r, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                                         for r in normalize_maps(raw_tkv)]))
    errors["cv_postprocessing"] = float(np.abs(tkv_as_cv - full_cv).max())
    assert errors["tkv_postprocessing"] <= 1e-3 and errors["cv_postprocessing"] <= 1e-3, errors
    return errors
