"""``device="openvino"`` without onnxruntime's OpenVINO execution provider (the main venv has onnxruntime-gpu):
a typed error that names the package, before any model is read."""
from __future__ import annotations

import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import runtime
from onnx_cnnviz.errors import InputError, MissingDependencyError

from .small_models import small_cnn


@pytest.mark.skipif(runtime.openvino_available(), reason="the OpenVINO provider is installed here")
def test_missing_provider_is_a_typed_error():
    with pytest.raises(MissingDependencyError, match="onnxruntime-openvino"):
        runtime.providers_for("openvino")
    with pytest.raises(MissingDependencyError, match="device='cpu'"):
        cv.load(small_cnn(), device="openvino")


def test_devices_and_their_names():
    assert "openvino" in runtime.DEVICES
    assert runtime.device_of(["OpenVINOExecutionProvider", "CPUExecutionProvider"]) == "openvino"
    assert runtime.device_of(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    assert runtime.device_of(["CPUExecutionProvider"]) == "cpu"
    with pytest.raises(InputError, match="openvino"):
        runtime.providers_for("npu")
