"""Issue 6: every kind of bad input gets a typed error that says what was wrong and what to do, and the user's files
are never touched (checksums of the inputs before and after each case).

Cases tested elsewhere (referenced, not duplicated):

* an op without a gradient rule on the path (node and op named, "report it as an issue"):
  ``tests/model/test_engine.py::test_missing_rule_on_the_path_names_node_and_op_but_forward_still_works``,
  and ``tests/cli/test_cli.py::test_inspect_reports_missing_rule``;
* a keyboard interrupt in a folder run (exit 130, finished results kept, --resume finishes):
  ``tests/cli/test_cli.py::test_keyboard_interrupt_keeps_finished_results``;
* a corrupt picture inside a folder run (skipped with a warning, the others explained):
  ``tests/cli/test_cli.py::test_unreadable_image_in_folder``;
* the image byte-level checks (truncated PNG/JPEG, empty, folder, decompression-bomb header):
  ``tests/image/test_image.py``.
"""
from __future__ import annotations

import errno
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.cli.main import cli
from onnx_cnnviz.image import preprocess, read_image

from tests.tiny_models import (CLASSES, divide_by_zero, gap_classifier, log_of_negative, make_model, save, unchanged,
                          write_png)

from tests.cli import one_line_error

@pytest.fixture
def inputs(tmp_path):
    """A folder of user files: the tiny model and two pictures."""
    folder = tmp_path / "in"
    save(gap_classifier(), folder / "model.onnx")
    write_png(folder / "a.png", seed=1)
    write_png(folder / "b.png", seed=2)
    return folder


def x_of(n=1, size=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --- the model file ----------------------------------------------------------------------------------------------
def test_file_that_is_not_onnx(inputs):
    path = inputs / "notes.onnx"
    path.write_text("these are my notes, not a model\n" * 20)
    with unchanged(inputs):
        with pytest.raises(cv.ModelLoadError, match="not a readable ONNX model.*really an .onnx export"):
            cv.load(path, device="cpu")
        with pytest.raises(cv.ModelLoadError, match="not an ONNX model"):
            cv.load(path.read_bytes(), device="cpu")
        with pytest.raises(cv.ModelLoadError, match="folder"):
            cv.load(inputs, device="cpu")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_onnx_file(inputs, keep):
    data = (inputs / "model.onnx").read_bytes()
    path = inputs / "cut.onnx"
    path.write_bytes(data[:int(len(data) * keep)])
    with unchanged(inputs):
        with pytest.raises(cv.ModelLoadError) as info:
            cv.load(path, device="cpu")
    message = str(info.value)
    assert "cut.onnx" in message and ("complete" in message or "truncated" in message)


def test_corrupt_bytes_inside_a_name_are_a_load_error_and_print_nothing(inputs, capfd):
    """Protobuf hands invalid UTF-8 back as bytes; onnxruntime would print an 'EP Error' banner on stdout."""
    data = (inputs / "model.onnx").read_bytes()
    assert data.count(b"GlobalAveragePool") == 1
    path = inputs / "corrupt.onnx"
    path.write_bytes(data.replace(b"GlobalAveragePool", b"Global\xbaveragePool"))
    with unchanged(inputs):
        with pytest.raises(cv.ModelLoadError, match="corrupt.*not valid UTF-8.*complete"):
            cv.load(path, device="cpu")
    assert capfd.readouterr().out == ""


def test_external_data_missing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(gap_classifier(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert cv.load(path, device="cpu").scores(x_of()).shape == (1, CLASSES)
    (folder / "weights.bin").unlink()
    with unchanged(folder):
        with pytest.raises(cv.ModelLoadError, match="external data files that are missing: weights.bin.*next to"):
            cv.load(path, device="cpu")


def test_no_4d_image_input(inputs):
    w = numpy_helper.from_array(np.ones((CLASSES, 16), dtype=np.float32), "w")
    model = make_model([helper.make_node("Gemm", ["features", "w"], ["logits"], transB=1)],
                       [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 16])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [w])
    path = save(model, inputs / "tabular.onnx")
    with unchanged(inputs):
        with pytest.raises(cv.ModelStructureError, match=r"no 4-D image input.*features float\['N', 16\]"):
            cv.load(path, device="cpu")


def test_several_inputs_without_input_lists_them(inputs):
    base = gap_classifier()
    graph = base.graph
    graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 3, 8, 8]))
    graph.node.insert(0, helper.make_node("Mul", ["image", "mask"], ["x"], name="mask"))
    graph.input[0].name = "image"
    path = save(base, inputs / "two_inputs.onnx")
    with unchanged(inputs):
        with pytest.raises(cv.ModelStructureError, match=r"several 4-D image inputs \(image, mask\).*input=NAME"):
            cv.load(path, device="cpu")
        with pytest.raises(cv.ModelStructureError, match="no input named 'nope'.*image, mask"):
            cv.load(path, device="cpu", input="nope")
    result = invoke("inspect", path)
    assert result.exit_code == 1 and "--input NAME" in one_line_error(result)


