"""Issue 13: ``cnnviz evaluate --ray`` on a local Ray cluster (started once for the module, ``num_cpus=2``), against
the single-process ``cnnviz evaluate`` on the same pictures, model and flags.

Model: tests/tiny_models.py's gap_classifier at 16x16 (5 classes; metrics at 16 pixels a step give 17-point curves),
so that the Ray runs' time is Ray's, not the model's.

* the --ray run's results.csv, summary.csv and journal rows equal the single-process run's (same rows; values,
  curves and statistics to 1e-6 relative) on 42 pictures x 3 methods x 2 metrics, and its exit code, --json counts
  and failure record of an unreadable picture are the same;
* --resume after a --ray run (with or without --ray) recomputes nothing, writes no journal line and gives the same
  tables;
* a --ray run stopped after its first batch keeps the rows received (the driver is the journal's only writer), and
  --resume --ray computes exactly the others, giving the single-process run's values;
* a typed error raised in an actor reaches the command as the single-process run's one-line error and exit code;
  a warning an actor meets is given once by the driver; a picture named by a relative path fails with the
  single-process run's message;
* ``cnnviz evaluate`` without --ray never imports Ray.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli import invoke, one_line_error
from tests.conftest import REPO
from tests.tiny_models import gap_classifier, log_of_negative, save, write_png

ray = pytest.importorskip("ray")

N_IMAGES = 42
METHODS = ["gradcam", "saliency", "guided"]  # guided: (N, C, H, W) signed gradients
METRICS = ["deletion", "insertion"]
STEP = ["--metric-param", "deletion.pixels_per_step=16", "--metric-param", "insertion.pixels_per_step=16"]
ROWS = N_IMAGES * len(METHODS) * len(METRICS)
RTOL = 1e-6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The 16x16 model and 42 random pictures of three sizes, plus one unreadable file."""
    folder = tmp_path_factory.mktemp("inputs")
    save(gap_classifier(size=16, seed=3), folder / "model.onnx")
    photos = folder / "photos"
    for i in range(N_IMAGES):
        write_png(photos / f"p{i:02d}.png", size=24 + 8 * (i % 3), seed=i)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    return folder


def evaluate(inputs: Path, out: Path, *extra, images=None):
    return invoke("evaluate", inputs / "model.onnx", *(images or [inputs / "photos"]), "--method", ",".join(METHODS),
                  "--metric", ",".join(METRICS), *STEP, "--preprocess", "imagenet", "--batch-size", "8", "--out", out,
                  "--json", *extra)


@pytest.fixture(scope="module")
def runs(cluster, inputs, tmp_path_factory):
    """The single-process run and the --ray run of the same request: (folder, result) each."""
    base = tmp_path_factory.mktemp("runs")
    single = evaluate(inputs, base / "single")
    on_ray = evaluate(inputs, base / "ray", "--ray")
    return (base / "single", single), (base / "ray", on_ray)


def read_csv(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def journal(out: Path) -> list:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def close(a, b) -> bool:
    return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=RTOL, atol=1e-12))


def assert_same_tables(single: Path, on_ray: Path, text_columns=("image", "method", "metric", "class", "output")):
    """results.csv: the same rows in the same order, values to 1e-6; summary.csv: the same statistics to 1e-6."""
    a, b = read_csv(single / "results.csv"), read_csv(on_ray / "results.csv")
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b):
        assert [ra[k] for k in text_columns] == [rb[k] for k in text_columns]
        assert close(float(ra["value"]), float(rb["value"])), (ra, rb)
    sa, sb = read_csv(single / "summary.csv"), read_csv(on_ray / "summary.csv")
    assert [(r["method"], r["metric"], r["n"]) for r in sa] == [(r["method"], r["metric"], r["n"]) for r in sb]
    numbers = [k for k in sa[0] if k.startswith(("mean", "std", "ci95")) and "clipped" not in k]
    flags = [k for k in sa[0] if "clipped" in k]  # whether the interval was clipped to the metric's range
    for ra, rb in zip(sa, sb):
        assert close([float(ra[k]) for k in numbers], [float(rb[k]) for k in numbers]), (ra, rb)
        assert [ra[k] for k in flags] == [rb[k] for k in flags], (ra, rb)


def assert_same_journals(single: Path, on_ray: Path) -> None:
    """The same (image, method, metric) rows, each with the same settings, class, output and axis, and the same value
    and curve to 1e-6 (the Ray journal's lines come in the order the batches arrive)."""
    def by_key(out):
        rows = {(r["image"], r["method"], r["metric"]): r for r in journal(out)}
        assert len(rows) == len(journal(out))  # each row once
        return rows

    a, b = by_key(single), by_key(on_ray)
    assert a.keys() == b.keys()
    for key, ra in a.items():
        rb = b[key]
        for field in ("settings", "class", "output", "axis", "axis_name"):
            assert ra[field] == rb[field], (key, field)
        assert close(ra["value"], rb["value"]), key
        assert (ra["curve"] is None) == (rb["curve"] is None), key
        assert ra["curve"] is None or close(ra["curve"], rb["curve"]), key


