"""Keras models deployed as plain tf2onnx writes them: NHWC input (no ``inputs_as_nchw``), uint8 pixels with the
preprocessing inside, feature maps tf2onnx leaves channels-last (issue 14, items 1 and 2).

The contract: ``cv.load`` of such a file reports ``input_shape == (C, H, W)`` and ``input_layout == "NHWC"`` (and
``input_dtype == "uint8"`` for raw pixels); users pass NCHW arrays as for every model, every method returns maps in
the usual (N, H, W) / (N, C, H, W), and layers are listed as (None, C, h, w) whatever layout the graph keeps them in.

References, on the same weights: tf-keras-vis's Gradcam (staged as in test_keras_gradcam.py) and Saliency, and
``tf.GradientTape``'s input gradient transposed to NCHW, with the ReLU/ReLU6/max-pool decisions pinned to the ONNX
forward's (parity.py's ``pinned``, as the torch parity tests pin theirs). Each model is also exported with the input
transposed to NCHW (the converter's default) and both files must give the same maps.

Models: keras.applications MobileNetV2 (ReLU6; tf2onnx pushes the input Transpose down to the first Conv),
EfficientNetB0 (Rescaling and Normalization in NHWC *before* that Transpose: the model the issue found silently
wrong) and ResNet50, random weights at 96x96; a small ConvNeXt-like CNN whose LayerNormalization and per-pixel
Dense keep feature maps NHWC in the ONNX graph; a small uint8-input CNN with ``Rescaling`` inside and its float twin.
Measured: Grad-CAM raw maps within 3e-6 (MobileNetV2, EfficientNetB0) and 4e-5 (ResNet50) of tf-keras-vis's,
normalised within 4e-6; input gradients within 1.3e-6 of GradientTape's.

Runs in .venv-keras (see test_keras_gradcam.py); about 100 s on 2 cores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow", reason="the Keras tests need the keras extra (.venv-keras, see .ci/run)")
pytest.importorskip("tf2onnx")
pytest.importorskip("tf_keras_vis")

import keras  # noqa: E402
import onnx  # noqa: E402

import onnx_cnnviz as cv  # noqa: E402
from onnx_cnnviz.converters.keras import export  # noqa: E402
from onnx_cnnviz.image import Preprocessing, preprocess, read_image  # noqa: E402
from tests.cli import invoke  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.keras.parity import (TkvGradcam, activations, assert_gradcam_parity, find_layer, linear_head,  # noqa: E402
                                nchw, pinned, tape_gradient, tkv_saliency)
from tests.tiny_models import write_png  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 96
CLASSES = 10
TARGETS = [3, 7]
LAYOUTS = ("NHWC", "NCHW")  # the ONNX file's input: kept as Keras has it (plain tf2onnx), or transposed


@dataclass
class Exported:
    """A Keras model, its pre-softmax copy, its two ONNX exports (by input layout) loaded, and an NHWC batch."""
    model: keras.Model
    linear: keras.Model
    paths: dict
    models: dict
    x_nhwc: np.ndarray
    layer: str  # the Keras layer Grad-CAM is compared at

    @property
    def x(self) -> np.ndarray:
        return nchw(self.x_nhwc)


def export_both(model, folder: Path, x_nhwc, layer: str, **kwargs) -> Exported:
    paths = {"NHWC": export(model, folder / "nhwc.onnx", keep_nhwc=True, **kwargs),
             "NCHW": export(model, folder / "nchw.onnx", **kwargs)}
    models = {layout: cv.load(path, device="cpu") for layout, path in paths.items()}
    return Exported(model, linear_head(model), paths, models, x_nhwc, layer)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), weights=None, classes=CLASSES)
    x_nhwc = np.random.default_rng(1).uniform(-1, 1, (len(TARGETS), SIZE, SIZE, 3)).astype(np.float32)
    return export_both(model, tmp_path_factory.mktemp("mobilenetv2"), x_nhwc, "out_relu", preprocess="tf",
                       labels=[f"c{i}" for i in range(CLASSES)])


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
    """EfficientNetB0 takes 0..255 pixels: its Rescaling and Normalization run in NHWC before the first Transpose."""
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(input_shape=(SIZE, SIZE, 3), weights=None, classes=CLASSES)
    x_nhwc = np.random.default_rng(2).uniform(0, 255, (len(TARGETS), SIZE, SIZE, 3)).astype(np.float32)
    return export_both(model, tmp_path_factory.mktemp("efficientnetb0"), x_nhwc, "top_activation")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """ResNet50 (ReLU, a max pool, residual Adds); its preprocessing ("caffe") is outside the model."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(input_shape=(SIZE, SIZE, 3), weights=None, classes=CLASSES)
    x_nhwc = (np.random.default_rng(3).standard_normal((len(TARGETS), SIZE, SIZE, 3)) * 50).astype(np.float32)
    return export_both(model, tmp_path_factory.mktemp("resnet50"), x_nhwc, "conv5_block3_out")


