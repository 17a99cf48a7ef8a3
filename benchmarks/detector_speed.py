"""Speed of explaining a detector: every detection of a 640x640 ultralytics yolov8n image, in one run, on the CPU.

    .venv/bin/python benchmarks/detector_speed.py [--detections 10] [--masks 4000] [--repeat 3] [--write]

The model is yolov8n built from its yaml with random weights (nothing is downloaded), its class branches' last
convolutions scaled so that the class scores spread (at random weights every score is 0.5 to within float32's
rounding; see ``tests/tasks/test_drise_yolov8n.py``), exported once by ``torch.onnx.export`` (cached under
``.cache/benchmarks``). One random image; its ``--detections`` best detections (conf 0.99, NMS 0.45) are explained.
Rows, each the best of ``--repeat`` runs after an untimed one (D-RISE: one run each):

* ``forward``: one forward pass of the image in onnxruntime (``Model.scores``), the unit of the ratios;
* ``ours: Grad-CAM, all detections``: :func:`onnx_cnnviz.tasks.explain` with :func:`onnx_cnnviz.grad_cam` at the
  default layer (the coarsest pyramid level) and over the three levels, one batched run (one row per detection);
* ``torch: one backward per box``: what ``yolov8-explainer`` and ``hotspotyolo`` do, on the torch model: one forward
  with hooks on the layer, then one ``backward(retain_graph=True)`` per detection and Grad-CAM from the hooked
  activation and gradient (the same maps); and pytorch-grad-cam's ``GradCAM`` called once per detection (its YOLO
  notebooks' loop: a forward and a backward each);
* ``D-RISE``: :func:`onnx_cnnviz.tasks.drise` with ``--masks`` masks (16x16 grid) against Microsoft's
  ``vision-explanation-methods`` ``DRISE_saliency`` with as many masks, on a wrapper around the torch model (one
  masked image per forward, decoded and NMS'd by torchvision), both on the CPU.

Prints a markdown table; ``--write`` writes it, with the date, commit and machine, to
``docs/validation/detectors-speed.md``. The D-RISE rows scale linearly with the masks (one forward per mask on
both sides); 4,000 masks take tens of minutes per side on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pages  # noqa: E402  (benchmarks/pages.py: this script's folder is on sys.path)

SIZE = 640
CACHE = ROOT / ".cache" / "benchmarks"
PAGE = pages.DOCS / "validation" / "detectors-speed.md"
IOU = 0.45
#: The class branches' last convolutions are multiplied by this (see the module). The scores then spread from 0.5 to
#: 0.99, those of the stride-8 level mostly above 0.95: the threshold ``CONF`` leaves tens of candidates per image,
#: as many as a trained detector has (at 0.25 thousands pass, and NMS, not the model, would be timed).
SPREAD = 5e6
CONF = 0.99


def build(log):
    """(torch module returning the (1, 84, A) head output, ONNX path, onnx_cnnviz model)."""
    import torch

    import onnx_cnnviz as cv
    from tests.exporting import export_torchscript
    from tests.tasks.conftest import HeadOutput, ultralytics_net

    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    _, net = ultralytics_net("yolov8n.yaml")
    for branch in net.model[-1].cv3:
        branch[-1].weight.data *= SPREAD
    module = HeadOutput(net)
    path = CACHE / f"yolov8n_spread_{SIZE}.onnx"
    if not path.exists():
        log(f"exporting yolov8n at {SIZE}x{SIZE} to {path}")
        export_torchscript(module, torch.zeros(1, 3, SIZE, SIZE), path, input="images", output="output0")
    return module, path, cv.load(path, device="cpu", task="detector")


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def torch_backward_per_box(module, layers, x, dets, anchors: int) -> np.ndarray:
    """Grad-CAM of each detection from one torch forward and one backward per box (retain_graph), detection ``i``
    at the module ``layers[i]`` (one module for all: the same layer for every box)."""
    import torch

    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(dets)
    store = {}
    handles = [layer.register_forward_hook(lambda mod, inp, out, key=id(layer): store.__setitem__(key, out))
               for layer in {id(layer): layer for layer in layers}.values()]
    try:
        xt = torch.from_numpy(x)
        with torch.enable_grad():
            for p in module.parameters():
                p.requires_grad_(True)
            head = module(xt)
            maps = []
            for d, layer in zip(dets, layers):
                act = store[id(layer)]
                row, anchor = divmod(d.element, anchors)
                grad, = torch.autograd.grad(head[0, row, anchor], act, retain_graph=True)
                cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1))[0]
                maps.append(torch.nn.functional.interpolate(cam[None, None], size=x.shape[2:], mode="bilinear",
                                                            align_corners=False)[0, 0].detach().numpy())
    finally:
        for handle in handles:
            handle.remove()
        for p in module.parameters():
            p.requires_grad_(False)
    return np.stack(maps)


def pytorch_grad_cam_per_box(module, layer, x, dets, anchors: int) -> np.ndarray:
    """pytorch-grad-cam's GradCAM called once per detection (a forward and a backward each)."""
    import torch
    from pytorch_grad_cam import GradCAM

    for p in module.parameters():
        p.requires_grad_(True)
    try:
        out = []
        with GradCAM(model=module, target_layers=[layer]) as peer:
            for d in dets:
                row, anchor = divmod(d.element, anchors)
                out.append(peer(input_tensor=torch.from_numpy(x), targets=[lambda o, r=row, a=anchor: o[r, a]])[0])
    finally:
        for p in module.parameters():
            p.requires_grad_(False)
    return np.stack(out)


