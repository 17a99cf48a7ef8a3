"""Issue 13: ``cnnviz explain --ray`` and :func:`onnx_cnnviz.dataset.explain` on a local Ray cluster (started once
for the module, ``num_cpus=2``), on a 112 px ResNet-18 export with random weights.

* the Ray run's maps, pictures, JSON records and exit code equal the single-process run's on 42 pictures (plus one
  unreadable file) and three methods, and its records table holds each result once, with the records' values;
* an actor killed mid-run (SIGKILL of its process) is restarted by Ray and its batch retried: the run completes and
  every record is written once;
* a run stopped after two batches and resumed loses nothing and recomputes nothing finished; a run with changed
  settings recomputes;
* an unreadable file is a ``failed`` row, not a crashed job;
* pictures given as URIs (``file://``, read through pyarrow's filesystems as ``s3://`` would be) give the maps of
  the same pictures read locally;
* ``import onnx_cnnviz`` and a single-process ``cnnviz explain`` never import Ray.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.cli import invoke
from tests.conftest import REPO
from tests.tiny_models import gap_classifier, save, write_png

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

from onnx_cnnviz import dataset, runs  # noqa: E402
from onnx_cnnviz.dataset import records  # noqa: E402

N_IMAGES = 42
N_FEW = 20
METHODS = ["gradcam", "saliency", "guided"]


@pytest.fixture(scope="module")
def model(torchvision_onnx):
    return torchvision_onnx("resnet18")[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """42 random pictures of a few sizes (resized to 112 by the preprocessing) and one unreadable file."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(N_IMAGES):
        write_png(folder / f"p{i:02d}.png", size=40 + 8 * (i % 3), seed=i)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    return folder


@pytest.fixture(scope="module")
def few_photos(photos, tmp_path_factory):
    """The first :data:`N_FEW` pictures and the unreadable file: the fault and resume runs, several each."""
    folder = tmp_path_factory.mktemp("few")
    for path in [*sorted(photos.glob("p*.png"))[:N_FEW], photos / "broken.png"]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def result_files(out: Path) -> dict:
    """stem -> folder of every JSON record in ``out``."""
    return {p.name[:-len(".json")]: p for p in sorted(out.glob("*.json"))}


def table(out: Path):
    return pd.read_parquet(out / records.TABLE)


def assert_same_results(single: Path, on_ray: Path) -> None:
    """Every result of ``single`` is in ``on_ray`` with the same record (but its paths), the same map (to float32
    rounding: the actors run onnxruntime with one thread) and the same picture (to one grey level)."""
    a, b = result_files(single), result_files(on_ray)
    assert a.keys() == b.keys() and a
    worst = 0.0
    for stem in a:
        ra, rb = (json.loads(p.read_text()) for p in (a[stem], b[stem]))
        assert Path(ra.pop("outputs")["array"]).name == Path(rb.pop("outputs")["array"]).name
        for key in ("score", "probability"):
            assert np.isclose(ra.pop(key), rb.pop(key), rtol=1e-5, atol=1e-7), (stem, key)
        assert ra == rb, stem
        ma, mb = np.load(single / f"{stem}.npy"), np.load(on_ray / f"{stem}.npy")
        assert ma.shape == mb.shape
        worst = max(worst, float(np.abs(ma - mb).max() / max(np.abs(ma).max(), 1e-30)))
        pa, pb = (cv2.imread(str(d / f"{stem}.png")).astype(int) for d in (single, on_ray))
        assert np.abs(pa - pb).max() <= 1, stem
    assert worst < 1e-5, worst