@pytest.fixture(scope="module", params=["mobilenet", "efficientnet", "resnet"])
def application(request):
    return request.getfixturevalue(request.param)


def onnx_input_dims(path) -> tuple:
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)


# ---------------------------------------------------------------------------------------------------------------------
# keras.applications, NHWC and NCHW exports


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_detected_and_scores_match_keras(application, layout):
    m = application.models[layout]
    expected_dims = ("N", SIZE, SIZE, 3) if layout == "NHWC" else ("N", 3, SIZE, SIZE)
    assert onnx_input_dims(application.paths[layout]) == expected_dims
    assert m.input_shape == (3, SIZE, SIZE)
    assert m.input_layout == layout
    assert m.metadata["cnnviz.keras.input_layout"] == "NHWC"  # the Keras model's own, both files
    assert m.softmax_skipped == "Softmax" and m.num_classes == CLASSES
    logits = application.linear(application.x_nhwc, training=False).numpy()
    assert rel_err(m.scores(application.x), logits) <= 1e-4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcam_matches_tf_keras_vis(application, layout):
    m = application.models[layout]
    layer = find_layer(m, application.model, application.layer, application.x_nhwc)
    assert m.layer(layer).shape == (None, *nchw(activations(application.model, application.layer,
                                                           application.x_nhwc[:1])).shape[1:])
    tkv = TkvGradcam(application.model, application.layer)
    assert_gradcam_parity(m, tkv, application.x_nhwc, TARGETS, layer)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_input_gradient_matches_gradient_tape(application, layout):
    """Against tf.GradientTape with the ReLU/ReLU6/max-pool decisions pinned to the ONNX forward's
    (tests/keras/parity.py's ``pinned``, as the torch parity tests do): unpinned, one ResNet50 unit that TensorFlow's
    and onnxruntime's float32 kernels put on different sides of its kink moves the gradient by 4e-3."""
    m = application.models[layout]
    with pinned(application.linear, m, application.x):
        expected = tape_gradient(application.linear, application.x_nhwc, TARGETS)
    grads = cv.gradients(m, application.x, targets=TARGETS)
    assert grads.shape == (len(TARGETS), 3, SIZE, SIZE)
    assert rel_err(grads, expected) <= 1e-4, rel_err(grads, expected)
    raw = cv.saliency(m, application.x, targets=TARGETS, normalize=False)
    assert raw.shape == (len(TARGETS), SIZE, SIZE)
    with pinned(application.linear, m, application.x):
        peer = tkv_saliency(application.linear, application.x_nhwc, TARGETS)
    assert rel_err(raw, peer) <= 1e-4, rel_err(raw, peer)


def test_nhwc_and_nchw_exports_give_the_same_maps(mobilenet):
    nhwc, nchw_model = mobilenet.models["NHWC"], mobilenet.models["NCHW"]
    x = mobilenet.x
    assert nhwc.layer(nhwc.default_layer).shape == nchw_model.layer(nchw_model.default_layer).shape
    for method in ("grad_cam", "grad_cam_pp", "saliency", "guided_grad_cam"):
        fn = getattr(cv, method)
        np.testing.assert_allclose(fn(nhwc, x, targets=TARGETS), fn(nchw_model, x, targets=TARGETS), atol=1e-5,
                                   err_msg=method)
    for rule in ("vanilla", "guided"):
        a = cv.gradients(nhwc, x, targets=TARGETS, rule=rule)
        assert rel_err(a, cv.gradients(nchw_model, x, targets=TARGETS, rule=rule)) <= 1e-5, rule
    kwargs = {"targets": TARGETS, "window": 24, "stride": 24}
    assert rel_err(cv.occlusion(nhwc, x, **kwargs), cv.occlusion(nchw_model, x, **kwargs)) <= 1e-5


