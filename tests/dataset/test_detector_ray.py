"""``cnnviz explain --ray`` on a detector gives the records, maps and per-image detection files of the single-process
run and one table row per detection (yolov8n, random weights with spread class scores:
tests/runs/detector_models.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli import invoke
from tests.tiny_models import write_png

pytest.importorskip("torch")
pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

from onnx_cnnviz.dataset import records  # noqa: E402


@pytest.fixture(scope="module")
def yolo():
    from tests.runs.detector_models import yolo_path

    return yolo_path(gain=3e6)


def test_ray_detector_run_equals_single_process_run(cluster, yolo, tmp_path):
    photos = tmp_path / "in"
    for i in range(2):
        write_png(photos / f"im{i}.png", size=320, seed=10 + i)
    (photos / "copy.png").write_bytes((photos / "im0.png").read_bytes())
    args = ["--json", "explain", yolo, photos, "--preprocess", "none", "--conf", "0.6", "--max-det", "2",
            "-m", "saliency", "--device", "cpu"]
    single = invoke(*args, "--out", tmp_path / "single")
    on_ray = invoke(*args, "--out", tmp_path / "ray", "--ray")
    assert single.exit_code == on_ray.exit_code == 0, on_ray.output
    a, b = json.loads(single.stdout), json.loads(on_ray.stdout)
    assert a["task"] == b["task"] == "detector"
    names = sorted(Path(r["json"]).name for r in a["results"])
    assert names == sorted(Path(r["json"]).name for r in b["results"]) and len(names) == 6
    for name in names + ["im0.detections.json", "im1.detections.json", "copy.detections.json"]:
        ra, rb = (json.loads((tmp_path / side / name).read_text()) for side in ("single", "ray"))
        text_a = json.dumps(ra).replace(str((tmp_path / "single").resolve()), "OUT")
        text_b = json.dumps(rb).replace(str((tmp_path / "ray").resolve()), "OUT")
        assert json.loads(text_a).keys() == json.loads(text_b).keys()
        if name.endswith(".detections.json"):
            assert text_a == text_b, name
        else:
            for key in ("class", "box", "number", "task", "parameters", "targets"):
                assert ra[key] == rb[key], (name, key)
            assert ra["score"] == pytest.approx(rb["score"], rel=1e-5)
            ma, mb = (np.load(tmp_path / side / name.replace(".json", ".npy")) for side in ("single", "ray"))
            np.testing.assert_allclose(ma, mb, rtol=1e-4, atol=1e-5 * np.abs(ma).max())
    rows = pd.read_parquet(tmp_path / "ray" / records.TABLE)
    assert sorted(rows["rank"]) == ["det01", "det01", "det01", "det02", "det02", "det02"]
    for row in rows.to_dict("records"):
        record = json.loads(Path(row["json"]).read_text())
        assert (row["class"], row["score"]) == (record["class"], record["score"])
    # the library's Ray run (onnx_cnnviz.dataset.explain) writes the same detections' records and maps
    from onnx_cnnviz import dataset

    lib = tmp_path / "lib"
    summary = dataset.explain(yolo, photos, lib, methods=["saliency"], preprocess="none", conf=0.6, max_det=2,
                              device="cpu")
    assert summary.written == 6 and summary.failed == 0
    for name in names:
        mine, single_run = (json.loads((folder / name).read_text()) for folder in (lib, tmp_path / "single"))
        assert mine["box"] == single_run["box"] and mine["class"] == single_run["class"]
        got, want = (np.load(folder / name.replace(".json", ".npy")) for folder in (lib, tmp_path / "single"))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
