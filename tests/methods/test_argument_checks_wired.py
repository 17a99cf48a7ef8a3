"""Issue 24 point 4, where the checks are wired into the CAM family and the Model's runs: batch sizes of 0, -3 or
2.5 and an ``upsample`` of ``(31, 17)`` or ``"big"`` are refused instead of coerced, and Grad-CAM at a 1x1 layer
warns that its map carries no spatial information instead of returning zeros without a word.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from tests.tiny_models import gap_classifier


def to_one_pixel(last: str):
    """Mid nodes: an 8x8 max-pool (the map becomes 1x1), then a 1x1 convolution 'conv2' and its Relu."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2")]
    return ([helper.make_node("MaxPool", [last], ["pooled"], kernel_shape=[8, 8], strides=[8, 8], name="pooled"),
             helper.make_node("Conv", ["pooled", "w2"], ["conv2"], name="conv2"),
             helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2")], inits, "relu2")


@pytest.fixture(scope="module")
def model():
    return cv.load(gap_classifier(size=8))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("call", [
    lambda m, x, b: cv.grad_cam(m, x, batch_size=b),
    lambda m, x, b: cv.saliency(m, x, batch_size=b),
    lambda m, x, b: cv.smoothgrad(m, x, samples=2, batch_size=b),
    lambda m, x, b: m.scores(x, batch_size=b),
    lambda m, x, b: m.run(x, batch_size=b),
], ids=["grad_cam", "saliency", "smoothgrad", "scores", "run"])
@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_a_bad_batch_size_is_refused(model, x, call, batch_size):
    with pytest.raises(InputError, match="batch_size must be None"):
        call(model, x, batch_size)


@pytest.mark.parametrize("method", [cv.grad_cam, cv.saliency, cv.gradients])
@pytest.mark.parametrize("upsample", [(31, 17), "big"])
def test_map_functions_refuse_an_upsample_that_is_not_a_bool(model, x, method, upsample):
    with pytest.raises(InputError, match="upsample must be True or False"):
        method(model, x, upsample=upsample)


def test_grad_cam_at_a_one_pixel_layer_warns():
    m = cv.load(gap_classifier(size=8, mid=to_one_pixel))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match="layer 'relu2': the layer's feature map is 1x1, so the map carries no "
                                         "spatial information"):
        maps = cv.grad_cam(m, x, layer="relu2")
    assert np.all(maps == 0)  # what the warning is about


def test_grad_cam_at_a_spatial_layer_does_not_warn(model, x, recwarn):
    cv.grad_cam(model, x, layer="relu1")
    assert not [w for w in recwarn if "1x1" in str(w.message)]


def test_occlusion_warns_of_a_stride_as_large_as_the_image(model, x):
    with pytest.warns(UserWarning, match="stride 100x100 is not smaller than the 8x8 image in height and width"):
        maps = cv.occlusion(model, x, window=4, stride=(100, 100))
    assert np.all(maps[:, 4:, :] == 0) and np.all(maps[:, :, 4:] == 0)  # one window, as the warning says


def test_evaluate_refuses_a_box_label_of_no_class_before_any_work(tmp_path):
    from tests.cli import invoke
    from tests.tiny_models import save, write_png

    save(gap_classifier(), tmp_path / "model.onnx")
    write_png(tmp_path / "a.png", seed=1)
    (tmp_path / "boxes.csv").write_text("image,x0,y0,x1,y1,label\na.png,1,1,20,20,7\nother.png,1,1,2,2,x\n")
    result = invoke("evaluate", tmp_path / "model.onnx", tmp_path / "a.png", "--preprocess", "imagenet", "-m",
                    "gradcam", "--metric", "pointing-game", "--boxes", tmp_path / "boxes.csv", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "line 2: label 7 is not a class of the model, which has 5 classes" in result.stderr
    assert not (tmp_path / "o").exists()  # refused before any work; other.png's bad row is not the run's


def test_two_nodes_of_one_name_make_the_file_invalid(tmp_path):
    from onnx_cnnviz.errors import ModelLoadError
    from tests.tiny_models import save

    model = gap_classifier()
    model.graph.node[1].name = model.graph.node[0].name
    with pytest.raises(ModelLoadError, match="is an invalid ONNX model: two nodes are named 'conv1'"):
        cv.load(save(model, tmp_path / "dup.onnx"))
    with pytest.raises(ModelLoadError, match="the ModelProto given is an invalid ONNX model"):
        cv.load(model)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_external_data_that_is_not_a_regular_file_is_called_so(tmp_path, kind):
    import os

    from onnx.external_data_helper import convert_model_to_external_data

    from onnx_cnnviz.errors import ModelLoadError
    from tests.tiny_models import save

    model = gap_classifier()
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    save(model, tmp_path / "m.onnx")
    (tmp_path / "weights.bin").unlink()
    if kind == "fifo":
        os.mkfifo(tmp_path / "weights.bin")
        what = "a FIFO"
    else:
        os.symlink("/dev/zero", tmp_path / "weights.bin")
        what = "a character device"
    with pytest.raises(ModelLoadError, match=f"'weights.bin' is {what}") as err:
        cv.load(tmp_path / "m.onnx")
    assert "missing" not in str(err.value)