def test_cli_ray_run_equals_single_process_run(cluster, model, photos, tmp_path):
    args = ["explain", model, photos, "-m", ",".join(METHODS), "--preprocess", "imagenet", "--batch-size", "8",
            "--json"]
    single = invoke(*args, "--out", tmp_path / "single")
    on_ray = invoke(*args, "--out", tmp_path / "ray", "--ray")
    assert single.exit_code == on_ray.exit_code == 1  # the unreadable file, as in the single-process run
    doc_a, doc_b = json.loads(single.stdout), json.loads(on_ray.stdout)
    assert len(doc_a["results"]) == len(doc_b["results"]) == N_IMAGES * len(METHODS)
    assert [f["image"] for f in doc_a["failed"]] == [f["image"] for f in doc_b["failed"]] == \
        [str((photos / "broken.png").resolve())]
    assert {Path(r["json"]).name for r in doc_a["results"]} == {Path(r["json"]).name for r in doc_b["results"]}
    assert len(doc_b["files"]) == N_IMAGES
    assert_same_results(tmp_path / "single", tmp_path / "ray")
    # the library's in-process run (onnx_cnnviz.runs) writes the command's maps and records; Ray's equal both
    lib = tmp_path / "lib"
    doc_c = runs.explain_images(model, photos, lib, methods=METHODS, preprocess="imagenet", batch_size=8,
                                reporter=runs.SilentReporter())
    assert [f["image"] for f in doc_c["failed"]] == [f["image"] for f in doc_a["failed"]]
    for stem, record in result_files(tmp_path / "single").items():
        assert (lib / f"{stem}.npy").read_bytes() == (tmp_path / "single" / f"{stem}.npy").read_bytes(), stem
        mine, theirs = json.loads((lib / f"{stem}.json").read_text()), json.loads(record.read_text())
        assert {k: v for k, v in mine.items() if k != "outputs"} == {k: v for k, v in theirs.items() if k != "outputs"}
    assert_same_results(lib, tmp_path / "ray")

    rows = table(tmp_path / "ray")
    ok = rows[rows.status == "ok"]
    assert len(ok) == N_IMAGES * len(METHODS) and ok.json.is_unique
    failed = rows[rows.status == "failed"]
    assert list(failed.image) == [str((photos / "broken.png").resolve())]
    assert list(failed.error) == [doc_a["failed"][0]["error"]]  # the single-process run's message
    for row in ok.to_dict("records"):
        record = json.loads(Path(row["json"]).read_text())
        assert (row["image"], row["method"], row["class"], row["score"]) == \
            (record["image"], record["method"], record["class"], record["score"])
        layer = row["layer"] if isinstance(row["layer"], str) else None  # pandas reads a null string as NaN
        assert layer == record["parameters"].get("layer") and list(row["top_k"]) == [record["class"]]
        assert row["rank"] == "top1" and Path(row["array"]).exists()


def stable(folder: Path, seconds: float = 1.0, limit: float = 30.0) -> dict:
    """mtime_ns of every file in ``folder`` once nothing has changed there for ``seconds`` (the actors of a stopped
    run may finish a batch after the driver returned)."""
    def snapshot():
        return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    last, start = snapshot(), time.monotonic()
    while time.monotonic() - start < limit:
        time.sleep(seconds)
        now = snapshot()
        if now == last:
            return now
        last = now
    return last


def test_killed_actor_is_restarted_and_every_record_written_once(cluster, model, few_photos, tmp_path):
    killed = []

    def kill_one_actor(rows):
        if not killed:
            host, pid = rows[0]["worker"].rsplit(":", 1)
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))

    summary = dataset.explain(model, [few_photos], tmp_path, methods=["gradcam", "saliency"], preprocess="imagenet",
                              batch_size=4, actors=2, on_batch=kill_one_actor)
    assert killed and not summary.interrupted
    assert summary.written == N_FEW * 2 and summary.failed == 1
    rows = table(tmp_path)
    ok = rows[rows.status == "ok"]
    assert len(ok) == N_FEW * 2 and ok.json.is_unique
    assert len(result_files(tmp_path)) == N_FEW * 2
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / records.TABLE).glob(".*.tmp"))
    survivors = {int(w.rsplit(":", 1)[1]) for w in ok.worker}
    assert survivors - set(killed)  # rows came from live (restarted or other) actors after the kill


def test_interrupted_run_resumes_without_loss_or_recomputation(cluster, model, few_photos, tmp_path):
    seen = []

    def stop_after_two(rows):
        seen.append(len(rows))
        if len(seen) == 2:
            raise KeyboardInterrupt

    kwargs = {"methods": ["gradcam", "saliency"], "preprocess": "imagenet", "batch_size": 4, "actors": 2}
    first = dataset.explain(model, [few_photos], tmp_path, on_batch=stop_after_two, **kwargs)
    assert first.interrupted and 0 < first.written < N_FEW * 2
    before = stable(tmp_path)
    finished = {p for p in before if p.suffix == ".json"}
    assert finished

    second = dataset.explain(model, [few_photos], tmp_path, resume=True, **kwargs)
    assert not second.interrupted and second.written == N_FEW * 2 - len(finished)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*") if p.is_file()}
    for path in finished:  # nothing finished was written again: neither its record nor its map
        assert after[path] == before[path], path
        assert after[path.with_suffix(".npy")] == before[path.with_suffix(".npy")], path
    rows = table(tmp_path)
    ok = rows[rows.status == "ok"]
    assert len(ok) == N_FEW * 2 and ok.json.is_unique
    assert (rows.status == "failed").sum() == 1  # the unreadable file, read again and failed again: one row

    # Changed settings (the overlay's opacity) are recorded: every result is made again, each still once.
    third = dataset.explain(model, [few_photos], tmp_path, resume=True, alpha=0.3, **kwargs)
    assert third.written == N_FEW * 2 and third.skipped == 0
    rows = table(tmp_path)
    assert (rows.status == "ok").sum() == N_FEW * 2 and rows[rows.status == "ok"].json.is_unique


