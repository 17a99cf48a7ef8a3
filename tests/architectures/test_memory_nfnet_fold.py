"""A real weight-standardised network loads with its kernels folded (graph/loading/weights.py's
``fold_computed_weights_inplace``; issue 26) and explains as the graph as exported does.

timm's ``test_nfnet`` at 64x64 with random weights, the export tests/architectures/test_computed_weights.py makes
(that module loads it with the fold off, to keep the rules' run-time-weight paths tested on real models).
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.graph.loading import weights


def test_timm_nfnet_kernels_are_folded_and_explain_as_before(monkeypatch):
    # A real weight-standardised network (timm's test_nfnet, 64x64, random weights): every standardised kernel is
    # folded, and the scores and input gradients are those of the graph as exported, whose sessions each fold them.
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from tests.conftest import CACHE, rel_err
    from tests.exporting import export_torchscript

    path = CACHE / "timm_test_nfnet_64.onnx"  # tests/architectures/test_computed_weights.py's export
    if not path.exists():
        torch.manual_seed(0)
        export_torchscript(timm.create_model("test_nfnet", pretrained=False, num_classes=10).eval(),
                           torch.zeros(1, 3, 64, 64), path)
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    m = cv.load(path, device="cpu")
    with monkeypatch.context() as patch:
        patch.setattr(weights, "FOLD_COMPUTED_WEIGHTS", False)
        unfolded = cv.load(path, device="cpu")

    def computed_kernels(model) -> int:
        graph = model.spec().model.graph
        inits = {t.name for t in graph.initializer}
        return sum(1 for n in graph.node if n.op_type == "Conv" and n.input[1] not in inits)

    assert computed_kernels(unfolded) >= 10 and computed_kernels(m) == 0
    record = {r.name: r for r in m.load_passes}["constants"]
    assert record.details["computed_weights_folded"] >= 10
    before, after = record.details["float_weight_bytes"]
    assert after < before  # TorchScript stores each standardised kernel twice; one folded copy is left
    np.testing.assert_array_equal(m.scores(x), unfolded.scores(x))
    ours, theirs = cv.gradients(m, x, targets=[1, 7]), cv.gradients(unfolded, x, targets=[1, 7])
    for i in range(len(x)):
        assert rel_err(ours[i], theirs[i]) < 1e-5
