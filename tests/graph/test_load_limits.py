"""Issue 15, the graph side: every failure is typed, and sizes are capped before anything is allocated.

* versions: an opset newer than the installed onnx/onnxruntime support is a ModelLoadError saying which (before: a C++
  signature from onnxruntime at the first run);
* structure: no outputs, a graph out of topological order (sorted, then loaded; a cycle refused), a second input the
  score needs, a missing backward rule (the message says which op and that it can be reported; no source folder);
* sizes: the image's H*W against ``max_pixels`` (the model's declared input, ``input_size``, the array explained), a
  tensor's declared size against what the file holds and a 4 GiB cap (checked from the dims, before reading), and the
  peak memory of loading and describing a model with a fixed 4096x4096 input, measured in a child process.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph.load import MAX_TENSOR_BYTES, read_model, topological_sort

from tests.tiny_models import CLASSES, gap_classifier, save


def x_of(n=1, size=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------------------------------

def test_an_opset_newer_than_the_installed_libraries_is_a_load_error(tmp_path):
    model = gap_classifier()
    model.opset_import[0].version = 30
    model.ir_version = 10
    for source in (model, save(model, tmp_path / "future.onnx")):
        with pytest.raises(cv.ModelLoadError) as info:
            cv.load(source, device="cpu")
        message = str(info.value)
        assert "opset 30" in message and "onnxruntime" in message and "onnxruntime_src" not in message
        assert "Re-export" in message
        top = int(message.split("opset ")[2].split(" at most")[0])
        assert 17 <= top < 30
    # The newest opset it names does load.
    model.opset_import[0].version = top
    assert cv.load(model, device="cpu").num_classes == CLASSES


# --------------------------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------------------------

def test_a_model_without_outputs():
    model = gap_classifier()
    del model.graph.output[:]
    with pytest.raises(cv.ModelStructureError, match="the model has no outputs") as info:
        cv.load(model, device="cpu")
    assert "several" not in str(info.value)


def test_a_graph_out_of_topological_order_is_sorted_then_loaded():
    model = gap_classifier()
    nodes = list(model.graph.node)
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes[::-1])
    ordered, scrambled = cv.load(model, device="cpu"), cv.load(shuffled, device="cpu")
    assert scrambled.layers == ordered.layers and scrambled.default_layer == "relu1"
    x = x_of(2)
    np.testing.assert_allclose(cv.saliency(scrambled, x, targets=1), cv.saliency(ordered, x, targets=1))
    # The pass returns a new model in order, the argument untouched.
    fixed = topological_sort(shuffled)
    assert [n.name for n in fixed.graph.node] == [n.name for n in nodes]
    assert [n.name for n in shuffled.graph.node] == [n.name for n in nodes[::-1]]


def test_a_cycle_is_a_load_error():
    model = gap_classifier()
    model.graph.node[0].input[0] = "relu1"  # conv1 reads relu1, which reads conv1
    with pytest.raises(cv.ModelLoadError, match=r"cycle .*conv1.*relu1"):
        cv.load(model, device="cpu")


def test_a_second_input_the_score_needs_is_named():
    model = gap_classifier()
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("bias_map", TensorProto.FLOAT, [1, 4, 8, 8]))
    graph.node.insert(2, helper.make_node("Add", ["relu1", "bias_map"], ["shifted"], name="shift"))
    graph.node[3].input[0] = "shifted"
    with pytest.raises(cv.ModelStructureError) as info:
        cv.load(model, device="cpu", input="x")
    message = str(info.value)
    assert "'bias_map'" in message and "need a value" in message and "not supported" in message


def test_a_second_input_the_score_does_not_need_is_dropped():
    model = gap_classifier()
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1, 2]))
    graph.node.append(helper.make_node("Relu", ["unused"], ["side"], name="side"))
    graph.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    m = cv.load(model, device="cpu", input="x", output="logits")
    assert m.scores(x_of()).shape == (1, CLASSES)  # before: onnxruntime's "Required inputs (['unused'])"
    assert cv.saliency(m, x_of()).shape == (1, 8, 8)


def test_a_missing_rule_names_the_op_and_says_it_can_be_reported():
    def sin(last):
        return [helper.make_node("Sin", [last], ["wave"], name="wave")], [], "wave"

    m = cv.load(gap_classifier(mid=sin), device="cpu")
    with pytest.raises(cv.UnsupportedOpError) as info:
        cv.saliency(m, x_of())
    message = str(info.value)
    assert "'wave'" in message and "Sin" in message and "gradient path" in message
    assert "issue" in message
    assert "rules/" not in message and "site-packages" not in message and ".py" not in message
    assert info.value.node_name == "wave" and info.value.op_type == "Sin"


def test_a_layer_given_as_a_number_is_an_input_error():
    m = cv.load(gap_classifier(), device="cpu")
    for bad in (3, 3.0, [3]):
        with pytest.raises(cv.InputError):
            cv.grad_cam(m, x_of(), layer=bad)


# --------------------------------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------------------------------

def _declared(size_h: int, size_w: int) -> onnx.ModelProto:
    model = gap_classifier()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = size_h, size_w
    return model


def test_a_declared_input_over_max_pixels_is_refused_before_anything_runs():
    start = time.perf_counter()
    with pytest.raises(cv.ModelStructureError) as info:
        cv.load(_declared(100_000, 100_000), device="cpu")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "100000x100000" in message and f"max_pixels={cv.MAX_PIXELS:,}" in message
    assert "load(..., max_pixels=N)" in message
    assert cv.MAX_PIXELS == 4096 * 4096
    with pytest.raises(cv.ModelStructureError, match="max_pixels=100"):
        cv.load(gap_classifier(size=16), device="cpu", max_pixels=100)
    assert cv.load(gap_classifier(size=16), device="cpu", max_pixels=256).num_classes == CLASSES


def test_input_size_and_arrays_over_max_pixels_are_input_errors():
    model = gap_classifier()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(cv.InputError, match=r"input_size=\(100000, 100000\).*max_pixels"):
        cv.load(model, device="cpu", input_size=(100_000, 100_000))
    with pytest.raises(cv.InputError, match="input_size must be"):
        cv.load(model, device="cpu", input_size="big")
    m = cv.load(model, device="cpu", input_size=(8, 8), max_pixels=100)
    assert m.scores(x_of(size=10)).shape == (1, CLASSES)
    with pytest.raises(cv.InputError, match=r"11x11 = 121 pixels, more than max_pixels=100"):
        cv.saliency(m, x_of(size=11))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(cv.InputError, match="max_pixels must be"):
            cv.load(model, device="cpu", input_size=(8, 8), max_pixels=bad)
    assert cv.load(model, device="cpu", input_size=(8, 8), max_pixels=None).max_pixels is None


# --------------------------------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------------------------------

def _with_tensor(tensor: TensorProto) -> onnx.ModelProto:
    model = gap_classifier()
    model.graph.initializer.append(tensor)
    model.graph.node.append(helper.make_node("Identity", [tensor.name], ["side"], name="side"))
    return model


def test_a_huge_declared_initializer_is_refused_from_its_dims(tmp_path):
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[10 ** 6, 10 ** 6])
    model = _with_tensor(huge)
    path = save(model, tmp_path / "huge.onnx")
    assert path.stat().st_size < 10_000
    for source in (model, path, path.read_bytes()):
        with pytest.raises(cv.ModelLoadError, match=r"'huge' declares shape \(1000000, 1000000\) = 3.64 TiB, more "
                                                    r"than the limit of 4 GiB"):
            cv.load(source, device="cpu")
    assert MAX_TENSOR_BYTES == 4 * 2 ** 30


def test_a_huge_declared_external_tensor_is_refused_before_reading(tmp_path):
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[10 ** 6, 10 ** 6])
    huge.data_location = TensorProto.EXTERNAL
    huge.external_data.add(key="location", value="huge.bin")
    model = _with_tensor(huge)
    path = save(model, tmp_path / "model.onnx")
    (tmp_path / "huge.bin").write_bytes(b"\0" * 64)
    with pytest.raises(cv.ModelLoadError, match="'huge' declares .* more than the limit"):
        cv.load(path, device="cpu")


def test_a_tensor_whose_file_holds_less_than_declared(tmp_path):
    short = TensorProto(name="short", data_type=TensorProto.FLOAT, dims=[64, 64])
    short.data_location = TensorProto.EXTERNAL
    short.external_data.add(key="location", value="short.bin")
    path = save(_with_tensor(short), tmp_path / "model.onnx")
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(cv.ModelLoadError, match=r"'short' declares 16 KiB but its external data file 'short.bin' "
                                                 r"holds 100 bytes"):
        cv.load(path, device="cpu")
    embedded = numpy_helper.from_array(np.zeros(10, np.float32), "embedded")
    embedded.dims[:] = [1000]
    with pytest.raises(cv.ModelLoadError, match=r"'embedded' declares shape \(1000,\) \(4,000 bytes\) but the file "
                                                r"holds 40 bytes"):
        cv.load(_with_tensor(embedded), device="cpu")
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    typed.dims[:] = [5]
    with pytest.raises(cv.ModelLoadError, match=r"'typed' declares shape \(5,\) \(5 values\) but the file holds 3"):
        read_model(_with_tensor(typed))
    with pytest.raises(cv.ModelLoadError, match="holds 3 values"):  # the cap off, the mismatch still counts
        read_model(_with_tensor(typed), max_tensor_bytes=None)


# --------------------------------------------------------------------------------------------------------------------
# Peak memory of loading a model with a large fixed input
# --------------------------------------------------------------------------------------------------------------------

MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stderr.write(proc.stderr[-2000:])
"""