def microsoft_drise(module, x, dets, n_masks: int) -> np.ndarray:
    """vision-explanation-methods' DRISE_saliency on the torch model (its own random masks, 16x16 grid)."""
    import torch
    from torchvision.ops import batched_nms
    from vision_explanation_methods.explanations import drise as vem
    from vision_explanation_methods.explanations.common import DetectionRecord, GeneralObjectDetectionModelWrapper

    def decode(batch):
        head = module(batch)
        cx, cy, w, h = head[:, 0], head[:, 1], head[:, 2], head[:, 3]
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=2), head[:, 4:].transpose(1, 2)

    class Wrapper(GeneralObjectDetectionModelWrapper):
        def predict(self, batch):
            records = []
            all_boxes, all_scores = decode(batch)
            for boxes, scores in zip(all_boxes, all_scores):
                best, cls = scores.max(dim=1)
                ok = torch.nonzero(best >= CONF)[:, 0]
                keep = ok[batched_nms(boxes[ok], best[ok], cls[ok], IOU)]
                records.append(DetectionRecord(boxes[keep], torch.ones(len(keep)), scores[keep]))
            return records

    with torch.no_grad():
        _, scores = decode(torch.from_numpy(x))
        anchors = [d.element % scores.shape[1] for d in dets]
        targets = [DetectionRecord(torch.tensor([d.box for d in dets]), torch.ones(len(dets)), scores[0, anchors])]
        out = vem.DRISE_saliency(Wrapper(), torch.from_numpy(x), targets, n_masks)
    return np.stack([rec["detection"][0].numpy() for rec in out[0]])