def test_ray_run_equals_the_single_process_run(runs, inputs):
    (single, a), (on_ray, b) = runs
    assert a.exit_code == b.exit_code == 1, (a.output, b.output)  # the unreadable file, in both
    doc_a, doc_b = json.loads(a.stdout), json.loads(b.stdout)
    broken = str((inputs / "photos" / "broken.png").resolve())
    assert doc_a["failed"] == doc_b["failed"] and [f["image"] for f in doc_a["failed"]] == [broken]
    assert f"skipped: {doc_a['failed'][0]['error']}" in b.stderr
    assert doc_a["computed"] == doc_b["computed"] == ROWS and doc_b["kept"] == 0
    assert len(doc_b["results"]) == ROWS and doc_a["ranking"] == doc_b["ranking"]
    assert_same_tables(single, on_ray)
    assert_same_journals(single, on_ray)
    values = {round(float(r["value"]), 6) for r in read_csv(on_ray / "results.csv")}
    assert len(values) > ROWS // 2  # rows that differ: a swapped image, method or metric would show
    # The page and the curves are written from the driver, as without Ray (example maps included).
    for name in ["report.html", *(f"curve.{m}.{k}.png" for m in METHODS for k in METRICS)]:
        assert (on_ray / name).is_file(), name
    page = (on_ray / "report.html").read_text()
    assert all(f"p0{i}.png" in page for i in range(3))


def test_resume_after_a_ray_run_recomputes_nothing(runs, tmp_path, inputs):
    (_, _), (on_ray, _) = runs
    out = tmp_path / "ray"
    shutil.copytree(on_ray, out)
    lines = (out / "results.jsonl").read_bytes()
    before = read_csv(out / "results.csv")
    for extra in (["--ray"], []):
        result = evaluate(inputs, out, "--resume", *extra)
        assert result.exit_code == 1, result.output  # the unreadable file again
        doc = json.loads(result.stdout)
        assert doc["computed"] == 0 and doc["kept"] == ROWS and doc["stale"] == 0, extra
        assert f"resume: {ROWS} row(s) already done with the same settings, skipped" in result.stderr
        assert (out / "results.jsonl").read_bytes() == lines  # not a line appended
        assert read_csv(out / "results.csv") == before


