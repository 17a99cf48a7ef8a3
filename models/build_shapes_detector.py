"""Train a small anchor-free detector on generated shapes and export it to ``models/shapes_detector.onnx``.

    .venv/bin/python models/build_shapes_detector.py [--train-size 4800] [--epochs 3] [--threads 2]

The data come from :mod:`shapes_detection` (one to three of the six shapes on clutter, 64x64, boxes known; training
seed 0, validation seed 1; the benchmark and the tests use ``shapes_detection.TEST_SEED``, never seen here).

The network: the backbone of ``build_gap_cnn`` (five conv-BN-ReLU blocks, two 2x2 max pools, last map 16x16, one cell
per 4 pixels), one more 3x3 conv-BN-ReLU, and a 1x1 convolution giving per cell four box distances and six class
logits. It is trained as FCOS (Tian et al., ICCV 2019) with centre sampling: a cell is positive for the object whose
box holds its centre ``(4j + 2, 4i + 2)`` within ``1.5`` cells of the box's centre; the class loss is the binary
cross-entropy of the six sigmoid scores at every cell (summed, divided by the positives, as ultralytics), the box loss
the generalised IoU loss (Rezatofighi et al., CVPR 2019) at the positives. Box distances are ``softplus(t) * 4``
pixels from the cell centre: ``x1 = cx_a - l``, ``x2 = cx_a + r`` (and likewise in y).

The exported graph ends in the ultralytics v8 head layout, so that ``onnx_cnnviz.tasks.UltralyticsDecoder`` reads it
with no code of ours: output ``(N, 4 + 6, 256)``, rows ``cx, cy, w, h`` in input pixels then the six sigmoid class
scores, one column per cell (row-major); the 1x1 head is exported as a MatMul over the flattened cells, so that the
backbone's last ReLU is the graph's last 4-D tensor and the library's default Grad-CAM layer. Augmentation: horizontal
and vertical flips (boxes flipped with them). A fixed number of steps (3 epochs of 4800 images, batch 64, AdamW with a
one-cycle learning rate) and a fixed torch seed make it deterministic on the CPU: the committed model took about 5
CPU-minutes (70 s of them generating data; 22 minutes wall at load 20-30 on the shared 2-core machine), reaching
precision 0.764 and recall 0.907 at IoU 0.5 (conf 0.25) on 500 validation images (828 objects), read through
onnxruntime and ``onnx_cnnviz.tasks.detect``. The file (opset 17, dynamic batch) carries the class names
(``cnnviz.labels``), the preprocessing (``cnnviz.preprocess.*``, as ``gap_cnn.onnx``), ``cnnviz.task = detector`` and
how it was made (``cnnviz.source``). ``--save-weights``/``--weights`` keep the torch weights and re-export them
without training.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import shapes_detection as sdet  # noqa: E402

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # on [0, 1] RGB, as gap_cnn.onnx
CHANNELS = (16, 24, 32, 48, 64)
HEAD = 48
POOL_AFTER = (0, 1)
STRIDE = 4
GRID = sdet.SIZE // STRIDE
CENTRE_RADIUS = 1.5  # cells
MAX_OBJECTS = sdet.MAX_OBJECTS


def preprocessing():
    from onnx_cnnviz.image import Preprocessing

    return Preprocessing(size=(sdet.SIZE, sdet.SIZE), mean=MEAN, std=STD, order="RGB", scale=1.0 / 255.0)


def anchors() -> np.ndarray:
    """(GRID * GRID, 2) cell centres (x, y) in input pixels, row-major as the head's columns."""
    ys, xs = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    return (np.stack([xs.ravel(), ys.ravel()], 1) * STRIDE + STRIDE / 2).astype(np.float32)


def build_net(num_classes: int = len(sdet.CLASSES)):
    import torch
    import torch.nn as nn

    class ShapesDetector(nn.Module):
        """conv blocks -> 3x3 conv -> 1x1 head; ``forward`` gives raw (N, 4 + C, GRID, GRID) outputs, ``decoded``
        the ultralytics layout (N, 4 + C, GRID * GRID)."""

        def __init__(self):
            super().__init__()
            layers, c_in = [], 3
            for k, c in enumerate(CHANNELS):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                if k in POOL_AFTER:
                    layers.append(nn.MaxPool2d(2))
                c_in = c
            layers += [nn.Conv2d(c_in, HEAD, 3, padding=1, bias=False), nn.BatchNorm2d(HEAD), nn.ReLU()]
            self.features = nn.Sequential(*layers)
            self.head = nn.Conv2d(HEAD, 4 + num_classes, 1)
            nn.init.constant_(self.head.bias[4:], -4.0)  # focal-loss prior: few cells hold an object
            self.register_buffer("anchors", torch.from_numpy(anchors()).T.contiguous())  # (2, A)

        def forward(self, x):
            return self.head(self.features(x))

        def boxes(self, raw):
            """(N, 4, A) x1, y1, x2, y2 in pixels from the raw distances."""
            d = nn.functional.softplus(raw[:, :4].flatten(2)) * STRIDE
            return torch.cat([self.anchors - d[:, :2], self.anchors + d[:, 2:]], 1)

    return ShapesDetector()