def test_several_outputs_without_output_lists_them(inputs):
    model = gap_classifier()
    model.graph.output.append(helper.make_tensor_value_info("pool", TensorProto.FLOAT, None))
    path = save(model, inputs / "two_outputs.onnx")
    with unchanged(inputs):
        with pytest.raises(cv.ModelStructureError, match=r"several outputs \(logits, pool\).*output=NAME"):
            cv.load(path, device="cpu")
        assert cv.load(path, device="cpu", output="logits").num_classes == CLASSES
    result = invoke("inspect", path)
    assert result.exit_code == 1 and "--output NAME" in one_line_error(result)


def test_non_classifier_output(inputs):
    """A segmentation head: (N, K, H, W) scores per pixel."""
    w = numpy_helper.from_array(np.ones((CLASSES, 3, 1, 1), dtype=np.float32), "w")
    model = make_model([helper.make_node("Conv", ["x", "w"], ["masks"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("masks", TensorProto.FLOAT, None)], [w])
    path = save(model, inputs / "segmenter.onnx")
    with unchanged(inputs):
        with pytest.raises(cv.ModelStructureError, match=r"shape \(None, 5, 8, 8\), not \(N, K\).*segmentation"):
            cv.load(path, device="cpu")


def test_graph_over_the_node_limit(inputs):
    def chain(last):
        nodes = [helper.make_node("Relu", [last if i == 0 else f"r{i - 1}"], [f"r{i}"]) for i in range(50)]
        return nodes, [], "r49"

    path = save(gap_classifier(mid=chain), inputs / "deep.onnx")
    with unchanged(inputs):
        with pytest.raises(cv.ModelStructureError, match=r"55 graph nodes, more than max_nodes=20.*max_nodes=N"):
            cv.load(path, device="cpu", max_nodes=20)
        with pytest.raises(cv.ModelStructureError, match="max_nodes=20"):
            cv.load(onnx.load(str(path)), device="cpu", max_nodes=20)
        with pytest.raises(cv.InputError, match="max_nodes must be"):
            cv.load(path, device="cpu", max_nodes=0)
        assert cv.load(path, device="cpu", max_nodes=None).num_classes == CLASSES
        assert cv.load(path, device="cpu").num_classes == CLASSES  # the default limit is far above real CNNs
    assert cv.MAX_NODES >= 100_000


def test_node_limit_counts_subgraph_nodes():
    from onnx_cnnviz.graph.load import count_nodes

    body = helper.make_graph([helper.make_node("Identity", ["a"], ["b"]) for _ in range(3)], "body", [],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)], "g",
                              [], [])
    assert count_nodes(graph) == 7


# --- names, targets --------------------------------------------------------------------------------------------
def test_unknown_layer_suggests_close_names(inputs):
    m = cv.load(inputs / "model.onnx", device="cpu")
    with unchanged(inputs):
        with pytest.raises(cv.UnknownLayerError, match="Did you mean.*relu1") as info:
            cv.grad_cam(m, x_of(), layer="relu")
    assert isinstance(info.value, KeyError)  # dict-style callers can catch it too
    result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--layer", "relu", "--out",
                    inputs.parent / "out")
    assert result.exit_code == 1 and "relu1" in one_line_error(result)


