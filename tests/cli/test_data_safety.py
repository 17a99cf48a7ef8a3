"""Issue 15: the command line never loses data and says what it did.

* output names are unique per input path, and the JSON summaries map each input to its files (point 2);
* no command writes over one of its inputs (model, images, labels), whatever the flags, also through symbolic and
  hard links (point 3);
* only regular files are read as images, labels and models: a FIFO (it would hang) or a device (``/dev/zero``
  would fill the memory) gets a one-line error, and labels files are capped (point 7);
* after Ctrl-C the summary counts exactly the results on disk; --resume removes the temporary files of a killed
  run and recomputes results made with other settings (point 8);
* a full disk suggests --resume only to commands that have it (point 9);
* a folder or FIFO where a file goes, a stride larger than the image, .jfif/.gif pictures in folders and -r on every
  command that takes folders (point 11); --max-pixels and --max-nodes on the commands that read images and models
  (point 6).

Everything runs on the hand-built 8x8 model of tests/tiny_models.py: each case takes well under a second.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnx_cnnviz import report
from onnx_cnnviz.cli.common import image_keys
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.image import MAX_PIXELS
from onnx_cnnviz.image.reading import current_pixel_limit
from tests.tiny_models import checksums, unchanged, write_png

from . import invoke, one_line_error


@contextlib.contextmanager
def deadline(seconds: int = 20):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: something blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------------------------
# 2. output names


def test_image_keys_are_unique_per_path(tmp_path):
    names = ["a/cat.png", "a__cat.png", "b/cat.png", "b/dog.png", "dog.jpg", "c/bird.png", "c/bird.jpg", "Fish.png",
             "d/fish.png", "solo.png"]
    for name in names:
        write_png(tmp_path / name)
    paths = [tmp_path / n for n in names]
    keys = image_keys(paths)
    assert keys[2:] == ["b__cat", "b__dog", "dog", "c__bird_png", "c__bird_jpg", "Fish", "d__fish", "solo"]
    # a/cat.png (its stem shared with b/cat.png) and a__cat.png both read a__cat: a hash of each full path tells
    # them apart
    assert re.fullmatch(r"a__cat-[0-9a-f]{8}", keys[0]) and re.fullmatch(r"a__cat-[0-9a-f]{8}", keys[1])
    assert keys[0] != keys[1]
    assert len({k.casefold() for k in keys}) == len(keys)  # also on file systems that ignore case
    assert image_keys(paths) == keys  # the same inputs give the same names (what --resume relies on)
    assert image_keys([tmp_path / "solo.png", tmp_path / "b/dog.png"]) == ["solo", "dog"]  # plain stems otherwise
    long = tmp_path / ("x" * 200 + ".png")
    write_png(long)
    (key,) = image_keys([long])
    assert len(key) == 120 and re.search(r"-[0-9a-f]{8}$", key)


@pytest.fixture
def colliding(inputs):
    """Pictures whose old output stems were the same: a/cat.png (a__cat, as b/cat.png shares its stem) and
    a__cat.png."""
    write_png(inputs / "pics" / "a" / "cat.png", seed=3)
    write_png(inputs / "pics" / "a__cat.png", seed=4)
    write_png(inputs / "pics" / "b" / "cat.png", seed=5)
    return inputs / "pics"


COLLIDING = ["a/cat.png", "a__cat.png", "b/cat.png"]


def test_explain_colliding_names_never_share_files(inputs, colliding, tmp_path):
    out = tmp_path / "out"
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", colliding, "-r", "--out", out, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert len(doc["results"]) == 3
        assert sorted(doc["files"]) == sorted(str(colliding / n) for n in COLLIDING)
        assert all(len(files) == 3 for files in doc["files"].values())
        written = [f for files in doc["files"].values() for f in files]
        assert len(set(written)) == 9 and sorted(Path(f).name for f in written) == listing(out)
        picture = Path(doc["files"][str(colliding / "a__cat.png")][0]).name
        assert re.fullmatch(r"a__cat-[0-9a-f]{8}\.gradcam\.top1\.png", picture)
        for path, files in doc["files"].items():
            record = json.loads(Path(files[-1]).read_text())
            assert record["image"] == str(Path(path).resolve())
        before = checksums(out)
        # --overwrite replaces each image's own results, never the other's
        result = invoke("explain", inputs / "model.onnx", colliding, "-r", "--out", out, "--overwrite", "--json")
        assert result.exit_code == 0, result.output
        assert sorted(checksums(out)) == sorted(before) and len(listing(out)) == 9
        for path, files in json.loads(result.stdout)["files"].items():
            assert json.loads(Path(files[-1]).read_text())["image"] == str(Path(path).resolve())


@pytest.mark.parametrize("command", ["activations", "localize"])
def test_per_image_commands_map_each_input_to_its_files(inputs, colliding, tmp_path, command):
    out = tmp_path / "out"
    with unchanged(inputs):
        result = invoke(command, inputs / "model.onnx", colliding, "-r", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert sorted(files) == sorted(str(colliding / n) for n in COLLIDING)
    written = [f for fs in files.values() for f in fs]
    assert len(written) == 6 == len(set(written)) and sorted(Path(f).name for f in written) == listing(out)


# ---------------------------------------------------------------------------------------------------------------------
# 3. inputs are never written


def _command_writing_over(inputs: Path, tmp_path: Path, command: str):
    """(args, the input the output lands on) for ``command`` run with --overwrite onto one of its own inputs."""
    model, labels, a = inputs / "model.onnx", inputs / "labels.txt", inputs / "a.png"
    if command == "report":
        return ["report", model, inputs, "--out", inputs, "--name", "a.png"], a
    if command == "invert":
        return ["invert", model, a, "--out", a], a
    if command == "patches":
        return ["patches", model, inputs, "--out", inputs / "b.png"], inputs / "b.png"
    if command == "embed":
        mosaic = inputs / "mosaic.png"
        write_png(mosaic, seed=5)
        return ["embed", model, inputs, "--out", inputs], mosaic
    if command == "export-graph":
        return ["export-graph", model, "--out", model], model
    if command == "filters":  # filters reads no labels (it takes no --labels): its model is the input
        return ["filters", model, "--out", model], model
    if command == "dream":
        return ["dream", model, "--target", "1", "--out", model], model
    if command == "activations":  # an output name hard-linked to an input (activations reads no labels)
        os.link(model, inputs / "a.activations.npy")
        return ["activations", model, a, "--out", inputs], model
    if command == "localize":  # an output name that is a symbolic link to the model
        (inputs / "a.boxes.json").symlink_to(model)
        return ["localize", model, a, "--out", inputs], model
    if command == "explain":
        os.link(model, inputs / "a.gradcam.top1.npy")
        return ["explain", model, a, "--out", inputs], model
    if command == "convert":
        return ["convert", "torch", "resnet18", "--labels", labels, "--out", labels], labels
    raise AssertionError(command)


@pytest.mark.parametrize("command", ["report", "invert", "patches", "embed", "export-graph", "filters", "dream",
                                     "activations", "localize", "explain", "convert"])
def test_no_command_writes_over_its_inputs(inputs, tmp_path, command):
    args, victim = _command_writing_over(inputs, tmp_path, command)
    with unchanged(inputs):
        for extra in (["--overwrite"], ["--overwrite", "--resume"] if command == "explain" else []):
            result = invoke(*args, *extra)
            assert result.exit_code == 1, result.output
            line = one_line_error(result)
            assert "would replace an input file" in line and "input files are never written" in line, line
    assert not [p for p in inputs.rglob(".*.tmp")]


def test_links_to_inputs_are_named_in_the_error(inputs):
    link = inputs / "a.gradcam.top1.png"
    link.symlink_to(inputs / "b.png")
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", inputs / "b.png", "--out", inputs,
                        "--overwrite")
    assert result.exit_code == 1
    assert one_line_error(result) == (f"cnnviz: error: the output {link} would replace an input file (the same file "
                                      f"as the input {inputs / 'b.png'}); choose another --out (input files are "
                                      "never written).")


# ---------------------------------------------------------------------------------------------------------------------
# 7 and 11. only regular files are read; a folder or FIFO where a file goes


def test_labels_that_are_not_a_regular_file(inputs, tmp_path):
    run = ["explain", inputs / "model.onnx", inputs / "a.png", "--out", tmp_path / "out", "--labels"]
    with unchanged(inputs), deadline():
        result = invoke(*run, "/dev/zero")
        assert result.exit_code == 1
        assert one_line_error(result) == ("cnnviz: error: labels file '/dev/zero' is a character device, not a "
                                          "regular file; give the path of a file.")
        result = invoke(*run, fifo(tmp_path / "labels.fifo"))
        assert result.exit_code == 1 and "is a FIFO (named pipe), not a regular file" in one_line_error(result)
        result = invoke(*run, tmp_path)  # a folder: click's own check (usage error)
        assert result.exit_code == 2 and "is a directory" in result.stderr
    assert not (tmp_path / "out").exists()


def test_read_labels_limits(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:
        handle.truncate(report.MAX_LABELS_BYTES + 1)  # sparse: nothing is really written
    with pytest.raises(InputError, match=r"16,777,217 bytes, more than the 16,777,216 allowed"):
        report.read_labels(big)
    many = tmp_path / "many.txt"
    many.write_text("x\n" * (report.MAX_LABELS + 1))
    with pytest.raises(InputError, match=r"more than 1,000,000 lines"):
        report.read_labels(many)
    ok = tmp_path / "ok.txt"
    ok.write_text("cat\ndog\n\n")
    assert report.read_labels(ok) == ["cat", "dog"]
    with deadline(), pytest.raises(InputError, match="FIFO"):
        report.read_labels(fifo(tmp_path / "f"))
    with pytest.raises(InputError, match="is a folder, not a regular file"):
        report.read_labels(tmp_path)


def test_model_that_is_not_a_regular_file(inputs, tmp_path):
    with unchanged(inputs), deadline():
        for command in (["inspect"], ["export-graph"]):
            extra = ["--out", tmp_path / "g.onnx"] if command == ["export-graph"] else []
            result = invoke(*command, fifo(tmp_path / f"{command[0]}.onnx"), *extra)
            assert result.exit_code == 1
            assert "model file" in one_line_error(result) and "is a FIFO (named pipe)" in result.stderr
        result = invoke("explain", "/dev/zero", inputs / "a.png", "--out", tmp_path / "out")
        assert result.exit_code == 1 and "is a character device, not a regular file" in one_line_error(result)
        result = invoke("inspect", tmp_path)
        assert result.exit_code == 1 and "is a folder" in one_line_error(result)
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.onnx").exists()


def test_images_that_are_not_regular_files(inputs, tmp_path):
    pipe = fifo(inputs / "pipe.png")
    with unchanged(inputs), deadline():
        # named explicitly: read, refused, listed as failed; the other image is explained
        result = invoke("explain", inputs / "model.onnx", pipe, "/dev/zero", inputs / "a.png", "--out",
                        tmp_path / "out", "--json")
        assert result.exit_code == 1
        doc = json.loads(result.stdout)
        assert [(f["image"], f["error"]) for f in doc["failed"]] == [
            (str(pipe), f"Image file '{pipe}' is a FIFO (named pipe), not a regular file; give the path of a file."),
            ("/dev/zero", "Image file '/dev/zero' is a character device, not a regular file; give the path of a "
                          "file.")]
        assert [Path(r["image"]).name for r in doc["results"]] == ["a.png"]
        # in a folder: only regular files are pictures
        result = invoke("explain", inputs / "model.onnx", inputs, "--out", tmp_path / "out2", "--json")
        assert result.exit_code == 0
        assert sorted(json.loads(result.stdout)["files"]) == [str(inputs / "a.png"), str(inputs / "b.png")]


@pytest.mark.parametrize("command", ["filters", "export-graph", "invert"])
def test_output_file_that_is_a_fifo_or_a_folder(inputs, tmp_path, command):
    model = inputs / "model.onnx"
    args = {"filters": ["filters", model], "export-graph": ["export-graph", model],
            "invert": ["invert", model, inputs / "a.png", "--steps", "1"]}[command]
    pipe = fifo(tmp_path / "out.png")
    with unchanged(inputs), deadline():
        result = invoke(*args, "--out", pipe, "--overwrite")
        assert result.exit_code == 1
        assert one_line_error(result) == (f"cnnviz: error: the output '{pipe}' is a FIFO (named pipe), not a regular "
                                          "file; give the path of a file.")
        result = invoke(*args, "--out", tmp_path, "--overwrite")
        assert result.exit_code == 2 and "is a directory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.png"]


def test_out_folder_that_is_a_file(inputs, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("mine")
    with unchanged(inputs, blocker):
        for command in ("explain", "activations", "localize", "embed", "report"):
            result = invoke(command, inputs / "model.onnx", inputs, "--out", blocker)
            assert result.exit_code == 2, (command, result.output)  # click's check of a folder option
            assert f"Invalid value for '--out': Directory '{blocker}' is a file." in result.stderr
    from onnx_cnnviz.cli.common import out_folder

    with pytest.raises(InputError, match="exists and is not a folder"):  # the same check where click is not used
        out_folder(blocker)


def test_a_result_name_taken_by_a_folder(inputs, tmp_path):
    out = tmp_path / "out"
    (out / "a.gradcam.top1.json").mkdir(parents=True)
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--out", out, "--overwrite")
    assert result.exit_code == 1 and "is a folder, not a regular file" in one_line_error(result)
    assert listing(out) == []


# ---------------------------------------------------------------------------------------------------------------------
# 8. Ctrl-C, kill -9 and --resume


def test_interrupt_inside_a_batch_counts_the_records_on_disk(inputs, tmp_path, monkeypatch):
    """Both images in one batch; Ctrl-C comes just after the second image's record is written (old code: 0 listed,
    2 on disk), then in a second run while its array is being written."""
    real, calls = report.write_atomic, []

    def interrupt_at(n, after):
        def write(*args, **kwargs):
            calls.append(1)
            if len(calls) == n and not after:
                raise KeyboardInterrupt
            path = real(*args, **kwargs)
            if len(calls) == n:
                raise KeyboardInterrupt
            return path
        return write

    out = tmp_path / "out"
    # writes per result: png, npy, json -> call 6 is the record of the second image
    monkeypatch.setattr(report, "write_atomic", interrupt_at(6, after=True))
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs, "--out", out, "--batch-size", "2", "--json")
    assert result.exit_code == 130
    doc = json.loads(result.stdout)
    assert doc["interrupted"] and len(doc["results"]) == 2
    assert sorted(Path(f).name for fs in doc["files"].values() for f in fs) == listing(out)
    assert "interrupted after 2 of 2 image(s); the 2 result(s) written are kept" in result.stderr

    calls.clear()
    monkeypatch.setattr(report, "write_atomic", interrupt_at(5, after=False))  # the second image's .npy
    with unchanged(inputs):
        result = invoke("explain", inputs / "model.onnx", inputs, "-m", "saliency", "--out", out, "--batch-size",
                        "2", "--json")
    assert result.exit_code == 130
    doc = json.loads(result.stdout)
    assert [Path(r["json"]).name for r in doc["results"]] == ["a.saliency.top1.json"]
    assert "interrupted after 1 of 2 image(s); the 1 result(s) written are kept" in result.stderr
    assert [n for n in listing(out) if "saliency" in n] == ["a.saliency.top1.json", "a.saliency.top1.npy",
                                                            "a.saliency.top1.png", "b.saliency.top1.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the interrupted write left no temporary file

    monkeypatch.setattr(report, "write_atomic", real)
    result = invoke("explain", inputs / "model.onnx", inputs, "-m", "saliency", "--out", out, "--resume", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [Path(r["json"]).name for r in doc["results"]] == ["b.saliency.top1.json"]
    assert doc["skipped"] == [str(inputs / "a.png")] and len(listing(out)) == 12
    assert sorted(doc["files"][str(inputs / "b.png")]) == [str(out / f"b.saliency.top1.{s}")
                                                           for s in ("json", "npy", "png")]


def test_resume_removes_the_temporary_files_of_a_killed_run(inputs, tmp_path):
    out = tmp_path / "out"
    assert invoke("explain", inputs / "model.onnx", inputs / "a.png", "--out", out, "--quiet").exit_code == 0
    # what kill -9 leaves: write_atomic's temporary files (.NAME.XXXXXXXX.tmp)
    stale = [out / ".b.gradcam.top1.png.0123abcd.tmp", out / ".b.gradcam.top1.json.89abcdef.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    foreign = [out / ".notes.txt.0123abcd.tmp", out / ".b.gradcam.top1.png.tmp", out / "keep.txt"]
    for path in foreign:
        path.write_bytes(b"not ours")
    result = invoke("explain", inputs / "model.onnx", inputs, "--out", out, "--resume", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["removed_temporary"] == sorted(str(p) for p in stale)
    assert "resume: removed 2 temporary file(s) left by an interrupted run" in result.stderr
    assert not any(p.exists() for p in stale) and all(p.read_bytes() == b"not ours" for p in foreign)
    assert [Path(r["json"]).name for r in doc["results"]] == ["b.gradcam.top1.json"]


def test_resume_recomputes_results_made_with_other_settings(inputs, tmp_path):
    out = tmp_path / "out"
    base = ["occlusion", inputs / "model.onnx", inputs, "--out", out, "--window", "4", "--json"]
    result = invoke(*base, "--stride", "4")
    assert result.exit_code == 0, result.output
    record = out / "a.occlusion.top1.json"
    assert json.loads(record.read_text())["parameters"]["stride"] == [4, 4]
    # the same settings: nothing to do
    result = invoke(*base, "--stride", "4", "--resume")
    assert result.exit_code == 0 and json.loads(result.stdout)["results"] == []
    assert "resume: 2 image(s) already done, skipped" in result.stderr
    # another stride: both results are stale, recomputed, and the run says so
    result = invoke(*base, "--stride", "2", "--resume")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["stale"] == [str(record), str(out / "b.occlusion.top1.json")] and doc["skipped"] == []
    assert "resume: 2 result(s) were made with other settings (stride) and are recomputed" in result.stderr
    assert json.loads(record.read_text())["parameters"]["stride"] == [2, 2]
    # the colormap changes the pictures: also a setting
    result = invoke(*base, "--stride", "2", "--resume", "--colormap", "viridis")
    assert "(colormap)" in result.stderr and len(json.loads(result.stdout)["results"]) == 2
    # another method option through explain (the IG steps): only that method's results
    args = ["explain", inputs / "model.onnx", inputs / "a.png", "--out", out, "-m", "ig,saliency", "--json"]
    assert invoke(*args, "--steps", "2").exit_code == 0
    result = invoke(*args, "--steps", "3", "--resume")
    doc = json.loads(result.stdout)
    assert [r["method"] for r in doc["results"]] == ["ig"] and doc["results"][0]["parameters"]["steps"] == 3


def test_resume_never_takes_another_images_result_for_its_own(inputs, tmp_path):
    write_png(inputs / "x" / "cat.png", seed=7)
    write_png(inputs / "y" / "cat.png", seed=8)
    out = tmp_path / "out"
    assert invoke("explain", inputs / "model.onnx", inputs / "x" / "cat.png", "--out", out, "--quiet").exit_code == 0
    with unchanged(out):
        result = invoke("explain", inputs / "model.onnx", inputs / "y" / "cat.png", "--out", out, "--resume")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line == (f"cnnviz: error: {out / 'cat.gradcam.top1.json'} holds the result of another image "
                    f"({(inputs / 'x' / 'cat.png').resolve()}); choose another --out, or pass --overwrite to replace "
                    "it.")
    result = invoke("explain", inputs / "model.onnx", inputs / "y" / "cat.png", "--out", out, "--resume",
                    "--overwrite", "--json")
    assert result.exit_code == 0
    assert json.loads((out / "cat.gradcam.top1.json").read_text())["image"] == str((inputs / "y" / "cat.png").resolve())


def test_files_temporary_names_and_regular_file_checks(tmp_path):
    from onnx_cnnviz import files

    target = tmp_path / "r.png"
    files.write_atomic(target, b"one")
    assert files.temp_target(".r.png.0123abcd.tmp") == "r.png"
    for name in ("r.png", ".r.png.tmp", ".r.png.0123ABCD.tmp", ".r.png.0123abc.tmp", "r.png.0123abcd.tmp"):
        assert files.temp_target(name) is None, name
    (tmp_path / ".r.png.0123abcd.tmp").write_bytes(b"half")
    (tmp_path / ".s.png.0123abcd.tmp").write_bytes(b"someone else's")
    assert files.remove_stale_temps(tmp_path, {"r.png"}) == [tmp_path / ".r.png.0123abcd.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.png.0123abcd.tmp", "r.png"]
    assert files.remove_stale_temps(tmp_path / "missing", {"r.png"}) == []
    pipe = fifo(tmp_path / "pipe.png")
    with deadline():
        for overwrite in (False, True):
            with pytest.raises(InputError, match="is a FIFO \\(named pipe\\), not a regular file"):
                files.write_atomic(pipe, b"x", overwrite=overwrite)
        with pytest.raises(InputError, match="is a FIFO"):
            files.read_regular(pipe, "thing")
    with pytest.raises(InputError, match=r"'.*r.png' is 3 bytes, more than the 2 allowed"):
        files.read_regular(target, "thing", max_bytes=2)
    assert files.read_regular(target, "thing", max_bytes=3) == b"one"
    with pytest.raises(FileNotFoundError):
        files.read_regular(tmp_path / "missing", "thing")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.png.0123abcd.tmp", "pipe.png", "r.png"]


# ---------------------------------------------------------------------------------------------------------------------
# 9. a full disk


def test_full_disk_suggests_resume_only_where_it_exists(inputs, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(report, "write_atomic", full)
    with unchanged(inputs):
        result = invoke("report", inputs / "model.onnx", inputs / "a.png", "--out", tmp_path / "rep", "-m", "cam")
        assert result.exit_code == 1
        assert one_line_error(result).endswith("(the disk is full; free space and run the command again)")
        assert "--resume" not in result.stderr
        result = invoke("explain", inputs / "model.onnx", inputs / "a.png", "--out", tmp_path / "out")
        assert result.exit_code == 1
        assert one_line_error(result).endswith("(the disk is full; free space and run again with --resume)")


# ---------------------------------------------------------------------------------------------------------------------
# 11. the occlusion geometry, picture suffixes, -r


def test_stride_larger_than_the_image_warns(inputs, tmp_path):
    result = invoke("occlusion", inputs / "model.onnx", inputs / "a.png", "--window", "4", "--stride", "8",
                    "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    assert ("cnnviz: warning: the occlusion stride 8x8 is not smaller than the 8x8 image in height and width: a "
            "single window is placed (at the top-left), so the map is empty outside it; give a smaller stride "
            "(--stride)."
            ) in result.stderr
    occ = np.load(tmp_path / "o" / "a.occlusion.top1.npy")
    assert (occ[4:, :] == 0).all() and (occ[:, 4:] == 0).all()
    result = invoke("occlusion", inputs / "model.onnx", inputs / "a.png", "--window", "4", "--stride", "2x9",
                    "--out", tmp_path / "o2")
    assert result.exit_code == 0 and "in width: one column of windows" in result.stderr
    result = invoke("occlusion", inputs / "model.onnx", inputs / "a.png", "--window", "4", "--stride", "4",
                    "--preprocess", "imagenet", "--out", tmp_path / "o3")  # a preset given: no assumed-preset warning
    assert result.exit_code == 0 and "warning" not in result.stderr
    result = invoke("occlusion", inputs / "model.onnx", inputs / "a.png", "--window", "9", "--out", tmp_path / "o4")
    assert result.exit_code == 2 and "the occlusion window 9x9 is larger than the 8x8 model input" in result.stderr
    result = invoke("report", inputs / "model.onnx", inputs / "a.png", "-m", "occlusion", "--window", "2",
                    "--stride", "8", "--out", tmp_path / "rep")
    assert result.exit_code == 0 and "the occlusion stride 8x8 is not smaller" in result.stderr
    assert not (tmp_path / "o4").exists()


def test_stride_larger_than_a_native_size_image_warns(inputs, tmp_path):
    """With --preprocess none each picture keeps its size: the stride is checked per size."""
    from .test_cli import small_cnn

    model = small_cnn(tmp_path / "dyn.onnx", hw=("H", "W"))
    write_png(inputs / "big.png", size=48)
    result = invoke("occlusion", model, inputs / "a.png", inputs / "big.png", "--preprocess", "none", "--window",
                    "4", "--stride", "40", "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning") == 1
    assert "the occlusion stride 40x40 is not smaller than the 32x32 image in height and width" in result.stderr


def test_jfif_and_gif_in_a_folder_are_pictures(inputs, tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(9).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    folder = tmp_path / "pics"
    folder.mkdir()
    ok, jpeg = cv2.imencode(".jpg", pixels)
    (folder / "photo.jfif").write_bytes(jpeg.tobytes())
    Image.fromarray(pixels).save(folder / "anim.gif")
    (folder / "notes.txt").write_text("not a picture")
    for command in ("explain", "occlusion", "activations", "localize"):
        extra = ["--window", "4"] if command == "occlusion" else []
        result = invoke(command, inputs / "model.onnx", folder, "--out", tmp_path / command, "--json", *extra)
        assert result.exit_code == 0, (command, result.output)
        assert sorted(json.loads(result.stdout)["files"]) == [str(folder / "anim.gif"), str(folder / "photo.jfif")]
    for command in ("report", "embed", "patches"):
        out = tmp_path / command / ("p.png" if command == "patches" else "")
        extra = ["-m", "cam"] if command == "report" else ["--channels", "0", "--per-channel", "1"] \
            if command == "patches" \
            else ["--neighbours", "1"]
        result = invoke(command, inputs / "model.onnx", folder, "--out", out, "--json", *extra)
        assert result.exit_code == 0, (command, result.output)
        doc = json.loads(result.stdout)
        count = len(doc["images"]) if isinstance(doc["images"], list) else doc["images"]
        assert count == 2, (command, doc)


@pytest.mark.parametrize("command", ["explain", "occlusion", "activations", "localize", "report", "embed", "patches"])
def test_recursive_is_honoured(inputs, tmp_path, command):
    folder = tmp_path / "pics"
    write_png(folder / "top.png", seed=1)
    write_png(folder / "sub" / "deep.png", seed=2)
    write_png(folder / "sub" / "deeper" / "deepest.png", seed=3)

    def run(*flags):
        out = tmp_path / ("o" + "".join(flags)) / ("p.png" if command == "patches" else "")
        extra = {"occlusion": ["--window", "4"], "report": ["-m", "cam"], "patches": ["--channels", "0"],
                 "embed": ["--neighbours", "1"]}.get(command, [])
        return invoke(command, inputs / "model.onnx", folder, "--out", out, "--json", *extra, *flags)

    def images(result):
        doc = json.loads(result.stdout)
        if command in ("report", "embed"):
            return sorted(i if isinstance(i, str) else i["image"] for i in doc["images"])
        if command == "patches":
            return doc["images"]
        return sorted(doc["files"])

    if command == "embed":  # embed needs two images: the flat folder has one
        write_png(folder / "top2.png", seed=4)
    deep = [str(folder / "sub" / "deep.png"), str(folder / "sub" / "deeper" / "deepest.png")]
    flat = sorted(str(p) for p in folder.glob("*.png"))
    result = run()
    assert result.exit_code == 0, result.output
    result_r = run("-r")
    assert result_r.exit_code == 0, result_r.output
    if command == "patches":
        assert (images(result), images(result_r)) == (len(flat), len(flat) + 2)
    else:
        assert images(result) == flat and images(result_r) == sorted(flat + deep)


# ---------------------------------------------------------------------------------------------------------------------
# 6. --max-pixels, --max-nodes


def test_max_pixels_option(inputs, tmp_path):
    base = ["explain", inputs / "model.onnx", inputs / "a.png", "--out", tmp_path / "out", "--json"]
    result = invoke(*base, "--max-pixels", "1000")  # a.png is 32x32 = 1,024 pixels
    assert result.exit_code == 1
    (failed,) = json.loads(result.stdout)["failed"]
    assert "32x32 = 1,024 pixels, more than max_pixels=1,000" in failed["error"]
    assert "--max-pixels N or none" in failed["error"]
    assert current_pixel_limit() == MAX_PIXELS  # the limit ends with the command
    assert invoke(*base, "--max-pixels", "1024").exit_code == 0
    assert invoke(*base, "--max-pixels", "none", "--overwrite").exit_code == 0
    assert invoke(*base, "--max-pixels", "0").exit_code == 2
    result = invoke("invert", inputs / "model.onnx", inputs / "a.png", "--steps", "1", "--out", tmp_path / "i.png",
                    "--max-pixels", "10")
    assert result.exit_code == 1 and "more than max_pixels=10" in one_line_error(result)
    for command in ("explain", "occlusion", "report", "activations", "patches", "embed", "invert", "localize"):
        assert "--max-pixels" in invoke(command, "--help").stdout, command
    for command in ("filters", "dream", "export-graph", "inspect"):
        assert "--max-pixels" not in invoke(command, "--help").stdout, command


def test_max_nodes_option(inputs, tmp_path):
    model = inputs / "model.onnx"  # 5 nodes
    result = invoke("inspect", model, "--max-nodes", "4")
    assert result.exit_code == 1 and "has 5 graph nodes, more than max_nodes=4" in one_line_error(result)
    assert invoke("inspect", model, "--max-nodes", "5", "--json").exit_code == 0
    assert invoke("inspect", model, "--max-nodes", "none", "--json").exit_code == 0
    result = invoke("explain", model, inputs / "a.png", "--out", tmp_path / "out", "--max-nodes", "3")
    assert result.exit_code == 1 and "more than max_nodes=3" in one_line_error(result)
    result = invoke("export-graph", model, "--out", tmp_path / "g.onnx", "--max-nodes", "3")
    assert result.exit_code == 1 and "more than max_nodes=3" in one_line_error(result)
    assert invoke("filters", model, "--out", tmp_path / "f.png", "--max-nodes", "1,000").exit_code == 0
    assert invoke("inspect", model, "--max-nodes", "-1").exit_code == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.onnx").exists()
