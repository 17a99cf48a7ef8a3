"""Keras -> ONNX (onnx_cnnviz/converters/keras.py, tf2onnx) and Grad-CAM parity with tf-keras-vis on the Keras model.

Runs in the separate ``.venv-keras`` (``pip install -e '.[keras]' pytest``; see .ci/run): TensorFlow and torch
disagree on protobuf, so the main venv has no TensorFlow and this whole module is skipped there.

What is compared, and why not only the final pictures. tf-keras-vis's ``Gradcam`` computes, at the layer,
``cam = ReLU(sum_k mean_ij(dS/dA^k) A^k)`` -- the same formula as ``onnx_cnnviz.grad_cam`` -- but post-processes
differently: it *first* upsamples the (N, h, w) map with ``scipy.ndimage.zoom(cam, (1, H/h, W/w), order=1)``
(bilinear on corner-aligned grids) and *then* min-max normalises per image (``(x - min) / (max - min + 1e-7)``);
onnx_cnnviz (like pytorch-grad-cam) min-max normalises at the layer's resolution, resizes with
``cv2.resize(..., INTER_LINEAR)`` (half-pixel centres), and min-max normalises once more (pytorch-grad-cam's layer
aggregation step, also applied to a single layer). So:

1. raw maps at the layer resolution (``expand_cam=False, normalize_cam=False`` vs ``upsample=False,
   normalize=False``): equal up to float32 rounding (relative 1e-4);
2. min-max normalised maps at the layer resolution (``expand_cam=False`` vs ``upsample=False``): <= 1e-3 (what is
   left is tf-keras-vis's epsilon in the min-max denominator);
3. full-size maps, each library's post-processing applied to the other's raw map (tf-keras-vis's zoom+normalise on
   onnx_cnnviz's raw map vs tf-keras-vis's default output; onnx_cnnviz's normalise+resize+normalise on
   tf-keras-vis's raw map vs ``grad_cam``'s default output): <= 1e-3;
4. the two libraries' default full-size outputs differ only by the interpolation: bounded loosely (see the test).

The score: the Keras model ends in ``Dense(activation="softmax")``; tf-keras-vis's ``ReplaceToLinear`` makes it
differentiate the pre-softmax score, and onnx_cnnviz takes the input of the final ONNX ``Softmax``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow", reason="the Keras tests need the keras extra (.venv-keras, see .ci/run)")
pytest.importorskip("tf2onnx")
pytest.importorskip("tf_keras_vis")

import warnings  # noqa: E402

import keras  # noqa: E402

with warnings.catch_warnings():  # tf-keras-vis imports scipy.ndimage.interpolation (deprecated)
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam  # noqa: E402
    from tf_keras_vis.utils import normalize as tkv_normalize  # noqa: E402
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear  # noqa: E402
    from tf_keras_vis.utils.scores import CategoricalScore  # noqa: E402

import onnx_cnnviz as cv  # noqa: E402
from onnx_cnnviz.converters.keras import export, layer_tensor  # noqa: E402
from onnx_cnnviz.maps import normalize_maps  # noqa: E402

# Keras's own numpy conversions (fit, predict) trip numpy 2's __array__(copy=) deprecation: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 32
CLASSES = 6
LAYER = "relu3"  # the last conv's ReLU: the Grad-CAM layer
TARGETS = [0, 3, 5, 3, 1]  # mixed targets, one per image


def build_model() -> keras.Model:
    """Conv-ReLU-Conv-ReLU-MaxPool-Conv-ReLU -> GAP -> Dense softmax, a few Adam steps on random data (so the
    biases are not zero), fixed seed."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv3")(x)
    x = keras.layers.ReLU(name=LAYER)(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out, name="small_cnn")
    rng = np.random.default_rng(0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(rng.standard_normal((64, SIZE, SIZE, 3)).astype(np.float32), rng.integers(0, CLASSES, 64),
              batch_size=16, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(keras model, converted onnx_cnnviz Model, ONNX path, NHWC batch, NCHW batch)."""
    model = build_model()
    path = export(model, tmp_path_factory.mktemp("keras") / "small_cnn.onnx", labels=[f"c{i}" for i in range(CLASSES)],
                  preprocess="tf")
    m = cv.load(path, device="cpu")
    x_nhwc = np.random.default_rng(1).standard_normal((len(TARGETS), SIZE, SIZE, 3)).astype(np.float32)
    return model, m, path, x_nhwc, np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))


def keras_logits(model, x_nhwc):
    features = keras.Model(model.input, model.get_layer("gap").output)(x_nhwc, training=False)
    kernel, bias = model.get_layer("predictions").get_weights()
    return features.numpy() @ kernel + bias


def tkv_gradcam(model, x_nhwc, **kwargs):
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    cam = gradcam(CategoricalScore(TARGETS), x_nhwc, penultimate_layer=LAYER, seek_penultimate_conv_layer=False,
                  **kwargs)
    return np.asarray(cam.numpy() if hasattr(cam, "numpy") else cam, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------------


def test_converted_graph_is_nchw_with_softmax_skipped(converted):
    model, m, path, x_nhwc, x = converted
    assert m.input_shape == (3, SIZE, SIZE)
    assert m.softmax_skipped == "Softmax"
    assert m.num_classes == CLASSES
    assert m.metadata["cnnviz.keras.input_layout"] == "NHWC"
    assert m.metadata["cnnviz.input_size"] == f"{SIZE}x{SIZE}"
    assert m.metadata["cnnviz.labels"].split("\n") == [f"c{i}" for i in range(CLASSES)]
    pre = cv.image.Preprocessing.from_metadata(m.metadata)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5) and pre.size == (SIZE, SIZE)
    # The layer found by name holds the Keras layer's activations (NHWC -> NCHW).
    name = layer_tensor(m, LAYER)
    assert name == m.default_layer
    expected = keras.Model(model.input, model.get_layer(LAYER).output)(x_nhwc, training=False).numpy()
    got = m.run(x, outputs=[name]).outputs[name]
    np.testing.assert_allclose(got, expected.transpose(0, 3, 1, 2), rtol=1e-4, atol=1e-5)


def test_scores_match_keras_logits(converted):
    model, m, path, x_nhwc, x = converted
    scores = m.scores(x)
    logits = keras_logits(model, x_nhwc)
    np.testing.assert_allclose(scores, logits, rtol=1e-4, atol=1e-5)
    # ... and the softmax of the score is the Keras model's output (the ONNX graph's own output).
    probabilities = model(x_nhwc, training=False).numpy()
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), probabilities, rtol=1e-4, atol=1e-6)


def test_gradcam_matches_tf_keras_vis(converted):
    model, m, path, x_nhwc, x = converted
    layer = layer_tensor(m, LAYER)

    # 1. raw maps (ReLU'd, not normalised) at the layer resolution
    raw_tkv = tkv_gradcam(model, x_nhwc, expand_cam=False, normalize_cam=False)
    raw_cv = cv.grad_cam(m, x, targets=TARGETS, layer=layer, upsample=False, normalize=False)
    assert raw_cv.shape == raw_tkv.shape == (len(TARGETS), SIZE // 2, SIZE // 2)
    assert (raw_cv.max(axis=(1, 2)) > 0).all(), "a map is all zero: the comparison would be empty"
    scale = raw_tkv.max(axis=(1, 2), keepdims=True)
    assert float(np.abs(raw_cv - raw_tkv).max() / scale.min()) <= 1e-4  # measured 3e-6

    # 2. normalised maps at the layer resolution
    norm_tkv = tkv_gradcam(model, x_nhwc, expand_cam=False, normalize_cam=True)
    norm_cv = cv.grad_cam(m, x, targets=TARGETS, layer=layer, upsample=False)
    assert float(np.abs(norm_cv - norm_tkv).max()) <= 1e-3  # measured 6e-4: tf-keras-vis's epsilon, see below
    # What remains is tf-keras-vis's (max - min + 1e-7) denominator: the raw maps span only ~1e-4 here (the GAP head
    # makes dS/dA = w / (h*w)), so its epsilon shifts values by ~1e-7 / span. Without it the maps agree to 1e-5.
    assert float(np.abs(norm_cv - normalize_maps(raw_tkv)).max()) <= 1e-5

    # 3. full size, the same post-processing on both sides
    from scipy.ndimage import zoom

    full_tkv = tkv_gradcam(model, x_nhwc)  # tf-keras-vis defaults: zoom (order 1), then normalise
    full_cv = cv.grad_cam(m, x, targets=TARGETS, layer=layer)  # defaults: normalise, then cv2 bilinear resize
    assert full_tkv.shape == full_cv.shape == (len(TARGETS), SIZE, SIZE)
    factors = (1.0, SIZE / raw_cv.shape[1], SIZE / raw_cv.shape[2])
    cv_as_tkv = tkv_normalize(zoom(raw_cv, factors, order=1))
    assert float(np.abs(cv_as_tkv - full_tkv).max()) <= 1e-3  # measured 2e-6
    import cv2

    tkv_as_cv = normalize_maps(np.stack([cv2.resize(r, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
                                         for r in normalize_maps(raw_tkv)]))
    assert float(np.abs(tkv_as_cv - full_cv).max()) <= 1e-3  # measured 2e-6

    # 4. default vs default: only the interpolation grid differs (corner-aligned zoom vs half-pixel cv2), which
    #    moves values by a fraction of a layer pixel; the pictures stay the same.
    default_gap = np.abs(full_cv - full_tkv)
    correlation = min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(full_cv, full_tkv))
    # Measured: mean |difference| 0.040, max 0.54 (at the peaks), smallest per-image correlation 0.93.
    assert float(default_gap.mean()) < 0.06, float(default_gap.mean())
    assert correlation > 0.9, correlation


def test_cli_convert_keras_subprocess(converted, tmp_path):
    model, m, path, x_nhwc, x = converted
    saved = tmp_path / "small_cnn.keras"
    model.save(saved)
    out = tmp_path / "cli.onnx"
    cnnviz = Path(sys.executable).with_name("cnnviz")
    assert cnnviz.is_file(), f"{cnnviz}: install the project into this venv (pip install -e '.[keras]')"
    done = subprocess.run([str(cnnviz), "--json", "convert", "keras", str(saved), "--out", str(out),
                           "--preprocess", "tf"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["out"] == str(out) and record["input_layout"] == "NHWC"
    m2 = cv.load(out, device="cpu")
    assert m2.input_shape == (3, SIZE, SIZE) and m2.softmax_skipped == "Softmax"
    np.testing.assert_allclose(m2.scores(x), keras_logits(model, x_nhwc), rtol=1e-4, atol=1e-5)
    # An existing --out is kept: exit 1 and a one-line cause.
    again = subprocess.run([str(cnnviz), "convert", "keras", str(saved), "--out", str(out)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].startswith("cnnviz: error:") and "already exists" in again.stderr
    # --keep-nhwc: the file takes (N, H, W, C) as plain tf2onnx writes it; cnnviz still takes NCHW arrays
    kept = tmp_path / "nhwc.onnx"
    done = subprocess.run([str(cnnviz), "--json", "convert", "keras", str(saved), "--keep-nhwc", "--out", str(kept)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["onnx_input_layout"] == "NHWC"
    m3 = cv.load(kept, device="cpu")
    assert m3.input_layout == "NHWC" and m3.input_shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(m3.scores(x), m2.scores(x), rtol=1e-5, atol=1e-6)
    both = subprocess.run([str(cnnviz), "convert", "keras", str(saved), "--keep-nhwc", "--channels-first", "--out",
                           str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=300)
    assert both.returncode == 1 and "--keep-nhwc" in both.stderr.strip().splitlines()[-1]


def test_sequential_h5_and_inference_mode(tmp_path):
    """A Sequential model saved as legacy .h5, with BatchNormalization and Dropout (tf2onnx traces
    training=False): the export's built-in onnxruntime-vs-Keras check passes and the scores match."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((20, 20, 3)),
        keras.layers.Conv2D(6, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(4, activation="softmax"),
    ])
    rng = np.random.default_rng(2)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(rng.standard_normal((32, 20, 20, 3)).astype(np.float32), rng.integers(0, 4, 32), epochs=1, verbose=0)
    saved = tmp_path / "seq.h5"
    model.save(saved)
    path = export(saved, tmp_path / "seq.onnx")
    m = cv.load(path, device="cpu")
    x_nhwc = rng.standard_normal((3, 20, 20, 3)).astype(np.float32)
    probabilities = model(x_nhwc, training=False).numpy()
    scores = m.scores(x_nhwc.transpose(0, 3, 1, 2))
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), probabilities, rtol=1e-4, atol=1e-6)
    assert m.default_layer is not None
    maps = cv.grad_cam(m, x_nhwc.transpose(0, 3, 1, 2), targets=[0, 1, 2])
    assert maps.shape == (3, 20, 20) and np.isfinite(maps).all()


def test_export_errors(converted, tmp_path):
    model, *_ = converted
    from onnx_cnnviz.errors import InputError

    with pytest.raises(InputError, match="fixes H=32"):
        export(model, tmp_path / "a.onnx", input_size=(64, 64))
    with pytest.raises(InputError, match=".onnx suffix"):
        export(model, tmp_path / "a.pb")
    with pytest.raises(InputError, match="labels for a model with 6 classes"):
        export(model, tmp_path / "a.onnx", labels=["x"])
    with pytest.raises(InputError, match="folder"):
        export(tmp_path, tmp_path / "a.onnx")
