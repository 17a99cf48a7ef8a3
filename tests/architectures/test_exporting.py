"""tests/exporting.py, the one export helper of the tests and benchmarks: each exporter and batch setting writes a
file that loads, declares the batch it was asked for, and scores like torch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_cnnviz as cv
from tests.exporting import DYNAMO_OPSET, INPUT, TORCHSCRIPT_OPSET, export_dynamo, export_torchscript

torch = pytest.importorskip("torch")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()


def _declared(path):
    model = onnx.load(str(path))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return model.graph.input[0].name, (dim.dim_value if dim.HasField("dim_value") else dim.dim_param), opset


def _scores_like_torch(net, path, n):
    x = np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(cv.load(path, device="cpu").scores(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamic", [True, False])
def test_torchscript_export(tmp_path, dynamic):
    net = _net()
    path = export_torchscript(net, torch.zeros(1, 3, 8, 8), tmp_path / "sub" / "net.onnx", dynamic_batch=dynamic)
    name, batch, opset = _declared(path)
    assert (name, opset) == (INPUT, TORCHSCRIPT_OPSET)
    assert batch == ("N" if dynamic else 1)
    _scores_like_torch(net, path, 3 if dynamic else 1)


@pytest.mark.parametrize("batch, example", [("dim", 2), ("dynamic", 2), ("static", 1)])
def test_dynamo_export(tmp_path, batch, example):
    pytest.importorskip("onnxscript")
    net = _net()
    path = export_dynamo(net, torch.zeros(example, 3, 8, 8), tmp_path / "net.onnx", batch=batch)
    name, declared, opset = _declared(path)
    assert (name, opset) == (INPUT, DYNAMO_OPSET)
    assert isinstance(declared, str) if batch != "static" else declared == 1
    _scores_like_torch(net, path, 3 if batch != "static" else 1)


def test_dynamo_export_refuses_an_unknown_batch_kind(tmp_path):
    with pytest.raises(KeyError):
        export_dynamo(_net(), torch.zeros(1, 3, 8, 8), tmp_path / "net.onnx", batch="any")
