"""Issue 21, point 3: a method with a parameter of its own, and a metric with one, added through the registries alone
(tests/cli/registry_toys.py: one function plus one entry each) reach every place that lists methods or metrics, with
the default written once, in the function's signature:

* the library: the entry's ``params`` (read from the signature), ``cv.<name>``, ``registry.explain`` /
  ``metric_registry.evaluate`` with the parameter set, an unknown parameter a typed error naming the known ones;
* ``cnnviz explain --help`` / ``report --help`` (the method's parameter and default under --param) and ``cnnviz
  evaluate --help`` (the metric's under --metric-param);
* ``cnnviz explain --param toypow.power=3``: the JSON records and the arrays, equal byte for byte to the in-process
  :func:`onnx_cnnviz.runs.explain_images`; an unknown key or a method not run is a usage error;
* ``cnnviz report``'s HTML (the method's title and its parameter in the caption);
* ``cnnviz evaluate --metric toy-mean --metric-param toy-mean.scale=2``: results.jsonl rows with the parameter and
  the values it gives, as the in-process :func:`onnx_cnnviz.runs.evaluate_images` writes them.

The Ray runs of both are tests/dataset/test_registry_toy_ray.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz import runs
from onnx_cnnviz.image import preprocess
from onnx_cnnviz.methods import registry
from onnx_cnnviz.metrics import registry as metric_registry
from onnx_cnnviz.runs.preprocessing import choose_preprocessing
from tests.tiny_models import gap_classifier, save, write_png

from . import invoke
from .registry_toys import METHOD, METRIC, POWER, SCALE, registered, toy_mean, toy_power


@pytest.fixture
def toys():
    with registered():
        yield


@pytest.fixture
def inputs(tmp_path):
    """A 16x16 classifier and three pictures of two sizes (resized to 16 by the imagenet preprocessing)."""
    save(gap_classifier(size=16, seed=3), tmp_path / "model.onnx")
    for i in range(3):
        write_png(tmp_path / "photos" / f"p{i}.png", size=20 + 4 * (i % 2), seed=i)
    return tmp_path


def model_input(inputs: Path, name: str) -> np.ndarray:
    """Picture ``name`` as the runs give it to the model (the imagenet preset at the model's 16x16)."""
    pre = choose_preprocessing(cv.load(inputs / "model.onnx"), "imagenet").preprocessing
    return preprocess([inputs / "photos" / name], preset=pre)


# ---------------------------------------------------------------------------------------------------------------------
# The method


def test_library_reads_the_parameter_from_the_signature(toys, inputs):
    meth = registry.get(METHOD)
    assert meth.params == {"power": POWER} and METHOD in registry.names()
    assert cv.toypow is toy_power  # cv.<name> comes from the entry
    m = cv.load(inputs / "model.onnx")
    x = model_input(inputs, "p0.png")
    np.testing.assert_array_equal(registry.explain(m, METHOD, x, np.array([1])), toy_power(m, x, [1]))
    three = registry.explain(m, METHOD, x, np.array([1]), params={"power": 3})
    np.testing.assert_array_equal(three, toy_power(m, x, [1], power=3))
    assert not np.allclose(three, toy_power(m, x, [1]))  # the parameter reaches the function
    assert registry.parameters(METHOD, {f"{METHOD}.power": 4, "power": 3}) == {"power": 4}  # METHOD.KEY wins
    with pytest.raises(cv.InputError, match="takes no parameter 'pwr'; its parameters: power"):
        registry.explain(m, METHOD, x, np.array([1]), params={"pwr": 3})
    with pytest.raises(cv.InputError, match="takes no parameter 'window'"):
        registry.explain(m, "gradcam", x, np.array([1]), params={"window": 3})  # no longer silently dropped


def test_an_entry_cannot_disagree_with_its_function():
    with pytest.raises(cv.InputError, match="declared with default 5 but its function's default is 2.0"):
        registry.Method("bad", "Bad", toy_power, "map", False, params={"power": 5})
    with pytest.raises(cv.InputError, match="takes no parameter 'gamma'; it takes: power"):
        registry.Method("bad", "Bad", toy_power, "map", False, params=("gamma",))

    def no_default(m, x, targets=None, layer=None, *, batch_size=None, power):
        return x

    with pytest.raises(cv.InputError, match="'power' has no default"):
        registry.Method("bad", "Bad", no_default, "map", False)
    with pytest.raises(cv.InputError, match="declared with default"):
        metric_registry.Metric("bad", "Bad", toy_mean, "maps", True, params={"scale": 1.0})


def test_help_lists_the_parameter_with_its_default(toys):
    for command in ("explain", "report"):
        result = invoke(command, "--help")
        assert result.exit_code == 0, result.output
        text = " ".join(result.stdout.split())
        assert METHOD in text and f"{METHOD}: power={POWER}" in text and "--param" in text
        assert "occlusion: window=[16,16]" in text  # the built-in methods' too
    text = " ".join(invoke("evaluate", "--help").stdout.split())
    assert f"{METRIC}: scale={SCALE}" in text and "deletion: baseline=0.0" in text


def test_cli_param_reaches_records_and_arrays_as_in_process(toys, inputs, tmp_path):
    out = tmp_path / "cli"
    result = invoke("explain", inputs / "model.onnx", inputs / "photos", "--method", f"{METHOD},gradcam",
                    "--param", f"{METHOD}.power=3", "--preprocess", "imagenet", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    records = [r for r in json.loads(result.stdout)["results"] if r["method"] == METHOD]
    assert len(records) == 3 and all(r["parameters"] == {"power": 3} and r["title"] == "Toy power" for r in records)
    m = cv.load(inputs / "model.onnx")
    for record in records:
        x = model_input(inputs, Path(record["image"]).name)
        np.testing.assert_allclose(np.load(out / record["outputs"]["array"])[None],
                                   toy_power(m, x, [record["class"]], power=3), rtol=1e-6, atol=1e-7)
    lib = tmp_path / "lib"
    runs.explain_images(inputs / "model.onnx", inputs / "photos", lib, methods=[METHOD, "gradcam"],
                        params={f"{METHOD}.power": 3}, preprocess="imagenet", reporter=runs.SilentReporter())
    for path in sorted(out.glob("*.npy")):
        assert (lib / path.name).read_bytes() == path.read_bytes(), path.name
    for path in sorted(out.glob("*.json")):
        mine, theirs = json.loads((lib / path.name).read_text()), json.loads(path.read_text())
        assert {k: v for k, v in mine.items() if k != "outputs"} == {k: v for k, v in theirs.items() if k != "outputs"}
    # without --param, the default of the signature
    default = tmp_path / "default"
    result = invoke("explain", inputs / "model.onnx", inputs / "photos" / "p0.png", "--method", METHOD,
                    "--preprocess", "imagenet", "--out", default, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["parameters"] == {"power": POWER}


@pytest.mark.parametrize("item, words", [
    (f"{METHOD}.pwr=3", "takes no parameter 'pwr'; its parameters: power"),
    ("gradcam.power=3", "names method 'gradcam', which is not run"),
    (f"{METHOD}=3", "METHOD.KEY=VALUE"),
])
def test_bad_params_are_usage_errors(toys, inputs, tmp_path, item, words):
    result = invoke("explain", inputs / "model.onnx", inputs / "photos", "--method", METHOD, "--param", item,
                    "--preprocess", "imagenet", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert words in line and "--param" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_library_run_refuses_an_unknown_parameter(toys, inputs, tmp_path):
    with pytest.raises(cv.InputError, match="no method takes parameter 'pwr'"):
        runs.explain_images(inputs / "model.onnx", inputs / "photos", tmp_path / "out", methods=[METHOD],
                            params={"pwr": 3}, preprocess="imagenet", reporter=runs.SilentReporter())
    with pytest.raises(cv.InputError, match="which is not run"):
        runs.explain_images(inputs / "model.onnx", inputs / "photos", tmp_path / "out", methods=["gradcam"],
                            params={f"{METHOD}.power": 3}, preprocess="imagenet", reporter=runs.SilentReporter())


def test_report_shows_it_with_its_parameter(toys, inputs, tmp_path):
    result = invoke("report", inputs / "model.onnx", inputs / "photos" / "p0.png", "--method", METHOD, "--param",
                    f"{METHOD}.power=3", "--preprocess", "imagenet", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert "Toy power" in page and "power=3" in page


# ---------------------------------------------------------------------------------------------------------------------
# The metric


def test_library_metric_reads_its_parameter_from_the_signature(toys, inputs):
    meta = metric_registry.get(METRIC)
    assert meta.params == {"scale": SCALE} and METRIC in metric_registry.names()
    m = cv.load(inputs / "model.onnx")
    x = model_input(inputs, "p0.png")
    maps = cv.grad_cam(m, x, 1)
    got = metric_registry.evaluate(METRIC, m, x, maps, np.array([1]), params={"scale": 2})
    np.testing.assert_allclose(got.values, [2 * maps.mean()], rtol=1e-6)
    np.testing.assert_allclose(metric_registry.evaluate(METRIC, m, x, maps, np.array([1])).values,
                               [SCALE * maps.mean()], rtol=1e-6)
    with pytest.raises(cv.InputError, match="takes no parameter 'scal'; its parameters: scale"):
        metric_registry.evaluate(METRIC, m, x, maps, np.array([1]), params={"scal": 2})


def journal(out: Path) -> list:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_cli_metric_param_reaches_the_results_as_in_process(toys, inputs, tmp_path):
    out = tmp_path / "eval"
    result = invoke("evaluate", inputs / "model.onnx", inputs / "photos", "--method", f"gradcam,{METHOD}",
                    "--metric", METRIC, "--metric-param", f"{METRIC}.scale=2", "--preprocess", "imagenet",
                    "--out", out, "--json")
    assert result.exit_code == 0, result.output
    rows = journal(out)
    assert len(rows) == 6 and {r["method"] for r in rows} == {"gradcam", METHOD}
    m = cv.load(inputs / "model.onnx")
    for row in rows:
        assert row["metric"] == METRIC and row["settings"]["parameters"] == {"scale": 2}
        x = model_input(inputs, Path(row["image"]).name)
        maps = registry.explain(m, row["method"], x, np.array([row["class"]]))
        assert row["value"] == pytest.approx(2 * float(maps.mean()), rel=1e-5)
    assert METRIC in (out / "summary.csv").read_text()
    lib = tmp_path / "lib"
    runs.evaluate_images(inputs / "model.onnx", inputs / "photos", lib, methods=["gradcam", METHOD],
                         metrics=[METRIC], metric_params={METRIC: {"scale": 2}}, preprocess="imagenet",
                         reporter=runs.SilentReporter())
    key = ("image", "method", "metric")
    assert sorted(journal(lib), key=lambda r: [r[k] for k in key]) == sorted(rows, key=lambda r: [r[k] for k in key])
    bad = invoke("evaluate", inputs / "model.onnx", inputs / "photos", "--metric", METRIC, "--metric-param",
                 f"{METRIC}.scal=2", "--preprocess", "imagenet", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "its parameters: scale" in bad.stderr


def test_evaluate_runs_the_method_with_its_param(toys, inputs, tmp_path):
    out = tmp_path / "eval"
    result = invoke("evaluate", inputs / "model.onnx", inputs / "photos", "--method", METHOD, "--param",
                    f"{METHOD}.power=3", "--metric", f"{METRIC},sensitivity-max", "--metric-param",
                    "sensitivity-max.samples=2", "--preprocess", "imagenet", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    rows = journal(out)
    assert len(rows) == 6 and all(r["settings"]["method"]["parameters"] == {"power": 3} for r in rows)
    m = cv.load(inputs / "model.onnx")
    for row in rows:
        if row["metric"] == METRIC:
            x = model_input(inputs, Path(row["image"]).name)
            expected = SCALE * float(toy_power(m, x, [row["class"]], power=3).mean())
            assert row["value"] == pytest.approx(expected, rel=1e-5)
    lib = tmp_path / "lib"
    runs.evaluate_images(inputs / "model.onnx", inputs / "photos", lib, methods=[METHOD],
                         metrics=[METRIC, "sensitivity-max"], metric_params={"sensitivity-max": {"samples": 2}},
                         params={f"{METHOD}.power": 3}, preprocess="imagenet", reporter=runs.SilentReporter())
    key = ("image", "method", "metric")
    assert sorted(journal(lib), key=lambda r: [r[k] for k in key]) == sorted(rows, key=lambda r: [r[k] for k in key])
    # without --param the rows say the signature's default, and their values differ
    plain = tmp_path / "plain"
    result = invoke("evaluate", inputs / "model.onnx", inputs / "photos", "--method", METHOD, "--metric", METRIC,
                    "--preprocess", "imagenet", "--out", plain)
    assert result.exit_code == 0, result.output
    assert all(r["settings"]["method"]["parameters"] == {"power": POWER} for r in journal(plain))
    bad = invoke("evaluate", inputs / "model.onnx", inputs / "photos", "--method", METHOD, "--param",
                 "gradcam.power=1", "--preprocess", "imagenet", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "which is not run" in bad.stderr


def test_unregistered_toys_are_gone(inputs, tmp_path):
    """Nothing but the registration knew them: without it, the names are unknown everywhere."""
    assert METHOD not in registry.names() and METRIC not in metric_registry.names()
    assert not hasattr(cv, "toypow")
    result = invoke("explain", inputs / "model.onnx", inputs / "photos", "--method", METHOD, "--out", tmp_path)
    assert result.exit_code == 2 and METHOD in result.stderr
    one_line = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert one_line and METHOD in one_line[0]