LOAD_AND_DESCRIBE = """
import sys
import onnx_cnnviz as cv
from onnx_cnnviz.report import describe
m = cv.load(sys.argv[1], device="cpu", threads=1)
info = describe(m, sys.argv[1])
assert info["input_shape"] == [3, 4096, 4096], info["input_shape"]
assert info["gradient_path"]["ok"], info["gradient_path"]
print(m.static_batch)
"""


def test_loading_and_describing_a_4096_square_model_stays_small(tmp_path):
    """The 1.6 KB model declares a fixed 1x3x4096x4096 input; before, loading it ran a batch-2 probe of that size
    (drawn in float64), over 4 GB at peak. Now nothing of the declared size is allocated to load or describe it."""
    path = save(gap_classifier(size=4096), tmp_path / "big_input.onnx")
    assert path.stat().st_size < 4_000
    command = [sys.executable, "-c", MEASURE, sys.executable, "-c", LOAD_AND_DESCRIBE, str(path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    code, kib = proc.stdout.split()
    assert code == "0", proc.stderr
    peak_mb = int(kib) / 1024
    print(f"peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 600, f"loading and describing took {peak_mb:.0f} MB"


def test_a_fifo_is_not_read_as_a_model(tmp_path):
    """A named pipe given as the model would block onnx.load forever: refused before opening."""
    import os

    import onnx_cnnviz as cv

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(cv.ModelLoadError, match="FIFO"):
        cv.load(str(fifo))
