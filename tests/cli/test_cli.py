"""The ``cnnviz`` command line: click's CliRunner for the behaviour, a few real subprocesses for the console script.

Models: the shared SqueezeNet (fp16, caffe preprocessing, static 224x224, softmax head) and a torchvision ResNet-18
exported by the session fixture (random weights, 112x112, no metadata).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_cnnviz.cli.main import main

from . import LABELS, SQZ, SQZ_PREPROCESS, chromium, invoke

REPO = Path(__file__).resolve().parents[2]
CNNVIZ = REPO / ".venv" / "bin" / "cnnviz"


# ---------------------------------------------------------------------------------------------------------------------
# Helpers and fixtures (invoke, SQZ and the ``images`` fixture: tests/cli/__init__.py and conftest.py)


def checksums(*paths) -> dict:
    out = {}
    for base in paths:
        base = Path(base)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def one_line_error(result_or_text) -> str:
    text = result_or_text if isinstance(result_or_text, str) else result_or_text.stderr
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert lines and lines[-1].startswith("cnnviz: error: "), text
    return lines[-1]


@pytest.fixture(scope="module")
def resnet(torchvision_onnx):
    return torchvision_onnx("resnet18")[1]


# ---------------------------------------------------------------------------------------------------------------------
# help, inspect


@pytest.mark.parametrize("command", [[], ["inspect"], ["explain"], ["occlusion"], ["report"], ["export-graph"],
                                     ["convert"], ["convert", "torch"], ["filters"], ["activations"], ["patches"],
                                     ["embed"], ["dream"], ["invert"], ["localize"]])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: cnnviz" in result.stdout


def test_inspect_squeezenet(squeezenet_path):
    before = checksums(squeezenet_path)
    result = invoke("inspect", squeezenet_path)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "data_0" in text and "float16" in text
    assert "input of the final Softmax, which is skipped" in text
    assert "conv10_2" in text and "<- default" in text
    assert "gradients    ok" in text
    result = invoke("--json", "inspect", squeezenet_path, "--all-layers")  # global flag before the command
    info = json.loads(result.stdout)
    assert info["score"] == {"output": "softmaxout_1", "tensor": info["score"]["tensor"], "softmax_skipped": "Softmax"}
    assert info["num_classes"] == 1000 and info["default_layer"] == "conv10_2"
    assert info["input_shape"] == [3, 224, 224]
    assert len(info["layers"]) == 65 and info["layers"][-1]["shape"] == [None, 1000, 1, 1]
    assert info["op_types"]["Conv"] == 26
    assert info["gradient_path"]["ok"] and info["gradient_path"]["missing_rules"] == []
    assert set(info["gradient_path"]["ops"]) >= {"Conv", "Relu", "MaxPool", "Concat", "GlobalAveragePool"}
    assert "Softmax" not in info["gradient_path"]["ops"]  # the skipped head is off the path
    assert checksums(squeezenet_path) == before


def test_inspect_torchvision(resnet):
    info = json.loads(invoke("inspect", resnet, "--json").stdout)
    assert info["score"]["softmax_skipped"] is None and info["num_classes"] == 1000
    assert info["inputs"][0]["shape"][0] == "N"  # dynamic batch
    assert info["gradient_path"]["ok"]
    assert info["default_layer"] in [layer["name"] for layer in info["layers"]]


def small_cnn(path: Path, activation: str = "Relu", hw=(16, 16)) -> Path:
    """Conv -> activation -> global average pool -> MatMul (5 classes); ``hw`` may hold dim names (any size)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = onnx.numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(activation, ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_inspect_reports_missing_rule(tmp_path):
    """An op without a backward rule on the path is named; the command still succeeds."""
    path = small_cnn(tmp_path / "round.onnx", "Round")  # Round has no gradient rule
    info = json.loads(invoke("inspect", path, "--json").stdout)
    assert info["gradient_path"]["missing_rules"] == ["Round"] and not info["gradient_path"]["ok"]
    assert "Round" in info["gradient_path"]["error"]
    text = invoke("inspect", path).stdout
    assert "NOT available" in text and "Round" in text


# ---------------------------------------------------------------------------------------------------------------------
# explain


def test_explain_squeezenet(squeezenet_path, images, tmp_path):
    import onnx_cnnviz as cv

    out = tmp_path / "out"
    before = checksums(squeezenet_path, images, LABELS)
    result = invoke("explain", squeezenet_path, images, "--method", "gradcam,saliency", "-m", "guided,cam",
                    *SQZ, "--out", out, "--json", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert not doc["interrupted"] and doc["failed"] == [] and doc["skipped"] == []
    assert doc["methods"] == ["gradcam", "saliency", "guided", "cam"]
    assert len(doc["results"]) == 8
    by_key = {(Path(r["image"]).name, r["method"]): r for r in doc["results"]}
    kitten = by_key[("kitten_224.png", "gradcam")]
    assert kitten["class"] == 281 and kitten["class_name"] == "tabby" and kitten["rank"] == 1
    assert kitten["probability"] == pytest.approx(0.94, abs=0.01)
    assert kitten["parameters"] == {"layer": "conv10_2"}
    assert kitten["preprocessing"]["order"] == "BGR" and kitten["preprocessing"]["scale"] == 1.0
    assert by_key[("fish.png", "saliency")]["class"] == 389
    from onnx_cnnviz.methods.cam import cam_head

    assert by_key[("kitten_224.png", "cam")]["parameters"]["layer"] == cam_head(cv.load(squeezenet_path)).layer
    for r in doc["results"]:
        record = json.loads(Path(r["json"]).read_text())
        assert {k: record[k] for k in ("model", "image", "class", "method", "score", "probability")} == \
            {k: r[k] for k in ("model", "image", "class", "method", "score", "probability")}
        picture = out / record["outputs"]["picture"]
        array = np.load(out / record["outputs"]["array"])
        assert picture.stat().st_size > 1000 and list(array.shape) == record["array_shape"]
        assert array.shape == ((224, 224) if r["method"] != "guided" else (3, 224, 224))
    # the map equals the library's
    from tests.conftest import caffe_preprocess

    m = cv.load(squeezenet_path)
    expected = cv.grad_cam(m, caffe_preprocess(images / "kitten_224.png"))[0]
    np.testing.assert_allclose(np.load(out / "kitten_224.gradcam.top1.npy"), expected, atol=1e-4)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    assert checksums(squeezenet_path, images, LABELS) == before


def test_explain_no_overwrite_overwrite_and_resume(squeezenet_path, images, tmp_path):
    out = tmp_path / "out"
    kitten = images / "kitten_224.png"
    assert invoke("explain", squeezenet_path, kitten, *SQZ, "--out", out, "--quiet").exit_code == 0
    record = out / "kitten_224.gradcam.top1.json"
    png = out / "kitten_224.gradcam.top1.png"
    stamp = (record.stat().st_mtime_ns, png.read_bytes())
    # a second run refuses to replace anything
    result = invoke("explain", squeezenet_path, kitten, *SQZ, "--out", out)
    assert result.exit_code == 1
    assert "already exists" in one_line_error(result) and "--overwrite" in result.stderr
    assert (record.stat().st_mtime_ns, png.read_bytes()) == stamp
    # --resume skips the finished image, computes the new one
    result = invoke("explain", squeezenet_path, images, *SQZ, "--out", out, "--resume", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["skipped"] == [str(kitten)] and [Path(r["image"]).name for r in doc["results"]] == ["fish.png"]
    assert record.stat().st_mtime_ns == stamp[0]
    # --overwrite replaces
    result = invoke("explain", squeezenet_path, kitten, *SQZ, "--out", out, "--overwrite", "--quiet")
    assert result.exit_code == 0 and result.stdout == ""
    assert record.stat().st_mtime_ns != stamp[0]


def test_explain_targets_topk_and_folder_out_inside_input(squeezenet_path, images):
    out = images / "results"  # inside the input folder: its files must never be taken as inputs
    result = invoke("explain", squeezenet_path, images, *SQZ, "--out", out, "--top-k", "3", "--json",
                    "-m", "gradcampp")
    doc = json.loads(result.stdout)
    kitten = [r for r in doc["results"] if r["image"].endswith("kitten_224.png")]
    assert [r["class"] for r in kitten] == [281, 285, 282] and [r["rank"] for r in kitten] == [1, 2, 3]
    assert (out / "kitten_224.gradcampp.top3.npy").exists()
    result = invoke("explain", squeezenet_path, images, *SQZ, "--out", out, "--target", "5", "--json",
                    "-m", "gradcampp")
    doc = json.loads(result.stdout)
    assert len(doc["results"]) == 2 and {r["class"] for r in doc["results"]} == {5}
    assert {r["class_name"] for r in doc["results"]} == {"electric ray"}
    assert (out / "fish.gradcampp.c5.png").exists()
    # the same folder as input and output: its results are not explained again
    result = invoke("explain", squeezenet_path, images, *SQZ, "--out", images, "--json", "-m", "saliency")
    assert sorted(Path(r["image"]).name for r in json.loads(result.stdout)["results"]) == ["fish.png",
                                                                                           "kitten_224.png"]
    result = invoke("explain", squeezenet_path, images, *SQZ, "--out", images, "--json", "-m", "saliency", "-r",
                    "--resume")
    assert len(json.loads(result.stdout)["skipped"]) == 2


def test_explain_every_method_on_torchvision(resnet, images, tmp_path):
    """Every method of --method on an exported torchvision model (cheap settings for the costly ones)."""
    from onnx_cnnviz.methods import registry

    METHOD_NAMES = registry.names()
    out = tmp_path / "out"
    result = invoke("explain", resnet, images / "kitten_224.png", "-m", ",".join(METHOD_NAMES), "--out", out,
                    "--window", "28", "--stride", "28", "--samples", "2", "--steps", "4", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["method"] for r in doc["results"]] == METHOD_NAMES
    classes = {r["class"] for r in doc["results"]}
    assert len(classes) == 1  # every method explains the same top-1 class
    by_method = {r["method"]: r for r in doc["results"]}
    assert by_method["occlusion"]["parameters"] == {"window": [28, 28], "stride": [28, 28], "baseline": 0.0,
                                                    "mode": "score"}
    assert by_method["smoothgrad"]["parameters"]["samples"] == 2 and by_method["ig"]["parameters"]["steps"] == 4
    assert by_method["eigencam"]["class_specific"] is False
    assert by_method["gradcam"]["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # default preset
    for r in doc["results"]:
        shape = np.load(out / f"kitten_224.{r['method']}.top1.npy").shape
        assert shape[-2:] == (112, 112)


def test_occlusion_command(resnet, images, tmp_path):
    out = tmp_path / "occ"
    result = invoke("occlusion", resnet, images / "fish.png", "--window", "32", "--stride", "16", "--baseline",
                    "mean", "--mode", "probability", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)["results"]
    assert record["method"] == "occlusion"
    assert record["parameters"] == {"window": [32, 32], "stride": [16, 16], "baseline": "mean",
                                    "mode": "probability"}
    occ = np.load(out / "fish.occlusion.top1.npy")
    assert occ.shape == (112, 112) and np.isfinite(occ).all()
    assert ((occ >= 0) & (occ <= 1)).all()  # probabilities


def test_any_size_model(tmp_path, images):
    """A model without a fixed H, W: --input-size (or --size) sets the size, else the preset's; with --preprocess
    none each picture runs at its own size."""
    path = small_cnn(tmp_path / "dyn.onnx", hw=("H", "W"))
    out = tmp_path / "o"
    doc = json.loads(invoke("explain", path, images / "kitten_224.png", "--input-size", "64x48", "--out", out,
                            "--json", "-m", "gradcam,saliency").stdout)
    assert [r["array_shape"] for r in doc["results"]] == [[64, 48], [64, 48]]
    assert doc["results"][0]["preprocessing"]["size"] == [64, 48]
    import cv2

    cv2.imwrite(str(images / "small.png"), cv2.resize(cv2.imread(str(images / "fish.png")), (80, 60)))
    doc = json.loads(invoke("explain", path, images, "--preprocess", "none", "--out", out, "--json",
                            "--overwrite").stdout)
    shapes = {Path(r["image"]).name: r["array_shape"] for r in doc["results"]}
    assert shapes == {"fish.png": [224, 224], "kitten_224.png": [224, 224], "small.png": [60, 80]}


def test_preprocessing_and_labels_from_metadata(squeezenet_path, images, tmp_path):
    """With cnnviz.preprocess.* and cnnviz.labels in the metadata no flag is needed; an explicit flag wins."""
    from onnx_cnnviz.image import PRESETS

    model = onnx.load(str(squeezenet_path))
    for key, value in {**PRESETS["caffe"].to_metadata(),
                       "cnnviz.labels": LABELS.read_text()}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / "sqz_meta.onnx"
    onnx.save(model, path)
    info = json.loads(invoke("inspect", path, "--json").stdout)
    assert info["preprocessing"]["order"] == "BGR" and info["labels"] == 1000
    doc = json.loads(invoke("explain", path, images / "kitten_224.png", "--out", tmp_path / "o", "--json").stdout)
    assert doc["results"][0]["class"] == 281 and doc["results"][0]["class_name"] == "tabby"
    doc = json.loads(invoke("explain", path, images / "kitten_224.png", "--out", tmp_path / "o2", "--json",
                            "--preprocess", "imagenet").stdout)
    assert doc["results"][0]["preprocessing"]["order"] == "RGB"


# ---------------------------------------------------------------------------------------------------------------------
# errors and exit codes


def test_exit_codes(squeezenet_path, images, tmp_path):
    kitten = images / "kitten_224.png"
    out = tmp_path / "out"
    # bad usage -> 2
    assert invoke("explain", squeezenet_path, kitten, "--no-such-option").exit_code == 2
    assert invoke("explain", squeezenet_path, kitten, "--method", "nope").exit_code == 2
    assert invoke("explain", squeezenet_path, kitten, "--target", "1", "--top-k", "2", "--out", out).exit_code == 2
    assert invoke("explain", squeezenet_path).exit_code == 2  # IMAGES missing
    assert invoke("explain", squeezenet_path, kitten, "--size", "abc").exit_code == 2
    assert invoke("nope").exit_code == 2
    # failures -> 1 with one line
    result = invoke("explain", tmp_path / "missing.onnx", kitten, "--out", out)
    assert result.exit_code == 1 and "does not exist" in one_line_error(result)
    result = invoke("inspect", LABELS)  # a text file, not ONNX
    assert result.exit_code == 1 and "not a readable ONNX model" in one_line_error(result)
    result = invoke("explain", squeezenet_path, kitten, "--layer", "conv10", "--out", out)
    line = one_line_error(result)
    assert result.exit_code == 1 and "Did you mean" in line and "conv10_2" in line
    result = invoke("explain", squeezenet_path, kitten, "--target", "1000", "--out", out)
    assert result.exit_code == 1 and "out of range" in one_line_error(result)
    result = invoke("explain", squeezenet_path, tmp_path / "nope.png", "--out", out)
    assert result.exit_code == 1 and "does not exist" in one_line_error(result)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    result = invoke("explain", squeezenet_path, kitten, "--labels", labels, "--out", out)
    assert result.exit_code == 1 and "2 class names" in one_line_error(result)
    result = invoke("explain", squeezenet_path, kitten, "--method", "cam", "--layer", "conv10_1", "--out", out)
    assert result.exit_code == 1 and "CAM is defined only" in one_line_error(result)
    assert not out.exists()  # nothing written by failed runs


def test_unreadable_image_in_folder(squeezenet_path, images, tmp_path):
    """A corrupt picture in a folder is skipped with a warning; the others are explained; the exit code says 1."""
    (images / "broken.png").write_bytes((images / "fish.png").read_bytes()[:300])
    result = invoke("explain", squeezenet_path, images, *SQZ, "--out", tmp_path / "o", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [Path(f["image"]).name for f in doc["failed"]] == ["broken.png"]
    assert "truncated" in doc["failed"][0]["error"]
    assert sorted(Path(r["image"]).name for r in doc["results"]) == ["fish.png", "kitten_224.png"]
    assert "cnnviz: warning: skipped:" in result.stderr and "Traceback" not in result.stderr


def test_disk_full_is_one_line(squeezenet_path, images, tmp_path, monkeypatch):
    import errno

    from onnx_cnnviz import report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(report, "write_atomic", full)
    result = invoke("explain", squeezenet_path, images / "fish.png", "--out", tmp_path / "o")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "No space left on device" in line and "disk is full" in line and "--resume" in line


def test_report_with_unreadable_image(squeezenet_path, images, tmp_path):
    (images / "zz_broken.png").write_bytes(b"not a picture")
    result = invoke("report", squeezenet_path, images, "--out", tmp_path, *SQZ, "-m", "gradcam", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [Path(f["image"]).name for f in doc["failed"]] == ["zz_broken.png"]
    html = Path(doc["report"]).read_text()
    assert "zz_broken.png" in html and "could not be decoded" in html and html.count("<img") == 4


def test_internal_error_is_one_line_unless_debug(squeezenet_path, images, tmp_path, monkeypatch):
    from onnx_cnnviz.methods import registry

    def boom(*args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(registry, "explain", boom)
    args = ["explain", squeezenet_path, images / "fish.png", "--out", tmp_path / "o"]
    result = invoke(*args)
    assert result.exit_code == 1
    assert "internal error (ZeroDivisionError: oops)" in one_line_error(result)
    result = invoke(*args, "--overwrite", "--debug")
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_keyboard_interrupt_keeps_finished_results(squeezenet_path, images, tmp_path, monkeypatch):
    from onnx_cnnviz.methods import registry

    real = registry.explain
    calls = []

    def interrupt_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "explain", interrupt_second_batch)
    out = tmp_path / "out"
    result = invoke("explain", squeezenet_path, images, *SQZ, "--out", out, "--batch-size", "1", "--json")
    assert result.exit_code == 130
    assert "interrupted after 1 of 2" in result.stderr and "--resume" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["interrupted"] and len(doc["results"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["fish.gradcam.top1.json", "fish.gradcam.top1.npy",
                                                     "fish.gradcam.top1.png"]
    monkeypatch.setattr(registry, "explain", real)
    result = invoke("explain", squeezenet_path, images, *SQZ, "--out", out, "--resume", "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and len(doc["skipped"]) == 1 and len(doc["results"]) == 1
    assert len(list(out.iterdir())) == 6


# ---------------------------------------------------------------------------------------------------------------------
# export-graph


def test_export_graph_runs_in_plain_onnxruntime(squeezenet_path, kitten_x, tmp_path):
    import onnxruntime as ort

    import onnx_cnnviz as cv

    path = tmp_path / "g.onnx"
    before = checksums(squeezenet_path)
    result = invoke("export-graph", squeezenet_path, "--layer", "fire9/concat_1", "--rule", "guided", "--out", path,
                    "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    outputs = [o["name"] for o in info["outputs"]]
    assert "fire9/concat_1" in outputs and "cnnviz/grad/fire9/concat_1" in outputs and "cnnviz/grad/data_0" in outputs
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    seed = np.zeros((1, 1000), np.float32)
    seed[0, 281] = 1
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"data_0": kitten_x, "cnnviz/seed": seed})))
    m = cv.load(squeezenet_path)
    expected = cv.gradients(m, kitten_x, 281, rule="guided")
    np.testing.assert_allclose(got["cnnviz/grad/data_0"], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert got["cnnviz/grad/fire9/concat_1"].shape == (1, 512, 13, 13)
    # no overwrite without --overwrite; the model is untouched
    assert invoke("export-graph", squeezenet_path, "--out", path).exit_code == 1
    assert invoke("export-graph", squeezenet_path, "--out", path, "--overwrite", "--target-mode", "top1").exit_code == 0
    names = [o.name for o in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()]
    assert "cnnviz/target" in names and "conv10_2" in names
    assert checksums(squeezenet_path) == before


# ---------------------------------------------------------------------------------------------------------------------
# report


@pytest.fixture(scope="module")
def browser():
    path, reason = chromium.find_or_install()
    if path is None:
        pytest.skip(reason)
    return path


def test_report_html(squeezenet_path, images, tmp_path, browser):
    out = tmp_path / "rep"
    before = checksums(squeezenet_path, images)
    methods = "gradcam,gradcampp,saliency,guided,guided-gradcam,ixg"
    result = invoke("report", squeezenet_path, images, "--out", out, "--method", methods, *SQZ, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    page = Path(doc["report"])
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "src=\"data:image/png;base64," in html
    assert "281 tabby" in html and "389 barracouta" in html and "layer=conv10_2" in html
    assert html.count("<img") == 2 * (1 + 6)
    shot = tmp_path / "report.png"
    seen = chromium.open_page(browser, page, shot)
    assert len(seen["images"]) == 14
    assert all(complete and width > 0 for complete, width, _ in seen["images"]), seen["images"]
    assert seen["marker"] == "14/14"
    assert seen["console"] == [] and seen["exceptions"] == [] and seen["log"] == [], seen
    assert shot.stat().st_size > 50_000
    if os.environ.get("CNNVIZ_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["CNNVIZ_KEEP_SCREENSHOT"])
    # no overwrite without --overwrite
    result = invoke("report", squeezenet_path, images, "--out", out, *SQZ)
    assert result.exit_code == 1 and "already exists" in one_line_error(result)
    assert checksums(squeezenet_path, images) == before


def test_report_torchvision(resnet, images, tmp_path):
    result = invoke("report", resnet, images / "fish.png", "--out", tmp_path, "--name", "tv.html", "-m",
                    "layercam,occlusion", "--window", "56", "--stride", "56", "--predictions", "3", "--quiet")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "tv.html").read_text()
    assert html.count("<img") == 3 and "window=56x56" in html and "<td>3</td>" in html and "<td>4</td>" not in html


# ---------------------------------------------------------------------------------------------------------------------
# convert torch


TINY = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(0.5, inplace=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.features(x)
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def build():
    torch.manual_seed(0)
    return Tiny()
'''


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_convert_torch_module_file(tmp_path, images, dynamo):
    import onnxruntime as ort
    import torch

    src = tmp_path / "tiny.py"
    src.write_text(TINY)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    out = tmp_path / "tiny.onnx"
    args = ["convert", "torch", f"{src}:build", "--out", out, "--input-size", "32x40", "--preprocess", "imagenet",
            "--labels", labels, "--json"] + (["--dynamo"] if dynamo else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exporter"] == ("dynamo" if dynamo else "torchscript")
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["cnnviz.labels"] == "a\nb\nc\nd" and meta["cnnviz.input_size"] == "32x40"
    assert meta["cnnviz.preprocess.size"] == "32,40" and meta["cnnviz.preprocess.order"] == "RGB"
    # dynamic batch, eval mode: the same numbers as torch for a batch of 3
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        module = importlib.import_module("tiny").build().eval()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tiny", None)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 40)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    # cnnviz reads the metadata: labels and preprocessing without flags
    doc = json.loads(invoke("explain", out, images / "fish.png", "--out", tmp_path / "o", "--json").stdout)
    assert doc["results"][0]["class_name"] in list("abcd")
    assert doc["results"][0]["preprocessing"]["size"] == [32, 40]
    assert invoke("convert", "torch", f"{src}:build", "--out", out).exit_code == 1  # exists


def test_convert_torch_name_and_api(tmp_path):
    import torch

    from onnx_cnnviz.converters.torch import export

    out = tmp_path / "sq.onnx"
    result = invoke("convert", "torch", "squeezenet1_1", "--out", out, "--input-size", "64", "--random-weights",
                    "--quiet")
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "random weights" in meta["cnnviz.source"] and "cnnviz.labels" not in meta
    result = invoke("convert", "torch", "resnet_18", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "Did you mean: resnet18" in one_line_error(result)
    result = invoke("convert", "torch", "resnet18", "--weights", "NOPE", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "unknown weights" in one_line_error(result)
    assert not (tmp_path / "x.onnx").exists()
    # the API leaves the caller's module as it was (train mode, in-place ReLU)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(inplace=True), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    export(net, tmp_path / "net.onnx", input_size=(16, 16))
    assert net.training and net[1].inplace
    import onnx_cnnviz as cv

    m = cv.load(tmp_path / "net.onnx")
    assert m.num_classes == 2 and m.input_shape == (3, 16, 16)


# ---------------------------------------------------------------------------------------------------------------------
# the console script, as a real subprocess


def _script() -> list[str]:
    if not CNNVIZ.exists():
        subprocess.run([str(REPO / ".venv" / "bin" / "pip"), "install", "-e", str(REPO), "--no-deps", "-q"],
                       check=True)
    return [str(CNNVIZ)]


def run_cnnviz(*args, timeout=300):
    return subprocess.run(_script() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def test_subprocess(squeezenet_path, resnet, images, tmp_path):
    before = checksums(squeezenet_path, images, resnet)
    result = run_cnnviz("--json", "inspect", squeezenet_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["default_layer"] == "conv10_2"
    result = run_cnnviz("explain", tmp_path / "missing.onnx", images)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "does not exist" in one_line_error(result.stderr)
    result = run_cnnviz("explain", squeezenet_path, images, "--frobnicate")
    assert result.returncode == 2 and "No such option" in result.stderr
    out = tmp_path / "out"
    result = run_cnnviz("explain", squeezenet_path, images, *SQZ, "--out", out, "-m", "gradcam,guided-gradcam")
    assert result.returncode == 0, result.stderr
    assert "kitten_224.png  gradcam        281 tabby" in result.stdout
    assert len(list(out.glob("*.json"))) == 4
    result = run_cnnviz("explain", resnet, images / "kitten_224.png", "--out", out, "--layer", "nope", "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr and "UnknownLayerError" in result.stderr
    result = run_cnnviz("report", resnet, images, "--out", out, "--quiet")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert (out / "report.html").stat().st_size > 10_000
    assert checksums(squeezenet_path, images, resnet) == before


def test_main_returns_exit_codes(squeezenet_path, tmp_path, capsys):
    assert main(["inspect", str(squeezenet_path), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 1000
    assert main(["inspect", str(tmp_path / "x.onnx")]) == 1
    assert main(["inspect", "--bad"]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# feature visualisation and localisation commands


def test_feature_commands_squeezenet(squeezenet_path, images, tmp_path):
    out = tmp_path / "f"
    before = checksums(squeezenet_path, images)
    result = invoke("filters", squeezenet_path, "--out", out / "filters.png", "--order", "BGR", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["size"][0] > 100 and (out / "filters.png").exists()
    assert invoke("filters", squeezenet_path, "--out", out / "filters.png", "--order", "BGR").exit_code == 1  # exists

    doc = json.loads(invoke("activations", squeezenet_path, images, "--top-channels", "8", "--out", out,
                            *SQZ_PREPROCESS, "--json").stdout)
    assert len(doc["results"]) == 2 and len(doc["results"][0]["channels"]) == 8 and doc["layer"] == "conv10_2"
    assert np.load(out / "kitten_224.activations.npy").shape == (1000, 13, 13)

    doc = json.loads(invoke("patches", squeezenet_path, images, "--layer", "fire9/concat_1", "--channels", "0,7",
                            "--per-channel", "2", "--out", out / "patches.png", *SQZ_PREPROCESS, "--json").stdout)
    assert set(doc["patches"]) == {"0", "7"} and len(doc["patches"]["7"]) == 2 and doc["images"] == 2
    assert json.loads((out / "patches.json").read_text())["layer"] == "fire9/concat_1"

    doc = json.loads(invoke("embed", squeezenet_path, images, "--out", out, "--mosaic-size", "128", "--thumb", "32",
                            *SQZ_PREPROCESS, "--json").stdout)
    assert np.load(out / "embeddings.npy").shape == (2, doc["dims"]) and (out / "mosaic.png").exists()
    assert doc["images"][0]["neighbours"] == [doc["images"][1]["image"]]

    doc = json.loads(invoke("dream", squeezenet_path, "--target", "281", "--steps", "5", "--out", out / "d.png",
                            *SQZ, "--json").stdout)
    assert doc["class_name"] == "tabby" and len(doc["history"]) == 5 and doc["final"] > doc["history"][0]
    doc = json.loads(invoke("dream", squeezenet_path, "--layer", "fire9/concat_1", "--channel", "3", "--unit", "6,6",
                            "--steps", "3", "--out", out / "d2.png", *SQZ, "--json").stdout)
    assert doc["unit"] == [6, 6] and (out / "d2.png").exists()
    assert invoke("dream", squeezenet_path, "--out", out / "d3.png").exit_code == 2  # neither --class nor --channel

    doc = json.loads(invoke("invert", squeezenet_path, images / "kitten_224.png", "--layer", "fire5/concat_1",
                            "--steps", "5", "--out", out / "inv.png", *SQZ_PREPROCESS, "--json").stdout)
    assert 0 < doc["relative_error"] < 1.5 and (out / "inv.png").exists()

    result = invoke("localize", squeezenet_path, images, "--top-k", "2", "--out", out, *SQZ, "--json")
    assert result.exit_code == 0, result.output
    records = {Path(r["image"]).name: r for r in json.loads(result.stdout)["results"]}
    kitten = records["kitten_224.png"]["boxes"]
    assert [b["class"] for b in kitten] == [281, 285] and kitten[0]["class_name"] == "tabby"
    x0, y0, x1, y1 = kitten[0]["box"]
    assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
    assert (out / "fish.boxes.png").exists() and (out / "fish.boxes.json").exists()
    assert checksums(squeezenet_path, images) == before


def test_feature_commands_torchvision(resnet, images, tmp_path):
    out = tmp_path / "f"
    assert invoke("filters", resnet, "--out", out / "f.png", "--quiet").exit_code == 0
    result = invoke("localize", resnet, images / "fish.png", "--method", "saliency", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "fish.boxes.json").read_text())
    assert record["method"] == "saliency" and len(record["boxes"]) == 1
    result = invoke("activations", resnet, images / "fish.png", "--layer", "nope", "--out", out)
    assert result.exit_code == 1 and "'nope' is not a 4-D feature map" in one_line_error(result)
