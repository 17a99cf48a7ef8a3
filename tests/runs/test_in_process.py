"""Issue 21 point 1: the run belongs to the library. ``onnx_cnnviz.runs.explain_images`` / ``evaluate_images`` write
exactly what ``cnnviz explain`` / ``cnnviz evaluate`` write (the same bytes in every NPY and JSON file, run into the
same folder one after the other, since records name their files by absolute path) and return the document the
command's ``--json`` prints; nothing in ``runs`` prints or needs click.

Model: tests/tiny_models.py's gap_classifier (8x8 input, 5 classes, no preprocessing metadata).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onnx_cnnviz import runs
from onnx_cnnviz.errors import InputError
from tests.cli import invoke
from tests.conftest import REPO
from tests.tiny_models import CLASSES, gap_classifier, save, write_png


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    save(gap_classifier(), folder / "model.onnx")
    (folder / "labels.txt").write_text("".join(f"class{i}\n" for i in range(CLASSES)))
    for i in range(3):
        write_png(folder / f"im{i}.png", size=24 + 4 * i, seed=i)
    return folder


def files_of(out: Path, suffixes=(".npy", ".json", ".jsonl", ".csv")) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in suffixes}


def test_explain_images_writes_what_cnnviz_explain_writes(inputs, tmp_path):
    out = tmp_path / "out"
    result = invoke("explain", inputs / "model.onnx", inputs, "--out", out, "-m", "gradcam,saliency,occlusion",
                    "--top-k", "2", "--window", "4", "--stride", "2", "--labels", inputs / "labels.txt",
                    "--preprocess", "imagenet", "--json")
    assert result.exit_code == 0, result.output
    by_cli, doc_cli = files_of(out), json.loads(result.stdout)
    assert len(by_cli) == 3 * 3 * 2 * 2  # images x methods x classes x (npy, json)
    shutil.rmtree(out)
    doc = runs.explain_images(inputs / "model.onnx", inputs, out, methods=["gradcam", "saliency", "occlusion"],
                              top_k=2, params={"window": (4, 4), "stride": (2, 2)}, labels=inputs / "labels.txt",
                              preprocess="imagenet")
    assert files_of(out) == by_cli
    assert json.loads(json.dumps(doc)) == doc_cli


def test_evaluate_images_writes_what_cnnviz_evaluate_writes(inputs, tmp_path):
    out = tmp_path / "out"
    result = invoke("evaluate", inputs / "model.onnx", inputs, "--out", out, "-m", "gradcam,saliency", "--metric",
                    "deletion,average-drop", "--metric-param", "deletion.pixels_per_step=8", "--preprocess",
                    "imagenet", "--json")
    assert result.exit_code == 0, result.output
    by_cli, doc_cli = files_of(out), json.loads(result.stdout)
    assert {"results.jsonl", "results.json", "results.csv", "summary.json", "summary.csv"} <= set(by_cli)
    shutil.rmtree(out)
    doc = runs.evaluate_images(inputs / "model.onnx", inputs, out, methods=["gradcam", "saliency"],
                               metrics=["deletion", "average-drop"],
                               metric_params={"deletion": {"pixels_per_step": 8}}, preprocess="imagenet")
    assert files_of(out) == by_cli
    assert json.loads(json.dumps(doc)) == doc_cli


def test_the_library_run_warns_instead_of_printing(inputs, tmp_path, capfd):
    lines = []
    with pytest.warns(runs.RunWarning, match="assuming the imagenet preset"):
        runs.explain_images(inputs / "model.onnx", inputs / "im0.png", tmp_path / "a")
    reporter = runs.Reporter(on_info=lines.append, on_result=lines.append)
    runs.explain_images(inputs / "model.onnx", inputs, tmp_path / "a", resume=True, preprocess="caffe",
                        reporter=reporter)
    assert lines[0] == "resume: 1 result(s) were made with other settings (mean, order, scale, std) and are recomputed"
    assert [line.split()[0] for line in lines[1:]] == [str(inputs / f"im{i}.png") for i in range(3)]
    assert capfd.readouterr() == ("", "")


def test_bad_options_are_typed_errors(inputs, tmp_path):
    model = inputs / "model.onnx"
    with pytest.raises(InputError, match="--target and --top-k exclude each other"):
        runs.explain_images(model, inputs, tmp_path / "a", target=1, top_k=2, preprocess="imagenet")
    with pytest.raises(InputError, match="no class is named 'zebra'") as info:
        runs.explain_images(model, inputs, tmp_path / "a", target="zebra", labels=inputs / "labels.txt",
                            preprocess="imagenet")
    assert info.value.option == "--target"
    with pytest.raises(InputError, match="pointing-game score maps against ground-truth boxes"):
        runs.evaluate_images(model, inputs, tmp_path / "b", metrics=["pointing-game"], preprocess="imagenet")
    with pytest.raises(InputError, match="takes no parameter|unknown parameter|does not take"):
        runs.evaluate_images(model, inputs, tmp_path / "b", metric_params={"deletion": {"nonsense": 1}},
                             preprocess="imagenet")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_runs_needs_neither_click_nor_the_cli():
    code = ("import sys, onnx_cnnviz.runs, onnx_cnnviz.dataset; "
            "print(sorted(m for m in sys.modules if m == 'click' or m.startswith('onnx_cnnviz.cli')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