def test_target_out_of_range(inputs):
    m = cv.load(inputs / "model.onnx", device="cpu")
    with pytest.raises(cv.InputError, match=r"target class 5 is out of range: the model has 5 classes \(0..4\)"):
        cv.saliency(m, x_of(), targets=5)
    with pytest.raises(cv.InputError, match="out of range"):
        cv.grad_cam(m, x_of(2), targets=[0, -1])
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--target", "7", "--out",
                        inputs.parent / "out")
    assert result.exit_code == 1 and "out of range" in one_line_error(result)
    assert not (inputs.parent / "out").exists()


# --- images ------------------------------------------------------------------------------------------------------
def test_image_file_that_is_not_an_image_or_is_truncated(inputs):
    text = inputs / "notes.png"
    text.write_text("not a picture")
    cut = inputs / "cut.png"
    cut.write_bytes((inputs / "a.png").read_bytes()[:200])
    with unchanged(inputs):
        with pytest.raises(cv.InputError, match="notes.png could not be decoded"):
            read_image(text)
        with pytest.raises(cv.InputError, match="cut.png is a truncated PNG"):
            preprocess([cut])
        result = invoke("explain", inputs / "model.onnx", text, cut, "--out", inputs.parent / "out", "--json")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "2 of 2 image(s) could not be explained" in result.stderr


