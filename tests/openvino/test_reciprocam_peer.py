"""Our Recipro-CAM (methods/reciprocam.py) against OpenVINO XAI 1.1.0's ``ReciproCAM`` on the same ONNX file.

OpenVINO XAI inserts the masking into the OpenVINO model and returns the (1, K, h, w) scores of every class at the
layer its parser picks (the last 4-D output with 1 < h, w < C: the last block's ReLU), min-max scaled to [0, 255] per
class when ``embed_scaling`` is on (the default). We compare the raw map (``embed_scaling=False`` against
``upsample=False, normalize=False``, to 1e-5) and the scaled one (theirs, which leaves as uint8, is ours * 255
truncated), at float32: the
model is compiled with ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's CPU default on CPUs with bfloat16 instructions is
bfloat16, about 3 significant digits). Runs in ``.venv-openvino``; skipped where openvino-xai is not installed.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.methods.reciprocam import reciprocam

from .small_models import resnet18, small_cnn

ov = pytest.importorskip("openvino", reason="needs openvino-xai (.venv-openvino, see .ci/run)")
xai = pytest.importorskip("openvino_xai", reason="needs openvino-xai (.venv-openvino, see .ci/run)")


def openvino_reciprocam(path, x: np.ndarray, embed_scaling: bool) -> np.ndarray:
    """OpenVINO XAI's white-box ReciproCAM on one image: (K, h, w)."""
    method = xai.methods.ReciproCAM(ov.Core().read_model(str(path)), embed_scaling=embed_scaling,
                                    prepare_model=False)
    method.prepare_model(load_model=False)
    # what prepare_model() would compile, at float32 (the peer's own method object then runs it)
    method._model_compiled = ov.Core().compile_model(method._model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(method.generate_saliency_map(x))[0]


@pytest.mark.parametrize("build,size", [(small_cnn, 16), (resnet18, 112)], ids=["small-cnn", "resnet18"])
def test_equal_to_openvino_xai(tmp_path, build, size):
    model = build(size=size)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    m = cv.load(path, device="cpu")
    rng = np.random.default_rng(7)
    for k in range(2):
        x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        raw = openvino_reciprocam(path, x, embed_scaling=False)
        scaled = openvino_reciprocam(path, x, embed_scaling=True)
        for target in (int(m.scores(x).argmax()), 3):
            ours = reciprocam(m, x, targets=target, upsample=False, normalize=False)[0]
            assert ours.shape == raw.shape[1:] and ours.shape[0] > 1
            scale = float(np.abs(raw[target]).max())
            np.testing.assert_allclose(ours, raw[target], rtol=0, atol=1e-5 * max(1.0, scale))
            # their scaled map leaves as uint8: (m - min) / (max - min + 1e-12) * 255, truncated
            assert scaled.dtype == np.uint8
            ours_255 = reciprocam(m, x, targets=target, upsample=False)[0].astype(np.float64) * 255.0
            gap = ours_255 - scaled[target]
            assert gap.min() >= -1e-3 and gap.max() < 1 + 1e-3, (gap.min(), gap.max())