class Exported:
    """The export wrapper: the trained net, decoded into the ultralytics v8 layout."""

    @staticmethod
    def wrap(net):
        import torch
        import torch.nn as nn

        class Decoded(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                # The 1x1 head as a MatMul over the flattened cells: the backbone's last ReLU stays the last 4-D
                # tensor of the graph, so that the library picks it as the default layer (not a slice of the head).
                feats = self.net.features(x).flatten(2)  # (N, HEAD, A)
                weight = self.net.head.weight[:, :, 0, 0]
                raw = torch.matmul(weight, feats) + self.net.head.bias[:, None]  # (N, 4 + C, A)
                b = self.net.boxes(raw)
                xy = (b[:, :2] + b[:, 2:]) / 2
                wh = b[:, 2:] - b[:, :2]
                return torch.cat([xy, wh, torch.sigmoid(raw[:, 4:])], 1)

        return Decoded().eval()


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), the same arithmetic as ``onnx_cnnviz.image.preprocess``."""
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(MEAN, np.float32)
    x /= np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def padded(labels: list, boxes: list) -> tuple:
    """Per-image labels/boxes as (N, MAX_OBJECTS) int64 (-1: none) and (N, MAX_OBJECTS, 4) float32."""
    lab = np.full((len(labels), MAX_OBJECTS), -1, np.int64)
    box = np.zeros((len(labels), MAX_OBJECTS, 4), np.float32)
    for i, (a, b) in enumerate(zip(labels, boxes)):
        lab[i, :len(a)] = a
        box[i, :len(a)] = b
    return lab, box


def assign(lab, box, anchor_xy):
    """FCOS targets with centre sampling: (N, A) the object index of each cell (-1: background)."""
    import torch

    ax, ay = anchor_xy[0][None, None], anchor_xy[1][None, None]  # (1, 1, A)
    x0, y0, x1, y1 = (box[..., k:k + 1] for k in range(4))  # (N, M, 1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = CENTRE_RADIUS * STRIDE
    inside = (ax > x0) & (ax < x1) & (ay > y0) & (ay < y1) & ((ax - cx).abs() < r) & ((ay - cy).abs() < r)
    inside &= (lab >= 0)[..., None]
    # boxes never overlap (shapes_detection keeps them apart), so a cell is inside at most one
    return torch.where(inside.any(1), inside.int().argmax(1), torch.full_like(inside[:, 0], -1, dtype=torch.int64))


def loss_fn(net, raw, lab, box):
    import torch
    import torch.nn.functional as F
    from torchvision.ops import generalized_box_iou_loss

    n, a = raw.shape[0], GRID * GRID
    owner = assign(lab, box, net.anchors)  # (N, A)
    pos = owner >= 0
    num_pos = max(int(pos.sum()), 1)
    cls_target = torch.zeros(n, a, raw.shape[1] - 4)
    obj_cls = torch.gather(lab, 1, owner.clamp(min=0))  # (N, A)
    cls_target[pos, obj_cls[pos]] = 1.0
    logits = raw[:, 4:].flatten(2).transpose(1, 2)  # (N, A, C)
    cls_loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / num_pos
    pred = net.boxes(raw).transpose(1, 2)  # (N, A, 4)
    gt = torch.gather(box, 1, owner.clamp(min=0)[..., None].expand(n, a, 4))
    box_loss = generalized_box_iou_loss(pred[pos], gt[pos], reduction="sum") / num_pos
    return cls_loss + 2.0 * box_loss, cls_loss, box_loss


def flip(xb, box, horizontal: bool, vertical: bool):
    size = float(sdet.SIZE)
    box = box.clone()
    if horizontal:
        xb = xb.flip(3)
        box[..., [0, 2]] = size - box[..., [2, 0]]
    if vertical:
        xb = xb.flip(2)
        box[..., [1, 3]] = size - box[..., [3, 1]]
    return xb, box


def detection_scores(path: Path, images: np.ndarray, labels: list, boxes: list, conf: float = 0.25) -> dict:
    """Precision and recall at IoU 0.5 (right class) of the exported file, read by the library's own decoder."""
    import onnx_cnnviz as cv
    from onnx_cnnviz.tasks import box_iou, detect

    m = cv.load(str(path), task="detector", device="cpu")
    found = detect(m, to_input(images), conf=conf)
    tp = fp = 0
    matched_gt = 0
    for dets, lab, box in zip(found, labels, boxes):
        used = np.zeros(len(lab), bool)
        for d in dets:
            ious = box_iou(np.asarray(d.box), box.astype(np.float64)) if len(box) else np.zeros(0)
            ious = np.where((lab == d.cls) & ~used, ious, 0.0)
            if ious.size and ious.max() >= 0.5:
                used[int(ious.argmax())] = True
                tp += 1
            else:
                fp += 1
        matched_gt += int(used.sum())
    total = sum(len(v) for v in labels)
    return {"precision": tp / max(tp + fp, 1), "recall": matched_gt / max(total, 1), "objects": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=4800)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="torch seed and training-data seed (validation: seed+1)")
    parser.add_argument("--out", type=Path, default=HERE / "shapes_detector.onnx")
    parser.add_argument("--save-weights", type=Path, default=None, help="also save the torch state_dict here")
    parser.add_argument("--weights", type=Path, default=None,
                        help="skip training: export the state_dict saved by --save-weights")
    args = parser.parse_args()
    if args.seed in (sdet.TEST_SEED, sdet.TEST_SEED - 1):
        parser.error("that seed is the benchmark's held-out test set.")

    import onnx
    import torch

    from onnx_cnnviz.converters.metadata import set_metadata_props
    from onnx_cnnviz.files import write_atomic
    from onnx_cnnviz.report import LABELS_KEY
    from tests.exporting import export_torchscript

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    val_images, val_labels, val_boxes = sdet.make_dataset(args.val_size, seed=args.seed + 1)
    net = build_net()
    if args.weights is not None:
        net.load_state_dict(torch.load(args.weights))
        net.eval()
        train_time = 0.0
    else:
        train_time = train(net, args)
        if args.save_weights is not None:
            torch.save(net.state_dict(), args.save_weights)

    temp = args.out.with_name(args.out.stem + ".export.onnx")
    export_torchscript(Exported.wrap(net), torch.from_numpy(to_input(val_images[:2])), temp, output="output0",
                       input="images")
    model = onnx.load(str(temp))
    temp.unlink()
    scores = detection_scores_from_model(model, val_images, val_labels, val_boxes)
    source = (f"models/build_shapes_detector.py: FCOS-style detector {CHANNELS} on shapes_detection (train seed "
              f"{args.seed}, {args.train_size} images x {args.epochs} epochs; validation precision "
              f"{scores['precision']:.3f}, recall {scores['recall']:.3f} at IoU 0.5, conf 0.25), torch "
              f"{torch.__version__}")
    props = dict(preprocessing().to_metadata())
    props[LABELS_KEY] = "\n".join(sdet.CLASSES)
    props["cnnviz.task"] = "detector"
    props["cnnviz.input_size"] = f"{sdet.SIZE}x{sdet.SIZE}"
    props["cnnviz.source"] = source
    set_metadata_props(model, props)
    onnx.checker.check_model(model)
    write_atomic(args.out, model.SerializeToString(), overwrite=True)
    print(f"validation (onnxruntime, the library's decoder): precision {scores['precision']:.3f}, recall "
          f"{scores['recall']:.3f} over {scores['objects']} objects; training took {train_time:.0f} s")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - start:.0f} s total")


