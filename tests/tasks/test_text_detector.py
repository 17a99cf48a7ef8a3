"""DBNet: rapidocr's trained ``ch_PP-OCRv4_det_infer.onnx`` (PaddleOCR's text detector, shipped in the
``rapidocr-onnxruntime`` wheel) on a page drawn by the test: each drawn text line is a region of its probability map,
and a line's explanation falls inside that line."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.tasks import explain
from onnx_cnnviz.tasks.text import TextRegion, text_regions

from .documents import layout_page

_spec = importlib.util.find_spec("rapidocr_onnxruntime")
if _spec is None:
    pytest.skip("the rapidocr-onnxruntime wheel (pip install --no-deps rapidocr-onnxruntime==1.4.4) ships "
                "ch_PP-OCRv4_det_infer.onnx", allow_module_level=True)
DBNET = Path(_spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"
SIZE = (800, 608)
PAD = 4  # half the 8-pixel gap between two drawn lines


@pytest.fixture(scope="module")
def dbnet():
    if not DBNET.exists():
        pytest.skip(f"rapidocr-onnxruntime is installed without its model ({DBNET})")
    return cv.load(DBNET, device="cpu", task="segmenter", input_size=SIZE)


@pytest.fixture(scope="module")
def page():
    image, regions = layout_page(seed=0, size=SIZE)
    x = ((image.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]  # PaddleOCR's DetNormalize
    return x, regions


def _inside(box, outer, pad=PAD) -> bool:
    return (box[0] >= outer[0] - pad and box[1] >= outer[1] - pad and box[2] <= outer[2] + pad
            and box[3] <= outer[3] + pad)


def line_regions(dbnet, x, lines):
    """Each drawn line's text region (the one region inside the line's padded box)."""
    found = text_regions(dbnet, x)[0]
    out = []
    for line in lines:
        mine = [r for r in found if _inside(r.box, line)]
        assert len(mine) == 1, (line, [r.box for r in mine])
        out.append(mine[0])
    return out


def test_each_drawn_line_is_one_text_region(dbnet, page):
    """The ten drawn lines are ten regions, each inside its line and spanning most of it (DBNet's map is the
    shrunk text kernel: PaddleOCR unclips it by 1.6 afterwards); the title is one too."""
    x, regions = page
    found = line_regions(dbnet, x, regions["lines"] + [regions["title"]])
    for region, line in zip(found, regions["lines"]):
        assert isinstance(region, TextRegion) and region.score > 0.9
        assert region.box[2] - region.box[0] > 0.85 * (line[2] - line[0])
        assert region.mask.shape == SIZE and region.mask.sum() == (region.mask & _box_mask(region.box)).sum()


def _box_mask(box):
    mask = np.zeros(SIZE, bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


def test_a_lines_map_falls_inside_that_line(dbnet, page):
    """Three lines explained in one batched run. Saliency: the peak lies in the line (padded by half the gap to the
    next line) and the line, 1.3% of the page, holds over 15x its share of the map (measured: 26%). HiResCAM at the
    FPN's fused 1/4-resolution map: all its mass inside the line. (Grad-CAM there puts 5% in the line: its pooled
    channel weights light up every line alike, a class-level and not an instance-level explanation.)"""
    x, regions = page
    lines = [regions["lines"][i] for i in (0, 4, 8)]
    targets = line_regions(dbnet, x, lines)
    fused = [la.name for la in dbnet.layers if tuple(la.shape[2:]) == (SIZE[0] // 4, SIZE[1] // 4)][-1]
    sal = explain(cv.saliency, dbnet, x, targets)
    hires = explain(cv.hires_cam, dbnet, x, targets, layer=fused)
    for line, s, h in zip(lines, sal, hires):
        y1, y2, x1, x2 = line[1] - PAD, line[3] + PAD, line[0] - PAD, line[2] + PAD
        share = (y2 - y1) * (x2 - x1) / (SIZE[0] * SIZE[1])
        py, px = np.unravel_index(s.argmax(), s.shape)
        assert y1 <= py < y2 and x1 <= px < x2
        assert s[y1:y2, x1:x2].sum() / s.sum() > 15 * share
        assert h[y1:y2, x1:x2].sum() / h.sum() > 0.95


def test_text_region_seeds_like_a_region(dbnet, page):
    x, regions = page
    region = line_regions(dbnet, x, regions["lines"][:1])[0]
    plain = cv.Region(0, region.mask, dbnet.score_name)
    np.testing.assert_array_equal(region.seed(dbnet)[1], plain.seed(dbnet)[1])


def test_text_regions_refuses_sizes_not_multiples_of_32(dbnet):
    with pytest.raises(InputError, match="multiples of 32"):
        text_regions(dbnet, np.zeros((1, 3, 100, 96), np.float32))
    with pytest.raises(InputError, match="thresh and box_thresh are in"):
        text_regions(dbnet, np.zeros((1, 3, 96, 96), np.float32), thresh=2.0)


def test_blank_page_has_no_text_region(dbnet):
    assert text_regions(dbnet, np.ones((1, 3, 96, 128), np.float32)) == [[]]
