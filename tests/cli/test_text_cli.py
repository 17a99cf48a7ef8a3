"""``cnnviz explain`` and ``cnnviz report`` on a text detector: rapidocr's trained DBNet
(``ch_PP-OCRv4_det_infer.onnx``, shipped in the ``rapidocr-onnxruntime`` wheel) on a page the test draws. Recognised
under --task auto (one Sigmoid map at the input's resolution), each drawn text line is one target with its box and
score, its maps equal the library's batched explanation of :func:`onnx_cnnviz.tasks.text.text_regions`' lines, and a
line's map falls inside that line. Tiny one-channel maps: what auto recognises and what it refuses."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.tasks import explain
from onnx_cnnviz.tasks.text import text_regions
from tests.tasks.documents import layout_page

from . import invoke, one_line_error

_spec = importlib.util.find_spec("rapidocr_onnxruntime")
if _spec is None:
    pytest.skip("the rapidocr-onnxruntime wheel (pip install --no-deps rapidocr-onnxruntime==1.4.4) ships "
                "ch_PP-OCRv4_det_infer.onnx", allow_module_level=True)
DBNET = Path(_spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"
H, W = 800, 608
PAD = 4  # half the 8-pixel gap between two drawn lines
# PaddleOCR's DetNormalize, (pixels / 255 - 0.5) / 0.5: the "tf" preset, at the page's size
FLAGS = ["--preprocess", "tf", "--size", f"{H}x{W}", "--input-size", f"{H}x{W}", "--device", "cpu"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not DBNET.exists():
        pytest.skip(f"rapidocr-onnxruntime is installed without its model ({DBNET})")
    image, regions = layout_page(seed=0, size=(H, W))
    folder = tmp_path_factory.mktemp("text_in")
    cv2.imwrite(str(folder / "page.png"), image[..., ::-1])
    return folder / "page.png", regions


def _inside(box, outer, pad=PAD) -> bool:
    return (box[0] >= outer[0] - pad and box[1] >= outer[1] - pad and box[2] <= outer[2] + pad
            and box[3] <= outer[3] + pad)


def test_text_lines_are_explained_as_detections(page, tmp_path):
    image, regions = page
    m = cv.load(DBNET, device="cpu", task="segmenter", input_size=(H, W))
    fused = [la.name for la in m.layers if tuple(la.shape[2:]) == (H // 4, W // 4)][-1]  # the FPN's fused map
    out = tmp_path / "out"
    run = ["--max-det", "40", "-m", "saliency,hirescam", "--layer", fused, "--out", out]
    result = invoke("--json", "explain", DBNET, image, *FLAGS, *run)
    assert result.exit_code == 0, result.output
    assert "task: text detector" in result.stderr
    document = json.loads(result.stdout)
    assert document["task"] == "text"
    assert document["task_options"] == {"task": "text", "conf": 0.25, "thresh": 0.3, "max_det": 40}

    # the records list the lines drawn: each drawn line (and the title) is one target inside its box
    index = json.loads((out / "page.detections.json").read_text())
    found = index["targets_found"]
    assert [t["number"] for t in found] == list(range(1, len(found) + 1))
    assert all(t["class"] == 0 and t["class_name"] == "text" for t in found)
    scores = [t["score"] for t in found]
    assert scores == sorted(scores, reverse=True)
    drawn = regions["lines"] + [regions["title"]]
    numbers = []
    for line in drawn:
        mine = [t for t in found if _inside(t["box"], line)]
        assert len(mine) == 1, (line, [t["box"] for t in found])
        numbers.append(mine[0]["number"])
    assert (out / "page.detections.png").exists()

    # the maps are the library's: every line of the page in one batched run, numbered best first
    x = ((cv2.imread(str(image))[..., ::-1].astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    lines = text_regions(m, x)[0]
    assert [list(map(float, r.box)) for r in lines] == [t["box"] for t in found]
    checked = [numbers[i] for i in (0, 4, 8)]
    targets = [lines[n - 1] for n in checked]
    sal = explain(cv.saliency, m, x, targets)
    records = {(r["method"], r["number"]): r for r in document["results"]}
    assert len(records) == 2 * len(found)
    for k, n in enumerate(checked):
        record = records[("saliency", n)]
        assert record["class_name"] == "text" and record["box"] == found[n - 1]["box"]
        got = np.load(record["outputs"]["array"])
        np.testing.assert_allclose(got, sal[k], rtol=1e-4, atol=1e-5 * np.abs(sal[k]).max())
        # a line's saliency peaks inside it; HiResCAM at the fused 1/4 map puts its mass in it
        line = drawn[numbers.index(n)]
        y1, y2, x1, x2 = line[1] - PAD, line[3] + PAD, line[0] - PAD, line[2] + PAD
        py, px = np.unravel_index(got.argmax(), got.shape)
        assert y1 <= py < y2 and x1 <= px < x2
        h = np.load(records[("hirescam", n)]["outputs"]["array"])
        assert h[y1:y2, x1:x2].sum() / h.sum() > 0.95

    # --resume keeps everything; --conf above every line's score says so and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = invoke("--json", "explain", DBNET, image, *FLAGS, *run, "--resume")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["results"] == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    none = invoke("explain", DBNET, image, *FLAGS, "--task", "text", "--conf", "1", "-m", "saliency", "--out",
                  tmp_path / "none")
    assert none.exit_code == 1 and "no text line scores at least --conf 1" in one_line_error(none)
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())
