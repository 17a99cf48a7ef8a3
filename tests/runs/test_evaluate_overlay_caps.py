"""Issue 24's evaluate leftovers: the page overlays every method's mean curve of a metric in one plot (with a legend
in ranking order), and metric parameters above their documented caps are refused before any work (the model is not
even read: a missing model file would otherwise be the error).

Model: tests/tiny_models.py's gap_classifier (8x8 input), two generated 32x32 pictures.
"""
from __future__ import annotations

import base64
import re

import cv2
import numpy as np
import pytest

from onnx_cnnviz.errors import InputError
from onnx_cnnviz.metrics import imputation, registry as metric_registry, robustness
from onnx_cnnviz.runs import evaluate_images
from onnx_cnnviz.runs.evaluate_tables import PALETTE, overlay_picture
from tests.cli import invoke, one_line_error
from tests.tiny_models import gap_classifier, save, write_png

METHODS = ["gradcam", "saliency", "guided"]


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    save(gap_classifier(), folder / "model.onnx")
    write_png(folder / "a.png", seed=1)
    write_png(folder / "b.png", seed=2)
    return folder


def colour_pixels(pic: np.ndarray, rgb) -> int:
    return int((np.abs(pic.astype(int) - np.array(rgb)).sum(axis=2) <= 30).sum())


def test_overlay_picture_draws_every_curve_in_its_colour():
    axis = np.linspace(0, 1, 9)
    lines = [("a", np.linspace(1, 0, 9), axis), ("b", np.full(9, 0.5), axis), ("c", np.linspace(0, 1, 9), axis)]
    pic = overlay_picture(lines, "t", "fraction")
    assert pic.shape == (340, 640, 3)
    for k in range(3):
        assert colour_pixels(pic, PALETTE[k]) > 100
    assert colour_pixels(pic, PALETTE[3]) == 0
    one = overlay_picture(lines[:1], "t", "fraction")
    assert colour_pixels(one, PALETTE[1]) == 0


def test_the_page_overlays_the_methods_one_plot_per_metric(inputs, tmp_path):
    out = tmp_path / "eval"
    document = evaluate_images(inputs / "model.onnx", [inputs / "a.png", inputs / "b.png"], out, methods=METHODS,
                               metrics=["deletion", "insertion", "average-drop"], preprocess="imagenet",
                               metric_params={"deletion": {"pixels_per_step": 4}, "insertion": {"pixels_per_step": 4}})
    page = (out / "report.html").read_text()
    overlays = re.findall(r'<img alt="curves ([a-z-]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [metric for metric, _ in overlays] == ["deletion", "insertion"]  # average drop has no curve
    for metric, _ in overlays:  # each method's own picture is folded under the overlay
        folded = page.split(f'alt="curves {metric}"')[1].split("</details>")[0]
        assert "<details>" in folded and all(f'alt="curve {m} {metric}"' in folded for m in METHODS)
    for metric, data in overlays:
        pic = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
        for k in range(len(METHODS)):  # one colour per method, in ranking order
            assert colour_pixels(pic, PALETTE[k]) > 20, (metric, k)
    for method in METHODS:  # the files of each method's curve are still written
        assert (out / f"curve.{method}.deletion.png").is_file()
    assert document["ranking"]["deletion"][0] in METHODS


@pytest.mark.parametrize("metric, params, cap", [
    ("sensitivity-max", {"samples": 100_000_000}, f"{robustness.MAX_SAMPLES:,}"),
    ("infidelity", {"samples": robustness.MAX_SAMPLES + 1}, f"{robustness.MAX_SAMPLES:,}"),
    ("road-morf", {"percentiles": list(range(imputation.MAX_PERCENTILES + 1))}, f"{imputation.MAX_PERCENTILES:,}"),
    ("deletion", {"pixels_per_step": 0}, "positive int"),
])
def test_capped_parameters_are_refused_before_the_model_is_read(tmp_path, metric, params, cap):
    with pytest.raises(InputError, match=cap) as info:
        evaluate_images(tmp_path / "missing.onnx", [tmp_path / "missing.png"], tmp_path / "out", metrics=[metric],
                        metric_params={metric: params})
    assert f"metric {metric!r}" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_the_command_refuses_a_capped_parameter_in_one_line(inputs, tmp_path):
    result = invoke("evaluate", inputs / "model.onnx", inputs / "a.png", "--preprocess", "imagenet", "--out",
                    tmp_path / "out", "--metric", "sensitivity-max", "--metric-param",
                    "sensitivity-max.samples=100000000")
    assert result.exit_code != 0
    line = one_line_error(result)
    assert "sensitivity-max" in line and f"{robustness.MAX_SAMPLES:,}" in line
    assert not (tmp_path / "out").exists()


def test_check_values_returns_the_defaults_within_the_caps():
    assert metric_registry.check_values("sensitivity-max", {"samples": robustness.MAX_SAMPLES})["samples"] == \
        robustness.MAX_SAMPLES
    assert metric_registry.check_values("deletion")["pixels_per_step"] is None
