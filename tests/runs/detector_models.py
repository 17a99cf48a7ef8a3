"""Real detector and segmenter files for the runs' and the CLI's task tests, built offline and cached: yolov8n
(random weights from ultralytics' yaml, tests/tasks/conftest.py's build) and torchvision LR-ASPP at 64x64."""
from __future__ import annotations

from tests.conftest import CACHE


def yolo_path(stem: str = "yolov8n", gain: float = 1.0):
    """``stem`` exported by torch.onnx.export at tests/tasks' size (320) (with ``gain`` 1, the same cached file as
    tests/tasks). The random class branches score every anchor within 1e-6 of 0.5, so that which detections pass
    NMS, and in which order, turns on float rounding; ``gain`` scales the class branches' last weights, spreading
    the scores over (0, 1) so that a run on other threads (Ray's actors) keeps the same detections."""
    from tests.tasks.conftest import SIZE, HeadOutput, export_torchscript, ultralytics_net

    suffix = "" if gain == 1.0 else f"_gain{gain:g}"
    path = CACHE / f"{stem}{suffix}_torchscript_{SIZE}.onnx"
    if not path.exists():
        _, net = ultralytics_net(f"{stem}.yaml")
        for branch in net.model[-1].cv3:
            branch[-1].weight.data *= gain
        export_torchscript(HeadOutput(net), path)
    return path


def lraspp_path(size: int = 64):
    """torchvision's LR-ASPP MobileNetV3 (random weights, 21 classes) returning its 'out' map, dynamic batch."""
    import torch
    import torchvision

    from tests.exporting import export_torchscript

    path = CACHE / f"segmenter_lraspp_mobilenet_v3_large_{size}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval()

        class Out(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x)["out"]

        export_torchscript(Out(net).eval(), torch.zeros(1, 3, size, size), path, output="out")
    return path
