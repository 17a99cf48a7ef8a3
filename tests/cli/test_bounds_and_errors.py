"""Issue 24 (points 4, 6, 8): the run layer and the command line refuse what they cannot honour, in one typed line,
instead of a silently different answer, a traceback or a hang.

Model: tests/tiny_models.py's gap_classifier (8x8 input, CLASSES = 5 classes, no preprocessing metadata).
"""
from __future__ import annotations

import pytest

from onnx_cnnviz import runs
from onnx_cnnviz.errors import InputError
from tests.tiny_models import CLASSES

from . import invoke


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
