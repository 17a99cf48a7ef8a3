"""A method added through the registry alone reaches every place that lists methods: the library
(``registry.get``, ``top_k``, ``registry.explain``), ``cnnviz explain --help``, the JSON records of ``cnnviz explain``
and the HTML of ``cnnviz report``. Nothing but one ``registry.register`` call knows the toy method, so a frozen list
anywhere (a click Choice built at import, a table of its own) fails these tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.methods import registry
from onnx_cnnviz.methods.top_k import top_k
from tests.conftest import caffe_preprocess

from . import SQZ, invoke


def toy_map(m, x, targets=None, layer=None, *, upsample=True, normalize=True, batch_size=None):
    """A map function of the registry's shape: the input channel ``target % C`` weighted by the target's score, so
    that two classes give two different maps (min-max scaled to [0, 1] with ``normalize``)."""
    x = m.check_input(x)
    scores = m.scores(x, batch_size=batch_size)
    t = scores.argmax(axis=1) if targets is None else m.targets_for(targets, len(x))
    rows = np.arange(len(x))
    maps = x[rows, t % x.shape[1]] * scores[rows, t][:, None, None]
    if normalize:
        lo = maps.min(axis=(1, 2), keepdims=True)
        maps = (maps - lo) / np.maximum(maps.max(axis=(1, 2), keepdims=True) - lo, 1e-12)
    return maps.astype(np.float32)


@pytest.fixture
def toymap():
    """The toy method, registered for one test and removed after it."""
    method = registry.register(registry.Method("toymap", "Toy map", toy_map, kind="map", gradients=False,
                                               uses_layer=False, paper="Test 2026"))
    yield method
    registry.unregister("toymap")


@pytest.fixture
def squeezenet(squeezenet_path):
    return cv.load(squeezenet_path)


def test_library_finds_it(toymap, squeezenet, kitten_x):
    assert registry.get("toymap") is toymap and "toymap" in registry.names()
    maps, classes = top_k("toymap", squeezenet, kitten_x, k=2)
    assert maps.shape == (1, 2, 224, 224) and classes.tolist() == [[281, 285]]
    for r in range(2):
        np.testing.assert_array_equal(maps[0, r], toy_map(squeezenet, kitten_x, [classes[0, r]])[0])
    assert not np.allclose(maps[0, 0], maps[0, 1])  # the map depends on the class
    np.testing.assert_array_equal(registry.explain(squeezenet, "toymap", kitten_x, np.array([285])),
                                  toy_map(squeezenet, kitten_x, [285]))


def test_help_lists_it(toymap):
    for command in ("explain", "report"):
        result = invoke(command, "--help")
        assert result.exit_code == 0, result.output
        assert "toymap" in result.stdout


def test_explain_records_it(toymap, squeezenet, squeezenet_path, images, tmp_path):
    out = tmp_path / "out"
    kitten = images / "kitten_224.png"
    result = invoke("explain", squeezenet_path, kitten, "--method", "toymap", "--top-k", "2", *SQZ, "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["results"]
    assert [(r["method"], r["title"], r["kind"], r["class"]) for r in records] == \
        [("toymap", "Toy map", "map", 281), ("toymap", "Toy map", "map", 285)]
    x = caffe_preprocess(kitten)
    for record in records:
        assert json.loads(Path(record["json"]).read_text())["method"] == "toymap"
        assert record["parameters"] == {}  # no layer, no parameters of its own
        np.testing.assert_allclose(np.load(out / record["outputs"]["array"]),
                                   toy_map(squeezenet, x, [record["class"]])[0], atol=1e-4)


def test_report_shows_it(toymap, squeezenet_path, images, tmp_path):
    result = invoke("report", squeezenet_path, images / "fish.png", "--method", "toymap", *SQZ, "--out", tmp_path,
                    "--json")
    assert result.exit_code == 0, result.output
    html = Path(json.loads(result.stdout)["report"]).read_text()
    assert "Toy map" in html and "Test 2026" in html and html.count("<img") == 2  # the input and the toy map


def test_gone_once_unregistered(squeezenet_path, images, tmp_path):
    """Without the fixture the name is unknown again: the CLI reads the table when it runs, not at import."""
    assert "toymap" not in registry.names()
    assert "toymap" not in invoke("explain", "--help").stdout
    result = invoke("explain", squeezenet_path, images / "fish.png", "--method", "toymap", "--out", tmp_path)
    assert result.exit_code == 2 and "toymap" in result.stderr
