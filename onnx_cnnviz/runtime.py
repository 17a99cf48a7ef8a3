"""onnxruntime sessions: execution providers, threads, batching.

``device="auto"`` uses CUDA only when a CUDA session can really be created (the provider library and its CUDA/cuDNN
dependencies load and a GPU is present), and falls back to the CPU silently: onnxruntime-gpu prints a red error when
asked for CUDA on a machine without it, so we check before asking.
"""
from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
import onnx

from .errors import InputError, RuntimeFailure

DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when onnxruntime can create a working CUDA session here. Never prints."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    if not _gpu_present():
        return False
    try:  # torch's or the system's CUDA libraries, where onnxruntime knows how to find them
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls(directory="")
    except Exception:
        pass
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:
        return False
    return "CUDAExecutionProvider" in session.get_providers()


def _gpu_present() -> bool:
    """A CUDA driver that reports at least one device (checked without onnxruntime, so nothing is logged)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return False
            count = ctypes.c_int(0)
            return lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
        except Exception:
            return False
    return False


def providers_for(device: str) -> list[str]:
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, not {device!r}.")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if cuda_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeFailure(
            "device='cuda' was asked for but onnxruntime cannot use CUDA here (no GPU, no onnxruntime-gpu, or "
            "missing CUDA/cuDNN libraries). Use device='auto' or 'cpu'.")
    return ["CPUExecutionProvider"]


def available_memory() -> int | None:
    """Bytes of physical memory available now (Linux/Unix sysconf), or None where the platform cannot tell."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def default_threads() -> int:
    """Intra-op threads: the cores this process may use (affinity-aware), as onnxruntime would pick by default."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Session:
    """One onnxruntime session over a (rewritten) graph."""

    def __init__(self, model: onnx.ModelProto, providers: list[str], threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        except Exception as exc:
            raise RuntimeFailure(f"onnxruntime could not load the rewritten graph: {str(exc)[:500]}") from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.providers = self._session.get_providers()

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        try:
            values = self._session.run(names, feeds)
        except Exception as exc:
            raise RuntimeFailure(f"onnxruntime failed while running the model: {str(exc)[:500]}") from None
        return dict(zip(names, values))