def test_cli_explain_and_report_on_nhwc_file(mobilenet, tmp_path):
    """No flag: the recorded preprocessing ("tf") and the detected layout are all the commands need."""
    path = mobilenet.paths["NHWC"]
    images = [write_png(tmp_path / "in" / f"{name}.png", size=SIZE, seed=i) for i, name in enumerate("ab")]
    out = tmp_path / "out"
    result = invoke("explain", path, *images, "--out", out, "-m", "gradcam,saliency", "--target", 3, "--quiet")
    assert result.exit_code == 0, result.output
    m = mobilenet.models["NHWC"]
    x = preprocess(images, Preprocessing.from_metadata(m.metadata))
    for method, fn in (("gradcam", cv.grad_cam), ("saliency", cv.saliency)):
        got = np.stack([np.load(out / f"{p.stem}.{method}.c3.npy") for p in images])
        np.testing.assert_allclose(got, fn(m, x, targets=3), atol=1e-5, err_msg=method)
    report = invoke("report", path, *images, "--out", tmp_path / "report", "--quiet")
    assert report.exit_code == 0, report.output
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------------------------------
# a feature map tf2onnx keeps NHWC


def build_channels_last_cnn() -> keras.Model:
    """Conv -> LayerNormalization(channels) -> per-pixel Dense -> ReLU ("pointwise", NHWC in the ONNX graph: a
    MatMul over the last axis) -> Conv -> ReLU -> GAP -> Dense softmax, as in a ConvNeXt block."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.Dense(16, bias_initializer="random_normal", name="pointwise_dense")(x)
    x = keras.layers.ReLU(name="pointwise")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", bias_initializer="random_normal", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(6, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name="channels_last_cnn")


@pytest.fixture(scope="module")
def channels_last(tmp_path_factory):
    """(Keras model, ONNX path, loaded Model, NHWC batch, targets) of :func:`build_channels_last_cnn`, NHWC kept."""
    model = build_channels_last_cnn()
    path = export(model, tmp_path_factory.mktemp("channels_last") / "cl.onnx", keep_nhwc=True)
    m = cv.load(path, device="cpu")
    x_nhwc = np.random.default_rng(4).standard_normal((3, 32, 32, 3)).astype(np.float32)
    return model, path, m, x_nhwc, [0, 5, 2]


@pytest.mark.parametrize("keras_layer, channels", [("norm", 8), ("pointwise", 16)])
def test_gradcam_at_a_channels_last_feature_map(channels_last, keras_layer, channels):
    """The LayerNormalization's output (tf2onnx: Transpose back to NHWC after the normalisation) and the per-pixel
    Dense's (Keras's Tensordot: Reshape to (N*h*w, C) -> MatMul -> Reshape to (N, h, w, C')) are NHWC tensors in
    the graph: listed as (None, C, h, w), and Grad-CAM there equals tf-keras-vis's."""
    model, path, m, x_nhwc, targets = channels_last
    assert m.input_layout == "NHWC" and m.input_shape == (3, 32, 32)
    layer = find_layer(m, model, keras_layer, x_nhwc, view="NHWC")
    # The test is about maps the graph keeps channels-last: check that they are, and that they are listed NCHW.
    assert m.layer(layer).view.native[1:] == (32, 32, channels)  # (the file itself may not say: Tensordot's
    assert m.layer(layer).shape == (None, channels, 32, 32)      # reshape shapes are computed at run time)
    assert_gradcam_parity(m, TkvGradcam(model, keras_layer), x_nhwc, targets, layer)


def test_channels_last_model_nchw_layer_and_input_gradient(channels_last):
    model, path, m, x_nhwc, targets = channels_last
    assert_gradcam_parity(m, TkvGradcam(model, "relu2"), x_nhwc, targets, find_layer(m, model, "relu2", x_nhwc))
    expected = tape_gradient(linear_head(model), x_nhwc, targets)
    assert rel_err(cv.gradients(m, nchw(x_nhwc), targets=targets), expected) <= 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# uint8 pixels with the preprocessing inside


def build_uint8_pair() -> tuple[keras.Model, keras.Model]:
    """(uint8 model, float twin): ``Rescaling(1/127.5, offset=-1)`` on raw uint8 NHWC pixels followed by a small
    CNN, and the same CNN (same weights) on an already preprocessed float image."""
    def build(uint8: bool) -> keras.Model:
        inp = keras.Input((40, 40, 3), dtype="uint8" if uint8 else "float32", name="pixels" if uint8 else "image")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inp) if uint8 else inp
        x = keras.layers.Conv2D(8, 3, padding="same", bias_initializer="random_normal", name="conv1")(x)
        x = keras.layers.ReLU(name="relu1")(x)
        x = keras.layers.MaxPooling2D(name="pool")(x)
        x = keras.layers.Conv2D(16, 3, padding="same", bias_initializer="random_normal", name="conv2")(x)
        x = keras.layers.ReLU(name="relu2")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        out = keras.layers.Dense(5, activation="softmax", name="predictions")(x)
        return keras.Model(inp, out, name="uint8_cnn" if uint8 else "float_cnn")

    keras.utils.set_random_seed(5)
    u8, twin = build(True), build(False)
    twin.set_weights(u8.get_weights())  # Rescaling has no weights: the lists align
    return u8, twin


