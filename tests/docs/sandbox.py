"""The folder every documentation example runs in, built once per test session.

The examples of the README and docs/ name their files as a user would (``model.onnx``, ``cat.jpg``, ``photos/``);
this module puts small real files under those names, so each example runs as written:

==================  ==============================================================================================
``model.onnx``      an ImageNet-shaped classifier built here (two convolutions, global average pooling, a
                    1000-class linear head; random weights, seed 0), with the ImageNet preprocessing and the 1000
                    class names of ``models/imagenet_classes.txt`` in its ``cnnviz`` metadata, as the converters
                    write them
``cat.jpg``, ...    scikit-image's photographs (``models/sample_images.py``): ``cat.jpg``, ``coffee.jpg``, and
                    ``photos/`` holding all four (chelsea, coffee, astronaut, rocket)
``gap_cnn.onnx``    the committed ``models/gap_cnn.onnx`` (six shapes on clutter, 64x64, trained)
``shapes/``         eight held-out images of its dataset (``models/shapes_dataset.py``), their true boxes in
                    ``boxes.csv``
``models/``         a copy of the repository's ``models/`` scripts and small files (the flagship's build writes here)
``.venv``           a link to the venv running the tests, so ``.venv/bin/cnnviz`` works as in the README
``../shared``       a link to the shared models and images beside the clone, as the README assumes
==================  ==============================================================================================
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO, SHARED, load_script

IMAGENET_LABELS = REPO / "models" / "imagenet_classes.txt"
SHAPES_IMAGES = 8


def imagenet_like_model(path: Path, size: int = 224, seed: int = 0) -> Path:
    """A tiny classifier with ImageNet's input, classes and metadata: conv(3->8, s2) 'conv1' -> Relu -> MaxPool ->
    conv(8->16) 'conv2' -> Relu -> GlobalAveragePool -> Flatten -> Gemm(16->1000) 'logits'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [weight("w1", 8, 3, 3, 3), weight("b1", 8), weight("w2", 16, 8, 3, 3), weight("b2", 16),
             weight("fc_w", 1000, 16), weight("fc_b", 1000)]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1], strides=[2, 2],
                              name="conv1"),
             helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
             helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
             helper.make_node("Conv", ["pool1", "w2", "b2"], ["conv2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["relu2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "imagenet_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    labels = IMAGENET_LABELS.read_text().strip()
    meta = {"cnnviz.preprocess.size": f"{size},{size}", "cnnviz.preprocess.mean": "0.485,0.456,0.406",
            "cnnviz.preprocess.std": "0.229,0.224,0.225", "cnnviz.preprocess.order": "RGB",
            "cnnviz.preprocess.scale": repr(1 / 255), "cnnviz.labels": labels,
            "cnnviz.source": "tests/docs/sandbox.py: a tiny ImageNet-shaped classifier, random weights"}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def build(root: Path) -> Path:
    """Fill ``root / "work"`` with the example files (see the module docstring); returns that folder."""
    import cv2

    work = root / "work"
    work.mkdir(parents=True)
    imagenet_like_model(work / "model.onnx")
    samples = load_script(REPO / "models" / "sample_images.py")
    photos = work / "photos"
    photos.mkdir()
    for name in samples.PHOTOS:
        rgb = np.asarray(samples.photo(name))
        cv2.imwrite(str(photos / f"{name}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    shutil.copy(photos / "chelsea.jpg", work / "cat.jpg")
    shutil.copy(photos / "coffee.jpg", work / "coffee.jpg")

    shutil.copy(REPO / "models" / "gap_cnn.onnx", work / "gap_cnn.onnx")
    sys.path.insert(0, str(REPO / "models"))
    try:
        shapes = load_script(REPO / "models" / "shapes_dataset.py")
    finally:
        sys.path.remove(str(REPO / "models"))
    images, _, boxes = shapes.make_dataset(SHAPES_IMAGES, seed=shapes.TEST_SEED)
    (work / "shapes").mkdir()
    rows = ["image,x0,y0,x1,y1"]
    for i, (image, box) in enumerate(zip(images, boxes)):
        name = f"shape_{i}.png"
        cv2.imwrite(str(work / "shapes" / name), cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
        rows.append(f"{name}," + ",".join(str(int(v)) for v in box))
    (work / "boxes.csv").write_text("\n".join(rows) + "\n")

    shutil.copytree(REPO / "models", work / "models",
                    ignore=shutil.ignore_patterns("__pycache__", "efficientnet_lite0.onnx"))
    os.symlink(Path(sys.prefix), work / ".venv")
    if SHARED.exists():
        os.symlink(SHARED, root / "shared")
    return work
