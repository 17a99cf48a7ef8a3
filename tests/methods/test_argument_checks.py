"""Issue 24 point 4: the library refuses arguments it used to coerce silently (a batch size of 0 or 2.5, a window of
4.5 pixels, ``upsample="big"``, ``top=0``) and warns where the command line warned (an occlusion stride as large as
the image), each with a typed error or a warning instead of a different answer.

Model: tests/tiny_models.py's gap_classifier (8x8 input, CLASSES = 5).
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.methods import arguments
from onnx_cnnviz.methods.localise import localise
from onnx_cnnviz.methods.occlusion import occlusion, stride_note, warn_stride
from tests.tiny_models import CLASSES, gap_classifier


@pytest.fixture(scope="module")
def model():
    return cv.load(gap_classifier(size=8))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("value", [(4.5, 4), 4.5, (4, 2.0), "4", (4,), (4, 4, 4), (0, 4), True, None])
def test_pair_refuses_what_is_not_two_positive_ints(value):
    with pytest.raises(InputError, match="window must be an int or"):
        arguments.pair(value, "window")


@pytest.mark.parametrize("value,expected", [(4, (4, 4)), ((3, 5), (3, 5)), (np.array([2, 6]), (2, 6)),
                                            ([np.int64(7), 1], (7, 1))])
def test_pair_takes_ints(value, expected):
    assert arguments.pair(value, "window") == expected


@pytest.mark.parametrize("value", [0, -3, 2.5, 2.0, True, "8", np.float32(4)])
def test_batch_size_refuses_what_is_not_a_positive_int(value):
    with pytest.raises(InputError, match="batch_size must be None"):
        arguments.batch_size(value)


@pytest.mark.parametrize("value", [(31, 17), "big", 1, None, [True]])
def test_flag_refuses_what_is_not_a_bool(value):
    with pytest.raises(InputError, match="upsample must be True or False"):
        arguments.flag(value, "upsample")


def test_flag_takes_bools():
    assert arguments.flag(np.bool_(True), "upsample") is True and arguments.flag(False, "normalize") is False


@pytest.mark.parametrize("window", [(4.5, 4), (4, 3.999)])
def test_occlusion_refuses_a_fractional_window(model, x, window):
    with pytest.raises(InputError, match="window must be an int or"):
        occlusion(model, x, window=window, stride=2)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_occlusion_refuses_a_bad_batch_size(model, x, batch_size):
    with pytest.raises(InputError, match="batch_size must be None"):
        occlusion(model, x, window=4, stride=2, batch_size=batch_size)


@pytest.mark.parametrize("upsample", [(31, 17), "big"])
def test_occlusion_refuses_upsample_that_is_not_a_bool(model, x, upsample):
    with pytest.raises(InputError, match="upsample must be True or False"):
        occlusion(model, x, window=4, stride=2, upsample=upsample)


def test_warn_stride_warns_of_a_stride_as_large_as_the_image():
    with pytest.warns(UserWarning, match="stride 100x100 is not smaller than the 8x8 image in height and width"):
        warn_stride((100, 100), (8, 8))


def test_occlusion_stride_note_names_the_axis():
    assert "one column of windows" in stride_note((2, 8), (8, 8))
    assert "one row of windows" in stride_note((8, 2), (8, 8))
    assert stride_note((7, 7), (8, 8)) is None


@pytest.mark.parametrize("top", [0, -3, 2.5, CLASSES + 1, 10 ** 20])
def test_localise_refuses_a_top_it_would_clip(model, x, top):
    with pytest.raises(InputError, match=f"top must be an int between 1 and {CLASSES}"):
        localise(model, x, method="gradcam", top=top)


def test_localise_top_equal_to_the_class_count_gives_every_class(model, x):
    out = localise(model, x, method="gradcam", top=CLASSES)
    assert [sorted(loc.target for loc in image) for image in out] == [list(range(CLASSES))] * len(x)


def test_localise_refuses_a_bad_batch_size(model, x):
    with pytest.raises(InputError, match="batch_size must be None"):
        localise(model, x, method="gradcam", batch_size=0)


def test_a_single_pixel_layer_is_named_in_a_warning():
    assert arguments.single_pixel_note("grad_cam", "pool", (2, 1)) is None
    with pytest.warns(UserWarning, match="grad_cam at layer 'pool': the layer's feature map is 1x1, so the map "
                                         "carries no spatial information"):
        arguments.warn_single_pixel("grad_cam", "pool", (1, 1))


def test_the_models_runs_and_the_methods_share_one_batch_size_check():
    from onnx_cnnviz.input_checks import check_batch_size

    assert check_batch_size(None) is None and check_batch_size(np.int64(3)) == 3
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="batch_size must be None"):
            check_batch_size(bad)
