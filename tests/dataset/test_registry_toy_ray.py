"""Issue 21, point 3, on Ray: the toy method and metric of tests/cli/registry_toys.py, registered on the driver only,
run in the actors (which register the driver's entries) as in process: ``cnnviz explain --ray --param
toypow.power=3`` writes the single-process run's records and arrays, ``onnx_cnnviz.dataset.explain`` the default of
the function's signature, and ``cnnviz evaluate --ray --metric toy-mean --metric-param toy-mean.scale=2`` the
single-process journal rows (local Ray cluster, started once for the module)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli import invoke
from tests.cli.registry_toys import METHOD, METRIC, POWER, registered
from tests.tiny_models import gap_classifier, save, write_png

ray = pytest.importorskip("ray")
pytest.importorskip("pandas")

from onnx_cnnviz import dataset  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 16x16 classifier and six pictures of two sizes."""
    folder = tmp_path_factory.mktemp("inputs")
    save(gap_classifier(size=16, seed=3), folder / "model.onnx")
    for i in range(6):
        write_png(folder / "photos" / f"p{i}.png", size=20 + 4 * (i % 2), seed=i)
    return folder


@pytest.fixture
def toys():
    # The toy functions travel to the actors by value (Ray's own cloudpickle): the workers need not import this test
    # package, as a user's script registering a method is not importable from the actors either.
    from ray import cloudpickle

    from tests.cli import registry_toys

    cloudpickle.register_pickle_by_value(registry_toys)
    try:
        with registered():
            yield
    finally:
        cloudpickle.unregister_pickle_by_value(registry_toys)


def records(out: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def test_explain_on_ray_runs_the_toy_method_with_its_parameter(cluster, toys, inputs, tmp_path):
    args = ["explain", inputs / "model.onnx", inputs / "photos", "--method", f"{METHOD},gradcam", "--param",
            f"{METHOD}.power=3", "--preprocess", "imagenet", "--json"]
    single = invoke(*args, "--out", tmp_path / "single")
    on_ray = invoke(*args, "--out", tmp_path / "ray", "--ray")
    assert single.exit_code == on_ray.exit_code == 0, (single.output, on_ray.output)
    a, b = records(tmp_path / "single"), records(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == 12
    for name, ra in a.items():
        rb = b[name]
        assert Path(ra.pop("outputs")["array"]).name == Path(rb.pop("outputs")["array"]).name
        for key in ("score", "probability"):
            assert np.isclose(ra.pop(key), rb.pop(key), rtol=1e-5, atol=1e-7), (name, key)
        assert ra == rb, name
        if ra["method"] == METHOD:
            assert ra["parameters"] == {"power": 3}
        stem = name[:-len(".json")]
        np.testing.assert_allclose(np.load(tmp_path / "ray" / f"{stem}.npy"),
                                   np.load(tmp_path / "single" / f"{stem}.npy"), rtol=1e-5, atol=1e-6)
    summary = dataset.explain(inputs / "model.onnx", [inputs / "photos"], tmp_path / "lib", methods=[METHOD],
                              preprocess="imagenet")
    assert summary.written == 6 and summary.failed == 0
    assert {r["parameters"]["power"] for r in records(tmp_path / "lib").values()} == {POWER}


def test_evaluate_on_ray_runs_the_toy_metric_with_its_parameter(cluster, toys, inputs, tmp_path):
    args = ["evaluate", inputs / "model.onnx", inputs / "photos", "--method", f"gradcam,{METHOD}", "--metric",
            METRIC, "--metric-param", f"{METRIC}.scale=2", "--preprocess", "imagenet", "--json"]
    single = invoke(*args, "--out", tmp_path / "single")
    on_ray = invoke(*args, "--out", tmp_path / "ray", "--ray")
    assert single.exit_code == on_ray.exit_code == 0, (single.output, on_ray.output)

    def rows(out):
        lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        return {(r["image"], r["method"], r["metric"]): r for r in lines}

    a, b = rows(tmp_path / "single"), rows(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == 12
    for key, ra in a.items():
        assert ra["settings"] == b[key]["settings"] and ra["settings"]["parameters"] == {"scale": 2}
        assert b[key]["value"] == pytest.approx(ra["value"], rel=1e-6)
