"""Issue 24 point 3: the data loss the third bad-input tour still found, each case failing on the code before its fix.

* ``evaluate --overwrite`` / ``--resume`` never write the journal through a symbolic link (the link is replaced, or
  the run refuses, as for every other output);
* ``explain --out d d --overwrite``: a user's picture whose name looks like an output is still an input, and is never
  replaced;
* ``--resume`` checks the files a record names (there, not empty, a readable PNG / NPY) before it skips a result, and
  redoes the broken ones.

Everything runs on the hand-built 8x8 model of tests/tiny_models.py.
"""
from __future__ import annotations

import json
import shutil

import numpy as np

from tests.tiny_models import unchanged, write_png

from . import invoke, one_line_error


def test_evaluate_overwrite_replaces_a_journal_link_instead_of_writing_through_it(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's file\n")
    (out / "results.jsonl").symlink_to(precious)
    with unchanged(precious):
        result = invoke("evaluate", inputs / "model.onnx", inputs, "--out", out, "--metric", "deletion",
                        "--overwrite", "--quiet")
    assert result.exit_code == 0, result.output
    journal = out / "results.jsonl"
    assert not journal.is_symlink() and journal.is_file()
    assert len(journal.read_text().splitlines()) == 2  # the run's rows, in a file of its own


def test_evaluate_overwrite_never_creates_the_target_of_a_dangling_journal_link(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    (out / "results.jsonl").symlink_to(target)
    result = invoke("evaluate", inputs / "model.onnx", inputs, "--out", out, "--metric", "deletion", "--overwrite",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert not target.exists() and not (out / "results.jsonl").is_symlink()


def test_evaluate_resume_never_appends_through_a_journal_link(inputs, tmp_path):
    out = tmp_path / "out"
    args = ["evaluate", inputs / "model.onnx", inputs, "--out", out, "--metric", "deletion", "--quiet"]
    assert invoke(*args).exit_code == 0
    elsewhere = tmp_path / "journal-copy.jsonl"
    shutil.move(out / "results.jsonl", elsewhere)
    (out / "results.jsonl").symlink_to(elsewhere)
    write_png(inputs / "c.png", seed=3)  # one more image: --resume has a row to append
    with unchanged(elsewhere):
        result = invoke(*args, "--resume")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert str(out / "results.jsonl") in line and "symbolic link" in line


def test_explain_into_its_own_folder_keeps_a_picture_named_like_an_output(tmp_path, inputs):
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(inputs / "a.png", folder / "im00.png")
    write_png(folder / "im00.gradcam.top1.png", seed=9)  # the user's picture, named like im00.png's overlay
    with unchanged(folder / "im00.gradcam.top1.png"):
        result = invoke("explain", inputs / "model.onnx", folder, "--out", folder, "--overwrite")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "im00.gradcam.top1.png would replace an input file" in line
    # this tool's own results (a record beside them) are still left out of the inputs when the run comes back
    (folder / "im00.gradcam.top1.png").unlink()
    args = ["explain", inputs / "model.onnx", folder, "--out", folder, "--json"]
    assert invoke(*args).exit_code == 0
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert [r["image"] for r in json.loads(result.stdout)["results"]] == [str(folder / "im00.png")]


def test_resume_redoes_results_whose_files_are_missing_or_broken(inputs, tmp_path):
    out = tmp_path / "out"
    args = ["explain", inputs / "model.onnx", inputs, "--out", out, "--json"]
    assert invoke(*args).exit_code == 0
    (out / "a.gradcam.top1.png").unlink()
    good = np.load(out / "b.gradcam.top1.npy")
    (out / "b.gradcam.top1.npy").write_bytes((out / "b.gradcam.top1.npy").read_bytes()[:10])
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert sorted(r["image"] for r in doc["results"]) == [str(inputs / "a.png"), str(inputs / "b.png")]
    assert doc["skipped"] == []
    assert "resume: 2 result(s) have missing or broken files and are recomputed" in result.stderr
    assert (out / "a.gradcam.top1.png").stat().st_size > 0
    np.testing.assert_array_equal(np.load(out / "b.gradcam.top1.npy"), good)
    # a truncated picture and an empty array are broken too; a whole result is kept
    (out / "a.gradcam.top1.png").write_bytes((out / "a.gradcam.top1.png").read_bytes()[:-20])
    (out / "b.gradcam.top1.npy").write_bytes(b"")
    doc = json.loads(invoke(*args, "--resume").stdout)
    assert len(doc["results"]) == 2
    doc = json.loads(invoke(*args, "--resume").stdout)
    assert doc["results"] == [] and len(doc["skipped"]) == 2