def test_wrong_channel_count(inputs):
    m = cv.load(inputs / "model.onnx", device="cpu")
    with pytest.raises(cv.InputError, match=r"takes 3 channels, x has 1.*grayscale vs RGB"):
        cv.gradients(m, np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(cv.InputError, match="channels-last"):
        m.scores(np.zeros((1, 8, 8, 3), np.float32))
    # The command line reads pictures as RGB: a 1-channel model is refused before any image is read.
    gray = save(gap_classifier(channels=1), inputs / "gray.onnx")
    with unchanged(inputs):
        result = invoke("explain", gray, inputs / "a.png", "--out", inputs.parent / "out")
    line = one_line_error(result)
    assert result.exit_code == 1 and "takes 1-channel images" in line and "call the library" in line
    assert not (inputs.parent / "out").exists()


def test_wrong_spatial_size_for_a_static_model(inputs):
    m = cv.load(inputs / "model.onnx", device="cpu")
    with pytest.raises(cv.InputError, match=r"takes 8x8 images, x is 16x16; resize.*onnx_cnnviz.image.preprocess"):
        cv.grad_cam(m, x_of(size=16))
    with pytest.raises(cv.InputError, match="fixes its input at"):
        cv.load(inputs / "model.onnx", device="cpu", input_size=(16, 16))
    # The command line resizes 32x32 pictures to the model's 8x8 itself.
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--out", inputs.parent / "out", "--json")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_the_input(inputs, bad):
    m = cv.load(inputs / "model.onnx", device="cpu")
    x = x_of()
    x[0, 1, 2, 3] = bad
    for call in (m.scores, lambda x_: cv.saliency(m, x_), lambda x_: cv.grad_cam(m, x_),
                 lambda x_: cv.occlusion(m, x_, window=2, stride=2)):
        with pytest.raises(cv.InputError, match="NaN or Inf.*preprocessing"):
            call(x)


# --- the model computes garbage ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mid", [log_of_negative, divide_by_zero])
def test_a_model_that_produces_nan(inputs, mid):
    path = save(gap_classifier(mid=mid), inputs / "broken.onnx")
    m = cv.load(path, device="cpu")  # loading does not run the model on real data
    x = x_of(2)
    calls = {"scores": lambda: m.scores(x), "saliency": lambda: cv.saliency(m, x),
             "grad_cam": lambda: cv.grad_cam(m, x), "cam": lambda: cv.cam(m, x),
             "occlusion": lambda: cv.occlusion(m, x, window=2, stride=2),
             "activations": lambda: m.run(x, outputs=[mid("relu1")[2]]),
             "vjp": lambda: m.vjp(x, "pool", np.ones((2, 4, 1, 1), np.float32))}
    for name, call in calls.items():
        with pytest.raises(cv.NumericalError, match="produced (NaN|Inf).*for image.*0.*preprocessing") as info:
            call()
        assert isinstance(info.value, cv.CnnvizError), name
    with unchanged(inputs):
        result = invoke("explain", path, inputs / "a.png", "--out", inputs.parent / "out")
    assert result.exit_code == 1 and "the model produced NaN" in one_line_error(result)
    assert not list((inputs.parent / "out").glob("*.png"))  # no wrong picture written


def test_an_overflowing_input_is_a_numerical_error_not_a_wrong_picture(inputs):
    m = cv.load(inputs / "model.onnx", device="cpu")
    x = np.full((1, 3, 8, 8), 3e38, np.float32)  # finite, but the convolution overflows
    with pytest.raises(cv.NumericalError, match="produced (NaN|Inf).*overflow"):
        cv.grad_cam(m, x)


# --- writing results -------------------------------------------------------------------------------------------
def test_output_folder_that_is_not_writable(inputs, monkeypatch):
    blocker = inputs.parent / "a_file"
    blocker.write_text("I am a file")
    with unchanged(inputs, blocker):
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--out", blocker / "sub")
    line = one_line_error(result)
    assert result.exit_code == 1 and "Not a directory" in line and "writable folder with --out" in line

    # No permission (tests run as root, so simulate it where the result is moved into place).
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(args[1]))

    monkeypatch.setattr(os, "link", denied)
    monkeypatch.setattr(os, "replace", denied)
    out = inputs.parent / "out"
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--out", out)
    line = one_line_error(result)
    assert result.exit_code == 1 and "Permission denied" in line and "--out" in line
    assert not [p for p in out.rglob("*") if p.is_file()]  # no temporary file left behind
    with pytest.raises(PermissionError):
        cv.image.save_image(out / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_disk_full_while_writing(inputs, monkeypatch):
    """See also tests/cli/test_cli.py::test_disk_full_is_one_line (write_atomic itself failing)."""
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = inputs.parent / "out"
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs, "--out", out)
    line = one_line_error(result)
    assert result.exit_code == 1 and "No space left on device" in line and "disk is full" in line
    assert not [p for p in out.rglob("*") if p.is_file()]  # no half-written result, no temporary file
    with pytest.raises(OSError) as info:
        cv.image.save_image(out / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert info.value.errno == errno.ENOSPC and not [p for p in out.rglob("*") if p.is_file()]


def test_an_interrupted_folder_run_keeps_finished_results(inputs, monkeypatch):
    """Same as tests/cli/test_cli.py::test_keyboard_interrupt_keeps_finished_results, on the tiny model and with
    the inputs checked."""
    from onnx_cnnviz.methods import registry

    real, calls = registry.explain, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "explain", interrupt_second)
    out = inputs.parent / "out"
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs, "--out", out, "--batch-size", "1")
    assert result.exit_code == 130 and "interrupted after 1 of 2" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.gradcam.top1.json", "a.gradcam.top1.npy",
                                                     "a.gradcam.top1.png"]


def test_outputs_never_replace_inputs(inputs):
    mine = [inputs / "model.onnx", inputs / "a.png", inputs / "b.png"]
    with unchanged(*mine):
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--out", inputs)
    assert result.exit_code == 0  # results go beside the inputs, under new names
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--out", inputs)
    assert result.exit_code == 1 and "--overwrite" in one_line_error(result)


def test_the_cli_image_size_limit_is_the_library_default():
    from onnx_cnnviz import image

    assert image.MAX_PIXELS == 100_000_000
    assert "over 100 megapixels are refused" in " ".join(invoke("explain", "--help").output.split())