def train(net, args) -> float:
    """Train ``net`` in place (the module docstring's recipe); returns the seconds the steps took."""
    import torch

    start = time.perf_counter()
    images, labels, boxes = sdet.make_dataset(args.train_size, seed=args.seed)
    lab_all, box_all = (torch.from_numpy(v) for v in padded(labels, boxes))
    x_all = torch.from_numpy(to_input(images))
    print(f"data: {args.train_size} training images in {time.perf_counter() - start:.1f} s", flush=True)
    steps_per_epoch = args.train_size // args.batch
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps_per_epoch * args.epochs,
                                                pct_start=0.2)
    gen = torch.Generator().manual_seed(args.seed)
    train_start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(args.train_size, generator=gen)
        sums = np.zeros(3)
        for step in range(steps_per_epoch):
            idx = order[step * args.batch:(step + 1) * args.batch]
            h, v = (bool(int(torch.randint(2, (1,), generator=gen))) for _ in range(2))
            xb, bb = flip(x_all[idx], box_all[idx], h, v)
            loss, cls_loss, box_loss = loss_fn(net, net(xb.contiguous()), lab_all[idx], bb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += [float(v.detach()) for v in (loss, cls_loss, box_loss)]
            if step % 25 == 0:
                print(f"  step {step}/{steps_per_epoch}: loss {float(loss.detach()):.3f} "
                      f"({time.perf_counter() - train_start:.0f} s)", flush=True)
        sums /= steps_per_epoch
        print(f"epoch {epoch + 1}/{args.epochs}: loss {sums[0]:.3f} (class {sums[1]:.3f}, GIoU {sums[2]:.3f}) "
              f"({time.perf_counter() - train_start:.0f} s)", flush=True)
    net.eval()
    return time.perf_counter() - train_start


def detection_scores_from_model(model, images, labels, boxes) -> dict:
    """:func:`detection_scores` of an in-memory ``onnx.ModelProto`` (through a temporary file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model.SerializeToString())
        return detection_scores(path, images, labels, boxes)


if __name__ == "__main__":
    main()