def test_interrupted_ray_run_keeps_its_rows_and_resume_finishes_it(cluster, runs, inputs, tmp_path, monkeypatch):
    from onnx_cnnviz.cli import evaluate as evaluate_module

    (single, _), _ = runs
    images = sorted((inputs / "photos").glob("p*.png"))[:12]  # readable: a finished run exits 0
    out = tmp_path / "eval"
    real, calls = evaluate_module.Journal.append, []

    def stop_at_the_second_batch(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt  # a Ctrl-C on the driver, between two batches
        real(self, rows)

    monkeypatch.setattr(evaluate_module.Journal, "append", stop_at_the_second_batch)
    first = evaluate(inputs, out, "--ray", "--batch-size", "4", images=images)
    assert first.exit_code == 130, first.output
    assert json.loads(first.stdout)["interrupted"] and "run again with --resume" in first.stderr
    kept = journal(out)
    per_picture = len(METHODS) * len(METRICS)
    assert len(kept) == calls[0] and 0 < len(kept) < len(images) * per_picture  # the first batch, whole
    assert len(kept) % per_picture == 0
    monkeypatch.setattr(evaluate_module.Journal, "append", real)

    done = {(r["image"], r["method"], r["metric"]): r["value"] for r in kept}
    result = evaluate(inputs, out, "--ray", "--resume", "--batch-size", "4", images=images)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    total = len(images) * per_picture
    assert doc["computed"] == total - len(kept) and doc["kept"] == len(kept)
    lines = journal(out)
    assert len(lines) == total and lines[:len(kept)] == kept  # appended to, never rewritten
    assert all(done[(r["image"], r["method"], r["metric"])] == r["value"] for r in lines[:len(kept)])
    # The values are the single-process run's on the same pictures.
    reference = {(r["image"], r["method"], r["metric"]): float(r["value"]) for r in read_csv(single / "results.csv")}
    got = read_csv(out / "results.csv")
    assert len(got) == total
    for row in got:
        assert close(float(row["value"]), reference[(row["image"], row["method"], row["metric"])]), row


def test_an_actor_error_is_the_single_process_error(cluster, inputs, tmp_path):
    """A model whose scores are NaN: the error the library raises inside the actor is the command's one-line error,
    with the single-process run's exit code."""
    save(gap_classifier(size=16, mid=log_of_negative), tmp_path / "nan.onnx")
    images = [inputs / "photos" / "p00.png", inputs / "photos" / "p01.png"]
    args = ["evaluate", tmp_path / "nan.onnx", *images, "--metric", "deletion", "--metric-param",
            "deletion.pixels_per_step=16", "--preprocess", "imagenet"]
    single = invoke(*args, "--out", tmp_path / "single")
    on_ray = invoke(*args, "--out", tmp_path / "ray", "--ray")
    assert single.exit_code == on_ray.exit_code != 0
    assert one_line_error(single) == one_line_error(on_ray)
    assert not (tmp_path / "ray" / "results.csv").exists()


def test_an_actor_warning_is_given_once_by_the_driver(cluster, inputs, tmp_path, monkeypatch):
    """The actors' messages are silenced; the warning a model whose output is already a probability gets is handed
    to the driver and given once, as without Ray, over several batches (and actors' calls). Pictures named by
    relative paths: the unreadable one's failure record and message are the single-process run's (the actors read
    the absolute path)."""
    from tests.cli.test_evaluate import probability_model

    save(probability_model(), tmp_path / "probs.onnx")
    monkeypatch.chdir(inputs / "photos")
    args = ["evaluate", tmp_path / "probs.onnx", "p00.png", "p01.png", "broken.png", "p02.png", "--metric",
            "deletion", "--metric-param", "deletion.pixels_per_step=16", "--preprocess", "imagenet", "--batch-size",
            "1", "--json"]
    failed = []
    for extra in ([], ["--ray"]):
        result = invoke(*args, "--out", tmp_path / f"out{len(extra)}", *extra)
        assert result.exit_code == 1, result.output
        said = [line for line in result.stderr.splitlines() if "already a probability" in line]
        assert len(said) == 1 and said[0].startswith("cnnviz: warning:"), (extra, result.stderr)
        failed.append(json.loads(result.stdout)["failed"])
        assert f"skipped: {failed[-1][0]['error']}" in result.stderr
    assert failed[0] == failed[1] and failed[0][0]["error"].startswith("Image file broken.png "), failed
    assert_same_tables(tmp_path / "out0", tmp_path / "out1")


def test_localisation_metrics_read_each_pictures_boxes(cluster, inputs, tmp_path):
    """--boxes: the actors score each picture against its own boxes (keyed by the picture's place in the run, mapped
    to the model input on the driver), as the single-process run does; the rows' settings carry the boxes."""
    images = sorted((inputs / "photos").glob("p*.png"))[:6]
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\n" + "".join(f"{p.name},{i},{2 * i},{12 + i},{16 + i}\n"
                                                     for i, p in enumerate(images)))
    args = ["evaluate", inputs / "model.onnx", *images, "--method", "gradcam,saliency", "--metric",
            "pointing-game,energy-pointing-game", "--boxes", boxes, "--preprocess", "imagenet", "--batch-size", "4"]
    single = invoke(*args, "--out", tmp_path / "single")
    on_ray = invoke(*args, "--out", tmp_path / "ray", "--ray")
    assert single.exit_code == on_ray.exit_code == 0, (single.output, on_ray.output)
    assert_same_tables(tmp_path / "single", tmp_path / "ray")
    assert_same_journals(tmp_path / "single", tmp_path / "ray")
    settings = {r["settings"]["boxes"][0][0] for r in journal(tmp_path / "ray")}
    assert len(settings) > 1  # each picture's own boxes


def test_single_process_evaluate_never_imports_ray(inputs, tmp_path):
    """--ray is the only way in: ``cnnviz evaluate`` without it runs where Ray is not installed."""
    images = [str(inputs / "photos" / "p00.png")]
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from onnx_cnnviz.cli.main import cli\n"
            f"r = CliRunner().invoke(cli, ['evaluate', {str(inputs / 'model.onnx')!r}, *{images!r}, '--metric', "
            f"'deletion', '--metric-param', 'deletion.pixels_per_step=16', '--out', {str(tmp_path / 'out')!r}, "
            "'--preprocess', 'imagenet', '--quiet'])\n"
            "assert r.exit_code == 0, r.output\n"
            "assert not [k for k in sys.modules if k == 'ray' or k.startswith('ray.')]\n"
            "print('no ray')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no ray" in done.stdout, done.stderr


@pytest.mark.parametrize("args", [["--ray", "MODEL", "PIC"], ["--ray", "not an address", "MODEL", "PIC"]])
def test_a_value_for_ray_that_is_no_address_is_a_usage_error(args, tmp_path):
    """``--ray`` takes an optional value: ``cnnviz evaluate --ray model.onnx pic.png`` would read the model's path as
    the address. It is refused before anything runs, naming the fix, not failed on inside Ray."""
    model = save(gap_classifier(), tmp_path / "m.onnx")
    pic = write_png(tmp_path / "a.png")
    argv = [{"MODEL": model, "PIC": pic}.get(a, a) for a in args]
    result = invoke("evaluate", *argv, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "is not a Ray address" in result.output
    assert not (tmp_path / "o").exists()
    for ok in ["auto", "local", "10.0.0.5:6379", "ray://head:10001", "localhost:6379"]:
        from onnx_cnnviz.cli.common import _RAY_ADDRESS

        assert _RAY_ADDRESS.match(ok), ok
