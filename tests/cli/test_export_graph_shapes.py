"""export-graph on a model whose output declares no shape (onnxruntime runs such files; onnx's checker refuses them
on a main graph): the written graph declares the shapes the model measured and passes the checker (the bad-input
tour's one traceback)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ..tiny_models import gap_classifier, save

pytestmark = pytest.mark.quick


def test_outputs_without_shape_get_the_measured_shapes(tmp_path):
    model = gap_classifier(size=32)
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    model.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)  # the file itself: what the command must cope with
    path = save(model, tmp_path / "noshape.onnx")
    out = tmp_path / "g.onnx"
    done = subprocess.run([sys.executable, "-m", "onnx_cnnviz.cli.main", "export-graph", str(path), "--out", str(out),
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    graph = onnx.load(out)
    onnx.checker.check_model(graph)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.graph.output}
    assert shapes["logits"] == ["N", 5]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones([2 if d == "N" else d for d in i.shape], np.float32) for i in session.get_inputs()}
    assert session.run(["logits"], feeds)[0].shape == (2, 5)