def test_metrics_and_uris(cluster, model, photos, tmp_path):
    """Metric values land in the table (equal to the metric run on the written map), and ``file://`` URIs give
    the maps of the local run."""
    from onnx_cnnviz import load
    from onnx_cnnviz.image import preprocess
    from onnx_cnnviz.metrics import deletion

    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("p00.png", "p01.png", "p05.png"):
        (subset / name).write_bytes((photos / name).read_bytes())
    local = dataset.explain(model, [subset], tmp_path / "local", preprocess="imagenet", metrics=["deletion"],
                            actors=1)
    remote = dataset.explain(model, [f"file://{subset.resolve()}"], tmp_path / "uri", preprocess="imagenet",
                             actors=1)
    assert local.written == remote.written == 3
    for name in ("p00", "p01", "p05"):
        a = np.load(tmp_path / "local" / f"{name}.gradcam.top1.npy")
        b = np.load(tmp_path / "uri" / f"{name}.gradcam.top1.npy")
        assert np.array_equal(a, b)
    uri_rows = table(tmp_path / "uri")
    assert all(image.startswith("file://") for image in uri_rows.image)

    rows = table(tmp_path / "local").sort_values("image")
    m = load(model, device="cpu")
    x = preprocess(sorted(subset.glob("*.png")), preset="imagenet", size=(112, 112))
    maps = np.stack([np.load(p) for p in rows.array])
    expected = deletion(m, x, maps, rows["class"].to_numpy()).values
    got = np.array([dict(v)["deletion"] for v in rows.metrics])
    assert np.allclose(got, expected, rtol=1e-6, atol=1e-9)
    # Asking for another metric is a changed setting: resumed, every result is made again with it.
    again = dataset.explain(model, [subset], tmp_path / "local", preprocess="imagenet",
                            metrics=["deletion", "insertion"], actors=1, resume=True)
    assert again.written == 3
    assert all(set(dict(v)) == {"deletion", "insertion"} for v in table(tmp_path / "local").metrics)


def test_core_never_imports_ray(tmp_path):
    save(gap_classifier(size=16), tmp_path / "m.onnx")
    write_png(tmp_path / "a.png", size=16)
    code = ("import sys\n"
            "import onnx_cnnviz\n"
            "from click.testing import CliRunner\n"
            "from onnx_cnnviz.cli.main import cli\n"
            f"r = CliRunner().invoke(cli, ['explain', {str(tmp_path / 'm.onnx')!r}, {str(tmp_path / 'a.png')!r}, "
            f"'--out', {str(tmp_path / 'out')!r}, '--preprocess', 'none', '--quiet'])\n"
            "assert r.exit_code == 0, r.output\n"
            "assert not [k for k in sys.modules if k == 'ray' or k.startswith('ray.')]\n"
            "print('no ray')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no ray" in done.stdout, done.stderr


def test_missing_ray_is_a_typed_error(monkeypatch):
    from onnx_cnnviz.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"onnx-cnnviz\[ray\]"):
        dataset.require_ray()


def test_parts_are_named_by_their_results(tmp_path):
    """A retried batch rewrites its part instead of adding one; rows to be made again are dropped."""
    row = records.failed_row("/a.png", "a", "unreadable")
    ok = {**records.failed_row("/b.png", "b", None), "status": "ok", "json": "/o/b.gradcam.top1.json",
          "settings": "s1", "method": "gradcam", "rank": "top1"}
    first = records.write_part(tmp_path, [row, ok])
    again = records.write_part(tmp_path, [ok, row])
    assert first == again and records.parts(tmp_path) == [first]
    assert records.drop_rows(tmp_path, {"/o/b.gradcam.top1.json"}, set()) == 1
    assert list(records.read(tmp_path).to_pydict()["image"]) == ["/a.png"]
    assert records.drop_rows(tmp_path, set(), {"/a.png"}) == 1 and records.parts(tmp_path) == []


def test_an_actor_error_reaches_the_driver_typed(cluster, photos, tmp_path):
    """What the library raises inside an actor (here: a model the actors cannot load) is raised on the driver as
    the same typed error with its one-line cause, not as Ray's wrapper."""
    from onnx_cnnviz.dataset.pipeline import run_work
    from onnx_cnnviz.errors import ModelLoadError
    from onnx_cnnviz.image import PRESETS

    with pytest.raises(ModelLoadError, match="does not exist"):
        run_work(tmp_path / "gone.onnx", {"device": "cpu"}, [{"path": str(photos / "p00.png")}], PRESETS["none"],
                 None, progress=False)