def measure(args, log) -> tuple[list, dict]:
    import torch

    import onnx_cnnviz as cv
    from onnx_cnnviz.tasks import detect, explain
    from onnx_cnnviz.tasks.drise import drise
    from onnx_cnnviz.tasks.levels import own_levels

    module, path, m = build(log)
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    dets = detect(m, x, conf=CONF, iou=IOU, max_det=args.detections)[0]
    info = {"detections": len(dets), "levels": m.levels, "layer": m.default_layer}
    candidates = int((m.decoder.candidates(m.scores(x)[0]).scores >= CONF).sum())
    info["candidates"] = candidates
    log(f"{len(dets)} detections of {candidates} candidates; levels {m.levels}")
    net = module.inner
    coarsest = net.model[21]
    rows = []

    def row(what, seconds, note=""):
        rows.append({"what": what, "seconds": seconds, "note": note})
        log(f"{what}: {seconds:.3f} s")

    row("forward (onnxruntime, 1 image)", best_of(lambda: m.scores(x), args.repeat))
    with torch.no_grad():
        row("forward (torch, 1 image)", best_of(lambda: module(torch.from_numpy(x)), args.repeat))
    coarsest_layer = m.levels[-1]
    ours = explain(cv.grad_cam, m, x, dets, layer=coarsest_layer)
    row(f"ours: Grad-CAM, all {len(dets)} detections, coarsest level",
        best_of(lambda: explain(cv.grad_cam, m, x, dets, layer=coarsest_layer), args.repeat))
    own = own_levels(m, dets)
    info["own"] = {level: own.count(level) for level in m.levels}
    ours_own = explain(cv.grad_cam, m, x, dets)
    row(f"ours: Grad-CAM, all {len(dets)} detections, each at its own level (the default)",
        best_of(lambda: explain(cv.grad_cam, m, x, dets), args.repeat))
    row(f"ours: Grad-CAM, all {len(dets)} detections, 3 levels",
        best_of(lambda: explain(cv.grad_cam, m, x, dets, layer=m.levels), args.repeat))
    theirs = torch_backward_per_box(module, coarsest, x, dets, m.decoder.anchors)
    top = np.maximum(theirs.max(axis=(1, 2), keepdims=True), 1e-30)
    info["max_diff_torch"] = float(np.abs(ours - theirs / top).max())
    info["nonzero"] = int(sum(np.ptp(t) > 0 for t in theirs))
    # the neck's outputs that feed the head, finest first: ultralytics' Detect reads model 15, 18 and 21
    modules = dict(zip(m.levels, (net.model[15], net.model[18], net.model[21])))
    own_modules = [modules[level] for level in own]
    theirs_own = torch_backward_per_box(module, own_modules, x, dets, m.decoder.anchors)
    top = np.maximum(theirs_own.max(axis=(1, 2), keepdims=True), 1e-30)
    info["max_diff_torch_own"] = float(np.abs(ours_own - theirs_own / top).max())
    info["nonzero_own"] = int(sum(np.ptp(t) > 0 for t in theirs_own))
    row("torch: 1 forward + 1 backward per box, coarsest level (hotspotyolo / yolov8-explainer style)",
        best_of(lambda: torch_backward_per_box(module, coarsest, x, dets, m.decoder.anchors), args.repeat))
    row("torch: 1 forward + 1 backward per box, each at its own level",
        best_of(lambda: torch_backward_per_box(module, own_modules, x, dets, m.decoder.anchors), args.repeat))
    if not args.skip_pytorch_grad_cam:
        row("pytorch-grad-cam: GradCAM called per box (its YOLO notebooks)",
            best_of(lambda: pytorch_grad_cam_per_box(module, coarsest, x, dets, m.decoder.anchors), args.repeat))
    if args.masks:
        row(f"ours: D-RISE, {args.masks} masks, all {len(dets)} detections",
            once(lambda: drise(m, x, dets, n_masks=args.masks, conf=CONF, iou=IOU, batch_size=args.drise_batch)))
        row(f"vision-explanation-methods: DRISE_saliency, {args.masks} masks (torch, CPU)",
            once(lambda: microsoft_drise(module, x, dets, args.masks)))
    return rows, info


def table(rows: list) -> str:
    forward = rows[0]["seconds"]
    lines = ["| what | seconds | / onnxruntime forward |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['seconds']:.3f} | {r['seconds'] / forward:.2f} |")
    return "\n".join(lines)


