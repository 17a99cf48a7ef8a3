"""Issue 24 (points 4, 6, 8): the run layer and the command line refuse what they cannot honour, in one typed line,
instead of a silently different answer, a traceback or a hang.

Model: tests/tiny_models.py's gap_classifier (8x8 input, CLASSES = 5 classes, no preprocessing metadata).
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_cnnviz import runs
from onnx_cnnviz.errors import InputError
from tests.conftest import REPO
from tests.tiny_models import CLASSES, make_model, save

from . import invoke

#: Beyond any C long: the value that overflowed inside the library (issue 24 point 6).
HUGE = "99999999999999999999"


@pytest.mark.parametrize("command", [
    ["explain", "-m", "saliency"],
    ["report", "-m", "saliency"],
    ["localize", "-m", "saliency"],
])
def test_top_k_above_the_class_count_is_refused(inputs, tmp_path, command):
    result = invoke(command[0], inputs / "model.onnx", inputs / "a.png", *command[1:], "--out", tmp_path / "out",
                    "--top-k", CLASSES + 1, "--preprocess", "imagenet")
    assert result.exit_code == 2, result.output
    assert f"between 1 and {CLASSES}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_top_k_equal_to_the_class_count_runs(inputs, tmp_path):
    result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "-m", "saliency", "--out", tmp_path / "out",
                    "--top-k", CLASSES, "--preprocess", "imagenet")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("*.json"))) == CLASSES


def test_library_runs_refuse_top_k_above_the_class_count(inputs, tmp_path):
    with pytest.raises(InputError, match=f"between 1 and {CLASSES}") as info:
        runs.explain_images(inputs / "model.onnx", inputs, tmp_path / "a", top_k=CLASSES + 1, preprocess="imagenet")
    assert info.value.option == "--top-k"


def evaluate(inputs, out, *extra):
    return invoke("evaluate", inputs / "model.onnx", inputs / "a.png", inputs / "b.png", "--preprocess", "imagenet",
                  "-m", "saliency", "--metric", "average-drop", "--out", out, *extra)


def test_resume_skips_and_reports_bad_journal_lines_and_recomputes_their_rows(inputs, tmp_path):
    out = tmp_path / "out"
    assert evaluate(inputs, out).exit_code == 0
    path = out / "results.jsonl"
    first, second = path.read_bytes().splitlines(keepends=True)
    edited = json.loads(second)
    edited["value"] = "abc"
    # Line 1: invalid UTF-8 in the middle of a row; line 2: a row whose value is no number.
    path.write_bytes(first.replace(b'"method"', b'"m\xff\xfethod"') + (json.dumps(edited) + "\n").encode())
    result = evaluate(inputs, out, "--resume")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    warning = [line for line in result.stderr.splitlines() if "no journal row" in line]
    assert warning and "line 1 (not UTF-8 text)" in warning[0] and "line 2 ('value' is 'abc'" in warning[0]
    assert "2 computed, 0 kept" in result.stderr
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(math.isfinite(float(r["value"])) for r in rows)
    assert path.read_bytes().startswith(first.replace(b'"method"', b'"m\xff\xfethod"'))  # the user's lines are kept


@pytest.mark.parametrize("args", [
    ["explain", "-m", "smoothgrad", "--samples", HUGE],
    ["explain", "-m", "ig", "--steps", HUGE],
    ["explain", "-m", "occlusion", "--window", "4", "--stride", HUGE],
    ["explain", "-m", "saliency", "--batch-size", HUGE],
    ["explain", "-m", "saliency", "--rows-per-run", HUGE],
    ["report", "-m", "smoothgrad", "--samples", HUGE],
    ["evaluate", "-m", "saliency", "--metric", "sensitivity-max", "--metric-param",
     f"sensitivity-max.samples={HUGE}"],
    ["evaluate", "-m", "saliency", "--metric", "deletion", "--metric-param", f"deletion.pixels_per_step={HUGE}"],
])
def test_huge_integers_are_usage_errors(inputs, tmp_path, args):
    result = invoke(args[0], inputs / "model.onnx", inputs / "a.png", *args[1:], "--out", tmp_path / "out",
                    "--preprocess", "imagenet")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_huge_seed_is_a_usage_error(tmp_path):
    result = invoke("dream", REPO / "models" / "gap_cnn.onnx", "--seed", HUGE, "--out", tmp_path / "d.png")
    assert result.exit_code == 2, result.output
    assert "0<=x<=4294967295" in result.stderr


def mlp(path):
    """A 3x8x8 -> 5 MLP (Flatten, MatMul, Add): no spatial layer, so Grad-CAM has nothing to explain at."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["h"]),
             helper.make_node("Add", ["h", "B"], ["y"])]
    inits = [numpy_helper.from_array(rng.normal(size=(192, CLASSES)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "B")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, CLASSES])], inits)
    return save(model, path)


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_a_method_that_cannot_run_is_left_out_and_the_others_run(inputs, tmp_path, command):
    model = mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    extra = ["--metric", "average-drop"] if command == "evaluate" else []
    result = invoke(command, model, inputs / "a.png", "-m", "gradcam,saliency", *extra, "--out", out,
                    "--preprocess", "imagenet", "--json")
    assert result.exit_code == 1, result.output
    assert "gradcam cannot run on this model" in result.stderr and "no spatial feature map" in result.stderr
    assert "1 method(s) could not run on this model (gradcam" in result.stderr.strip().splitlines()[-1]
    doc = json.loads(result.stdout)
    assert list(doc["unavailable"]) == ["gradcam"] and doc["methods"] == ["saliency"]
    if command == "explain":
        assert sorted(p.name for p in out.glob("*.json")) == ["a.saliency.top1.json"]
    else:
        assert [(r["method"], r["metric"]) for r in doc["results"]] == [("saliency", "average-drop")]


