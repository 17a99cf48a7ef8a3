"""Real detector and segmenter files for the runs' and the CLI's task tests, built offline and cached: yolov8n
(random weights from ultralytics' yaml, tests/tasks/conftest.py's build) and torchvision LR-ASPP at 64x64."""
from __future__ import annotations

from tests.conftest import CACHE


def yolo_path(stem: str = "yolov8n"):
    """``stem`` exported by torch.onnx.export at tests/tasks' size (320), the same cached file as tests/tasks."""
    from tests.tasks.conftest import SIZE, HeadOutput, export_torchscript, ultralytics_net

    path = CACHE / f"{stem}_torchscript_{SIZE}.onnx"
    if not path.exists():
        _, net = ultralytics_net(f"{stem}.yaml")
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
