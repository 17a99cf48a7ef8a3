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

from tests.tiny_models import make_model, save, write_png

from . import invoke, one_line_error

_spec = importlib.util.find_spec("rapidocr_onnxruntime")
DBNET = Path(_spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx" if _spec else None
H, W = 256, 608  # the page's title and first paragraph (its top 256 rows: DBNet's sides are multiples of 32)
PAD = 4  # half the 8-pixel gap between two drawn lines
# PaddleOCR's DetNormalize, (pixels / 255 - 0.5) / 0.5: the "tf" preset, at the page's size
FLAGS = ["--preprocess", "tf", "--size", f"{H}x{W}", "--input-size", f"{H}x{W}", "--device", "cpu"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if DBNET is None:
        pytest.skip("the rapidocr-onnxruntime wheel (pip install --no-deps rapidocr-onnxruntime==1.4.4) ships "
                    "ch_PP-OCRv4_det_infer.onnx")
    if not DBNET.exists():
        pytest.skip(f"rapidocr-onnxruntime is installed without its model ({DBNET})")
    image, regions = layout_page(seed=0)
    assert max(line[3] for line in regions["lines"][:6]) < H - 2 * PAD
    image = image[:H].copy()
    image[H - 16:] = 255  # the table's top rule starts at row 250
    regions = {"title": regions["title"], "lines": regions["lines"][:6]}
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
    run = ["--max-det", "20", "-m", "saliency,hirescam", "--layer", fused, "--out", out]
    result = invoke("--json", "explain", DBNET, image, *FLAGS, *run)
    assert result.exit_code == 0, result.output
    assert "task: text detector" in result.stderr
    document = json.loads(result.stdout)
    assert document["task"] == "text"
    assert document["task_options"] == {"task": "text", "conf": 0.25, "thresh": 0.3, "max_det": 20}

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
    assert sorted(numbers) == list(range(1, len(found) + 1))  # nothing else on the page is taken for text
    assert (out / "page.detections.png").exists()

    # the maps are the library's: every line of the page in one batched run, numbered best first
    x = ((cv2.imread(str(image))[..., ::-1].astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    lines = text_regions(m, x)[0]
    assert [list(map(float, r.box)) for r in lines] == [t["box"] for t in found]
    checked = [numbers[i] for i in (0, 2, 5)]
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
        # and the line (4% of the crop) holds over 5x its share of the map (measured: 7x for the first line)
        assert got[y1:y2, x1:x2].sum() / got.sum() > 5 * (y2 - y1) * (x2 - x1) / (H * W)
        h = np.load(records[("hirescam", n)]["outputs"]["array"])
        assert h[y1:y2, x1:x2].sum() / h.sum() > 0.95

    # --resume keeps everything; --conf above every line's score says so and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = invoke("--json", "explain", DBNET, image, *FLAGS, *run, "--resume")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["results"] == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # --overwrite with fewer lines: the lines no longer found lose their files, the index lists the two left
    fewer = invoke("--json", "explain", DBNET, image, *FLAGS, *run[2:], "--max-det", "2", "--overwrite")
    assert fewer.exit_code == 0, fewer.output
    assert [t["number"] for t in json.loads((out / "page.detections.json").read_text())["targets_found"]] == [1, 2]
    assert sorted(p.name for p in out.glob("page.saliency.det*.npy")) == ["page.saliency.det01.npy",
                                                                          "page.saliency.det02.npy"]
    none = invoke("explain", DBNET, image, *FLAGS, "--task", "text", "--conf", "1", "-m", "saliency", "--out",
                  tmp_path / "none")
    assert none.exit_code == 1 and "no text line scores at least --conf 1" in one_line_error(none)
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())
    # images resized to --size, the model at its default size: the flag to give is named, before any work
    unsized = invoke("explain", DBNET, image, "--preprocess", "tf", "--size", f"{H}x{W}", "-m", "saliency", "--out",
                     tmp_path / "unsized", "--device", "cpu")
    assert unsized.exit_code == 1 and f"give --input-size {H}x{W}" in one_line_error(unsized)
    assert not (tmp_path / "unsized").exists() or not any((tmp_path / "unsized").iterdir())


def one_channel_map(path, sigmoid: bool = True, channels: int = 1):
    """A tiny dense model on (1, 3, 32, 32): conv 3->4, ReLU, conv 4->``channels`` (bias 2: most of the map is text),
    then a Sigmoid when ``sigmoid``: a DBNet-shaped probability map at the input's resolution."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (channels, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.full(channels, 2.0, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["logits" if sigmoid else "prob"], pads=[1, 1, 1, 1])]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["prob"]))
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                       [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, channels, 32, 32])], inits)
    return save(model, path)


def test_auto_recognises_a_sigmoid_map_and_the_report_shows_its_lines(tmp_path):
    model = one_channel_map(tmp_path / "dbnet_like.onnx")
    image = write_png(tmp_path / "in" / "p.png", size=32, seed=1)
    out = tmp_path / "out"
    result = invoke("--json", "explain", model, image, "--preprocess", "none", "-m", "saliency", "--out", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "task: text detector" in result.stderr
    document = json.loads(result.stdout)
    m = cv.load(model, device="cpu", task="segmenter")
    lines = text_regions(m, cv.image.preprocess([image], preset="none"), box_thresh=0.25)[0]
    assert lines and document["task"] == "text"
    assert [(r["number"], r["class_name"], r["box"]) for r in document["results"]] == [
        (n + 1, "text", [float(v) for v in r.box]) for n, r in enumerate(lines)]
    assert (out / "p.saliency.det01.npy").exists() and (out / "p.detections.png").exists()
    # the same file declared a segmenter stays one: its class-0 region, KEY.METHOD.c0
    seg = invoke("--json", "explain", model, image, "--task", "segmenter", "--preprocess", "none", "-m", "saliency",
                 "--out", tmp_path / "seg", "--device", "cpu")
    assert seg.exit_code == 0, seg.output
    assert json.loads(seg.stdout)["task"] == "segmenter" and (tmp_path / "seg" / "p.saliency.c0.npy").exists()

    report = invoke("--json", "report", model, image, "--preprocess", "none", "-m", "saliency", "--out",
                    tmp_path / "rep", "--device", "cpu")
    assert report.exit_code == 0, report.output
    said = json.loads(report.stdout)
    assert said["task"] == "text" and said["task_options"]["task"] == "text"
    page = (tmp_path / "rep" / "report.html").read_text()
    assert f"<b>{len(lines)} detections</b>" in page and 'alt="detections"' in page
    assert f"<b>#1</b> 0 text · score {lines[0].score:.3f}" in page and 'alt="saliency #1"' in page


def test_a_one_channel_map_without_sigmoid_needs_task_text(tmp_path):
    model = one_channel_map(tmp_path / "plain.onnx", sigmoid=False)
    image = write_png(tmp_path / "in" / "p.png", size=32, seed=1)
    auto = invoke("explain", model, image, "--preprocess", "none", "--out", tmp_path / "a", "--device", "cpu")
    assert auto.exit_code == 1 and "declare it with --task text" in one_line_error(auto)
    declared = invoke("--json", "explain", model, image, "--task", "text", "--conf", "0.5", "--preprocess", "none",
                      "-m", "saliency", "--out", tmp_path / "t", "--device", "cpu")
    assert declared.exit_code == 0, declared.output
    assert json.loads(declared.stdout)["task_options"] == {"task": "text", "conf": 0.5, "thresh": 0.3, "max_det": 300}


@pytest.mark.ray
def test_ray_run_of_a_recognised_text_detector_equals_the_single_process_run(tmp_path):
    """Under --ray each actor loads the map as a segmenter (as the driver did): the lines are still text lines, with
    the single-process run's files and records."""
    ray = pytest.importorskip("ray")
    model = one_channel_map(tmp_path / "m.onnx")
    for i in range(2):
        write_png(tmp_path / "in" / f"p{i}.png", size=32, seed=i)
    args = ["--json", "explain", model, tmp_path / "in", "--preprocess", "none", "-m", "saliency", "--device", "cpu"]
    single = invoke(*args, "--out", tmp_path / "single")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        on_ray = invoke(*args, "--out", tmp_path / "ray", "--ray")
    finally:
        ray.shutdown()
    assert single.exit_code == on_ray.exit_code == 0, on_ray.output
    assert json.loads(single.stdout)["task"] == json.loads(on_ray.stdout)["task"] == "text"
    names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert "p0.saliency.det01.npy" in names
    assert names == sorted(p.name for p in (tmp_path / "ray").iterdir() if p.name != "records.parquet")
    for name in (n for n in names if n.endswith(".det01.json")):
        a, b = (json.loads((tmp_path / side / name).read_text()) for side in ("single", "ray"))
        assert (a["task"], a["class_name"], a["box"]) == (b["task"], b["class_name"], b["box"]) == \
            ("text", "text", a["box"])
        np.testing.assert_allclose(np.load(tmp_path / "ray" / name.replace(".json", ".npy")),
                                   np.load(tmp_path / "single" / name.replace(".json", ".npy")), rtol=1e-5, atol=1e-7)


def test_task_text_refuses_a_map_of_several_channels_and_a_region_class(tmp_path):
    model = one_channel_map(tmp_path / "two.onnx", channels=2)
    image = write_png(tmp_path / "in" / "p.png", size=32, seed=1)
    result = invoke("explain", model, image, "--task", "text", "--preprocess", "none", "--out", tmp_path / "a",
                    "--device", "cpu")
    assert result.exit_code == 1 and "--task text explains a text detector's probability map" in one_line_error(result)
    region = invoke("explain", one_channel_map(tmp_path / "one.onnx"), image, "--task", "text", "--region-class", "0",
                    "--preprocess", "none", "--out", tmp_path / "b", "--device", "cpu")
    assert region.exit_code == 2 and "a text detector's targets are its text lines" in region.output