def test_no_method_that_can_run_is_the_typed_error(inputs, tmp_path):
    result = invoke("explain", mlp(tmp_path / "mlp.onnx"), inputs / "a.png", "-m", "gradcam", "--out",
                    tmp_path / "out", "--preprocess", "imagenet")
    assert result.exit_code == 1 and "no spatial feature map" in result.stderr and "Traceback" not in result.stderr


def test_a_wrong_layer_given_is_still_an_error_for_every_method(inputs, tmp_path):
    result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "-m", "gradcam,saliency", "--layer",
                    "no-such-layer", "--out", tmp_path / "out", "--preprocess", "imagenet")
    assert result.exit_code in (1, 2) and "no-such-layer" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def dynamic_size_model(path):
    """The tiny classifier with a dynamic height and width (any --size is accepted by the graph)."""
    from tests.tiny_models import gap_classifier

    model = gap_classifier()
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    return save(model, path)


@pytest.mark.parametrize("command", ["explain", "evaluate", "report"])
def test_a_size_over_the_models_pixel_limit_is_refused_before_any_resize(inputs, tmp_path, command):
    """4200x4200 (17.6 M pixels) is over the default max_pixels (16.7 M): refused as a usage error of --size from
    the numbers alone; before, the pictures were resized to it first (30000x30000 passed 5 GB)."""
    model = dynamic_size_model(tmp_path / "dyn.onnx")
    result = invoke(command, model, inputs / "a.png", "-m", "saliency", "--size", "4200x4200", "--out",
                    tmp_path / "out", "--preprocess", "imagenet")
    assert result.exit_code == 2, result.output
    assert "--size 4200x4200 is 17,640,000 pixels, more than the model's max_pixels" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    runs_ok = invoke(command, model, inputs / "a.png", "-m", "saliency", "--size", "16x16", "--out", tmp_path / "ok",
                     "--preprocess", "imagenet")
    assert runs_ok.exit_code == 0, runs_ok.output


def test_library_runs_refuse_a_size_over_the_pixel_limit(inputs, tmp_path):
    with pytest.raises(InputError, match="more than the model's max_pixels") as info:
        runs.explain_images(dynamic_size_model(tmp_path / "dyn.onnx"), inputs, tmp_path / "a",
                            methods=["saliency"], size=(30000, 30000), preprocess="imagenet")
    assert info.value.option == "--size"