def ratios(rows: list) -> list[str]:
    """The acceptance ratios in words."""
    get = {r["what"]: r["seconds"] for r in rows}
    find = lambda prefix: next((v for k, v in get.items() if k.startswith(prefix)), None)  # noqa: E731
    fwd, coarsest = find("forward (onnxruntime"), find("ours: Grad-CAM")
    own = next(v for k, v in get.items() if k.startswith("ours") and "own level" in k)
    out = [f"All detections with Grad-CAM, each at its own level (the default): {own / fwd:.2f}x one onnxruntime "
           f"forward (goal <= 2x); at the coarsest level (the layer of pytorch-grad-cam's YOLO tutorials): "
           f"{coarsest / fwd:.2f}x."]
    loop, loop_own = find("torch: 1 forward + 1 backward per box, coarsest"), find("torch: 1 forward + 1 backward "
                                                                                    "per box, each")
    pgc = find("pytorch-grad-cam")
    out.append(f"Against one forward and one backward per box on the torch model: {loop_own / own:.2f}x faster at "
               f"the own levels, {loop / coarsest:.2f}x at the coarsest"
               + (f"; against pytorch-grad-cam called per box: {pgc / coarsest:.2f}x faster." if pgc else "."))
    d_ours, d_vem = find("ours: D-RISE"), find("vision-explanation-methods")
    if d_ours and d_vem:
        out.append(f"D-RISE: {d_vem / d_ours:.2f}x faster than vision-explanation-methods (goal >= 3x).")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detections", type=int, default=10, help="detections explained (the best, max_det)")
    parser.add_argument("--masks", type=int, default=4000, help="D-RISE masks per side (0: no D-RISE rows)")
    parser.add_argument("--drise-batch", type=int, default=16, help="our masked images per onnxruntime run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per row (best kept)")
    parser.add_argument("--skip-pytorch-grad-cam", action="store_true",
                        help="leave out the pytorch-grad-cam row (minutes: a forward and a backward per box)")
    parser.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(ROOT)}")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows, info = measure(args, log)
    after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = table(rows)
    summary = ratios(rows)
    print(text)
    print()
    print("\n".join(summary))
    if args.write:
        command = (f".venv/bin/python benchmarks/detector_speed.py --detections {args.detections} --masks "
                   f"{args.masks} --repeat {args.repeat}"
                   + (" --skip-pytorch-grad-cam" if args.skip_pytorch_grad_cam else "") + " --write")
        note = (f"Load average {load:.1f} before and {after:.1f} after (a shared machine: compare the ratios of "
                "one run, not seconds across runs).")
        body = [
            "# Detector speed: all detections of a yolov8n image", "",
            pages.header("benchmarks/detector_speed.py", command, note), "",
            f"yolov8n at {SIZE}x{SIZE} (random weights built from its yaml, class scores spread; see the script), "
            f"one random image, its {info['detections']} best detections (conf {CONF}, NMS {IOU}; "
            f"{info['candidates']} candidates above conf; by own level, finest first: "
            f"{', '.join(str(v) for v in info['own'].values())}). Seconds are the "
            "best of the repeats after one untimed run; the D-RISE rows one run each. Our Grad-CAM maps equal the "
            f"torch loop's to {info['max_diff_torch_own']:.1e} at the own levels ({info['nonzero_own']} of "
            f"{info['detections']} maps not zero) and to {info['max_diff_torch']:.1e} at the coarsest "
            f"({info['nonzero']} not zero: at random weights a stride-8 anchor's score does not read the coarsest "
            "level, so its Grad-CAM there is zero on both sides; min-max scaled maps)."
            " The machine is shared: at a load far above its 2 cores, torch's threads wait on each other and its "
            "rows (and so the ratios against torch) are inflated; read them as one run's, not as a claim.", "",
            text, "", *[f"- {s}" for s in summary], "",
            "How the Grad-CAM rows share one forward pass: `explain` gives the method the image once per "
            "detection (one cotangent row each, a read-only view of the one image); `Model.run` runs the forward "
            "pass once and the backward part of the gradient graph (`graph/backward_split.py`) once per detection, "
            "each fed the image's forward tensors, the same numbers as the whole graph per row. The backward part "
            "leaves out what no detection's seed reaches (`graph/seed_narrowing.py`: the box branches, the other "
            "levels' heads and the neck path that feeds only them), and at a detection's own level it stops at the "
            "end of the level's class branch, whose stride-1 convolutions it runs on a window around the anchor "
            "(`graph/local_backward.py`: 9x9 cells instead of 80x80, exact). Over the 3 levels the backward part "
            "still crosses the stride-8 branch at 80x80 and the path down the pyramid for every detection. The "
            "D-RISE rows scale linearly with the masks on both sides (one forward pass per masked image), so their "
            "ratio at 4,000 masks is the ratio measured here.",
        ]
        pages.write_page(PAGE, "\n".join(body))
        log(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
