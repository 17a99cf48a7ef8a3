"""Per-detection Grad-CAM at each FPN level alone against pytorch-grad-cam on the same torch yolov8n (random weights
built from its yaml) with the same target, the detection's class-score element. test_detection.py checks the coarsest
level (the default layer), the three levels combined and EigenCAM at every level; the two finer levels alone are
checked here."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.tasks import detect, explain

from .conftest import images

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def yolov8n(yolov8n_torchscript):
    module, path = yolov8n_torchscript
    return module, cv.load(path, device="cpu", task="detector")


@pytest.mark.slow
def test_grad_cam_at_each_finer_level_alone_equals_pytorch_grad_cam(yolov8n):
    """Level 0 (stride 8, ultralytics' model.15) and level 1 (stride 16, model.18), each for a detection whose anchor
    is on that level (a finer level's anchors do not read the coarser levels: their maps would be zero): our map
    equals pytorch-grad-cam's GradCAM at that module with the detection's element as target."""
    from pytorch_grad_cam import GradCAM

    module, m = yolov8n
    sizes = [int(np.prod(m.layer(name).shape[2:])) for name in m.levels]
    x = images(1, seed=8)
    found = detect(m, x, conf=0.25, max_det=1000)[0]
    net = module.inner
    for p in net.parameters():  # pytorch-grad-cam backpropagates from the output: it needs a graph
        p.requires_grad_(True)
    try:
        for level, index in ((0, 15), (1, 18)):
            name = m.levels[level]
            assert f"/model.{index}/" in name
            first = sum(sizes[:level])
            on_level = [d for d in found if first <= d.element % m.decoder.anchors < first + sizes[level]][:8]
            maps = explain(cv.grad_cam, m, x, on_level, layer=name)
            # At random weights a map can be all negative before the ReLU (zero after it, as pytorch-grad-cam's): the
            # first detection whose map is not is compared.
            pick = next(k for k, mk in enumerate(maps) if np.ptp(mk) > 0)
            d, mine = on_level[pick], maps[pick]
            row, anchor = divmod(d.element, m.decoder.anchors)
            with GradCAM(model=module, target_layers=[net.model[index]]) as peer:
                ref = peer(input_tensor=torch.from_numpy(x), targets=[lambda out: out[row, anchor]])[0]
            assert np.ptp(ref) > 0, level
            # pytorch-grad-cam scales by 1 / (1e-7 + max): at random weights the maps' maxima are ~1e-12, its
            # second scaling's maximum ~1e-6 and its epsilon shrinks the map by a few percent; its own maximum
            # undoes that. Then the min-max scaled maps differ by float32 rounding only.
            np.testing.assert_allclose(mine, ref / ref.max(), atol=5e-4, err_msg=f"level {level}")
    finally:
        for p in net.parameters():
            p.requires_grad_(False)