@pytest.fixture(scope="module")
def uint8_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uint8")
    u8, twin = build_uint8_pair()
    paths = {"NHWC": export(u8, folder / "u8_nhwc.onnx", keep_nhwc=True),
             "NCHW": export(u8, folder / "u8_nchw.onnx"),
             "float": export(twin, folder / "float.onnx", keep_nhwc=True)}
    return u8, twin, paths


@pytest.mark.parametrize("layout", LAYOUTS)
def test_uint8_input_gives_the_float_models_maps(uint8_pair, layout):
    u8, twin, paths = uint8_pair
    assert onnx.load(str(paths[layout])).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    m = cv.load(paths[layout], device="cpu")
    assert m.input_dtype == "uint8" and m.input_shape == (3, 40, 40) and m.input_layout == layout
    f = cv.load(paths["float"], device="cpu")
    pixels = np.random.default_rng(6).integers(0, 256, (3, 3, 40, 40)).astype(np.uint8)  # NCHW, as users pass
    preprocessed = pixels.astype(np.float32) / np.float32(127.5) - 1
    targets = [1, 4, 0]
    assert rel_err(m.scores(pixels), f.scores(preprocessed)) <= 1e-5
    layer = find_layer(m, u8, "relu2", pixels.transpose(0, 2, 3, 1))
    twin_layer = find_layer(f, twin, "relu2", preprocessed.transpose(0, 2, 3, 1))
    expected = cv.grad_cam(f, preprocessed, targets=targets, layer=twin_layer)
    for given in (pixels, pixels.astype(np.float32)):  # raw pixels, as uint8 or as float values 0..255
        np.testing.assert_allclose(cv.grad_cam(m, given, targets=targets, layer=layer), expected, atol=1e-5)
        np.testing.assert_allclose(cv.saliency(m, given, targets=targets), cv.saliency(f, preprocessed,
                                                                                       targets=targets), atol=1e-5)
    # The gradient with respect to the pixels is the float model's times d(preprocessed)/d(pixel) = 1/127.5.
    grads = cv.gradients(m, pixels, targets=targets)
    assert rel_err(grads * 127.5, cv.gradients(f, preprocessed, targets=targets)) <= 1e-4


def test_cli_explains_uint8_model_without_preprocessing_flags(uint8_pair, tmp_path):
    """The CLI feeds the image's raw 0..255 pixels to a uint8 model (no --preprocess, no warning needed)."""
    u8, twin, paths = uint8_pair
    images = [write_png(tmp_path / "in" / f"{name}.png", size=40, seed=10 + i) for i, name in enumerate("ab")]
    out = tmp_path / "out"
    result = invoke("explain", paths["NHWC"], *images, "--out", out, "-m", "gradcam", "--target", 2, "--quiet")
    assert result.exit_code == 0, result.output
    m = cv.load(paths["NHWC"], device="cpu")
    raw = np.stack([read_image(p) for p in images]).transpose(0, 3, 1, 2).astype(np.float32)
    got = np.stack([np.load(out / f"{p.stem}.gradcam.c2.npy") for p in images])
    np.testing.assert_allclose(got, cv.grad_cam(m, raw, targets=2), atol=1e-5)


def test_keep_nhwc_refuses_a_channels_first_model(tmp_path):
    from onnx_cnnviz.errors import InputError

    u8, twin = build_uint8_pair()
    with pytest.raises(InputError, match="channels-first"):
        export(twin, tmp_path / "a.onnx", keep_nhwc=True, channels_last_input=False)


def test_non_image_input_dtype_is_refused(tmp_path):
    from onnx_cnnviz.errors import InputError

    inp = keras.Input((8, 8, 3), dtype="int32")
    x = keras.layers.Rescaling(1.0)(inp)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(x))
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    with pytest.raises(InputError, match="dtype int32"):
        export(model, tmp_path / "a.onnx")
