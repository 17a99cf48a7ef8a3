"""ultralytics detectors with random weights, built offline from their yaml and exported once per session."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from tests.conftest import CACHE
from tests.exporting import export_torchscript as export_module

SIZE = 320  # anchors 40*40 + 20*20 + 10*10 = 2100: small enough for 2 cores, three pyramid levels


def ultralytics_net(yaml: str, seed: int = 0):
    """An ultralytics detection model built from ``yaml`` with random weights (nothing is downloaded), in eval mode.
    The class branches' last biases are zeroed: ultralytics' prior bias (log(5 / nc / (640 / s) ** 2)) makes every
    untrained class score about 1e-4, with gradients near float32's noise; at 0 the scores spread around 0.5."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO(yaml)
    net = yolo.model.eval()
    for branch in net.model[-1].cv3:
        branch[-1].bias.data.zero_()
    for p in net.parameters():
        p.requires_grad_(False)
    return yolo, net


class HeadOutput:
    """The detector's head output alone (eval mode returns (y, extras))."""

    def __new__(cls, net):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x)[0]

        return Wrapped(net).eval()


def export_torchscript(wrapped, path):
    """torch.onnx.export (TorchScript exporter, opset 17, dynamic batch) of a module returning the head output."""
    import torch

    export_module(wrapped, torch.zeros(1, 3, SIZE, SIZE), path, input="images", output="output0")


def export_ultralytics(yolo, path, work):
    """ultralytics' own exporter (opset 17, static batch 1, no onnxslim), offline, run in ``work``."""
    cwd = os.getcwd()
    os.environ.setdefault("YOLO_CONFIG_DIR", str(work))
    os.chdir(work)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = yolo.export(format="onnx", imgsz=SIZE, opset=17, simplify=False, dynamic=False, device="cpu",
                              verbose=False)
    finally:
        os.chdir(cwd)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(out if os.path.isabs(out) else work / out, path)


@pytest.fixture(scope="session")
def ultralytics_onnx(tmp_path_factory):
    """Factory: (yaml stem, exporter "torchscript" | "ultralytics") -> (torch module returning the head output, ONNX
    path), each exported once (cached under the test cache)."""
    made = {}

    def get(stem: str, exporter: str):
        if (stem, exporter) not in made:
            yolo, net = ultralytics_net(f"{stem}.yaml")
            path = CACHE / f"{stem}_{exporter}_{SIZE}.onnx"
            if not path.exists():
                if exporter == "torchscript":
                    export_torchscript(HeadOutput(net), path)
                else:
                    export_ultralytics(yolo, path, tmp_path_factory.mktemp("ultralytics"))
            made[stem, exporter] = (HeadOutput(net), path)
        return made[stem, exporter]

    return get


@pytest.fixture(scope="session")
def yolov8n_torchscript(ultralytics_onnx):
    """(torch module returning the head output, ONNX path): yolov8n exported by torch.onnx.export."""
    return ultralytics_onnx("yolov8n", "torchscript")


def images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random images in [0, 1], as ultralytics takes them."""
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)
