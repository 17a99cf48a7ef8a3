"""Issue 11: a command line that feels like one tool (points 4 to 9).

* the report marks the --target class in its predictions table (a row of its own when it is not among them), and
  --top-k gives one row of maps per class (point 4);
* one flag name per idea across commands, each command showing only the flags it uses, older spellings kept as
  hidden aliases, absolute paths in JSON, --out defaults (point 5);
* progress in units of work inside an image, plain lines without a terminal, a bar that never runs into the result
  lines (point 6);
* --json errors as one JSON document on stdout, usage errors included, for every command (point 7);
* a warning naming the assumed preprocessing, ``inspect`` saying where its preprocessing comes from, --target by
  class name, ``inspect --classes`` (point 8);
* ``convert torch NAME``: pretrained weights from the torch hub cache only (never downloaded), random weights only
  with --random-weights, class names in the metadata, an install hint without torch (point 9).

Most cases run on the hand-built 8x8 model of tests/tiny_models.py; a few on the shared SqueezeNet.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import click
import numpy as np
import onnx
import pytest

from onnx_cnnviz.cli import common
from onnx_cnnviz.cli.common import SharedOption
from onnx_cnnviz.cli.main import cli
from onnx_cnnviz.methods import registry
from tests.tiny_models import CLASSES, unchanged

from . import LABELS, SQZ, invoke


def with_metadata(src: Path, dst: Path, props: dict) -> Path:
    model = onnx.load(str(src))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst


def commands():
    """(name, command) of every visible command, the convert subcommands as 'convert torch', 'convert keras'."""
    out = []
    for name, command in sorted(cli.commands.items()):
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            out += [(f"{name} {sub}", c) for sub, c in sorted(command.commands.items()) if not c.hidden]
        else:
            out.append((name, command))
    return out


def flags(command) -> dict:
    """Visible long flag name -> option, of ``command`` (hidden aliases left out)."""
    found = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        aliases = getattr(param, "aliases", ())
        for name in param.opts + param.secondary_opts:
            if name.startswith("--") and name not in aliases:
                found[name] = param
    return found


def mentions(text: str, flag: str) -> bool:
    """``flag`` appears in ``text`` as a whole flag (--top is not in --top-k)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def help_text(*command) -> str:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    return result.stdout


# ---------------------------------------------------------------------------------------------------------------------
# 4. the report: the target's row, rows of maps per class


def predictions_table(html: str) -> list[str]:
    """The rows of the first predictions table, as text with the marked rows prefixed '*'."""
    table = html[html.index('<table class="top">'):]
    table = table[:table.index("</table>")]
    rows = []
    for row in re.findall(r"<tr([^>]*)>(.*?)</tr>", table)[1:]:
        text = re.sub(r"<[^>]+>", " ", row[1]).replace("&#9664;", "").replace("&#8942;", "...")
        rows.append(("*" if 'class="target"' in row[0] else "") + " ".join(text.split()))
    return rows


def test_report_marks_the_target_even_outside_the_predictions(squeezenet_path, images, tmp_path):
    kitten = images / "kitten_224.png"
    result = invoke("report", squeezenet_path, kitten, "--out", tmp_path, "-m", "gradcam", "--target", "5",
                    "--predictions", "3", *SQZ, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["target"], doc["top_k"], doc["predictions"]) == (5, None, 3)
    html = Path(doc["report"]).read_text()
    rows = predictions_table(html)
    assert len(rows) == 5 and rows[0].startswith("1 281 tabby") and rows[3] == "..."
    assert rows[4].startswith("*") and "5 electric ray target" in rows[4]
    rank = int(rows[4][1:].split()[0])
    assert rank > 3
    assert "gradcam" in html and "5 electric ray</figcaption>" not in html  # the panel's caption names the class too
    # a target among the predictions: its own row is marked, no extra row; given by name
    result = invoke("report", squeezenet_path, kitten, "--out", tmp_path, "--name", "r2.html", "-m", "gradcam",
                    "--target", "Egyptian cat", *SQZ, "--json")
    assert result.exit_code == 0, result.output
    rows = predictions_table(Path(json.loads(result.stdout)["report"]).read_text())
    assert len(rows) == 5 and [r for r in rows if r.startswith("*")] == [r for r in rows if "285 Egyptian cat" in r]
    assert rows[1].startswith("*2 285 Egyptian cat")


def test_report_top_k_gives_one_row_of_maps_per_class(squeezenet_path, images, tmp_path):
    result = invoke("report", squeezenet_path, images / "kitten_224.png", "--out", tmp_path, "-m",
                    "gradcam,eigencam", "--top-k", "3", *SQZ, "--json")
    assert result.exit_code == 0, result.output
    html = Path(json.loads(result.stdout)["report"]).read_text()
    heads = re.findall(r'<div class="rowhead"><b>#(\d+)</b> ([^<]*)</div>', html)
    assert [(rank, text.split(" · ")[0]) for rank, text in heads] == \
        [("1", "281 tabby"), ("2", "285 Egyptian cat"), ("3", "282 tiger cat")]
    # the input, three Grad-CAMs and one EigenCAM (class-agnostic: shown once, in the first row)
    assert html.count("<img") == 5 and html.count('alt="eigencam"') == 1
    first_row = html[html.index("#1</b>"):html.index("#2</b>")]
    assert 'alt="gradcam"' in first_row and 'alt="eigencam"' in first_row
    assert not predictions_table(html)[0].startswith("*")  # no --target: nothing marked
    result = invoke("report", squeezenet_path, images / "kitten_224.png", "--out", tmp_path, "--target", "1",
                    "--top-k", "2", *SQZ)
    assert result.exit_code == 2 and "exclude each other" in result.stderr


def test_render_report_groups_panels_by_class():
    """Entries built by hand (5-tuple panels, no ``explained``): one row per class in the panels' order."""
    from onnx_cnnviz import report

    view = np.zeros((8, 8, 3), np.uint8)
    entry = report.ImageEntry("a.png", view, [(0, None, 2.0, 0.7), (1, None, 1.0, 0.3)],
                              target=(1, None, 1.0, 0.3, 2))
    cam = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for c in (0, 1):
        entry.panels.append(("gradcam", c, report.picture("gradcam", cam, view), {}, None))
    entry.panels.append(("eigencam", None, report.picture("eigencam", cam, view), {}, None))
    html = report.render_report([entry], {"model": "m"})
    assert html.count('<div class="row" style="margin-top:12px">') == 2
    assert predictions_table(html) == ["1 class 0 0.700 2.00", "*2 class 1 target 0.300 1.00"]


# ---------------------------------------------------------------------------------------------------------------------
# 5. one name per idea; only the flags a command uses


def test_every_shared_flag_has_one_meaning():
    """A flag name taken by several commands comes from one shared decorator: the same meaning (help text, the
    command's note aside) and type everywhere."""
    by_flag: dict = {}
    for name, command in commands():
        for flag, param in flags(command).items():
            by_flag.setdefault(flag, []).append((name, param))
    shared = {flag: uses for flag, uses in by_flag.items() if len(uses) > 1 and flag != "--help"}
    assert {"--method", "--target", "--top-k", "--batch-size", "--out", "--layer", "--labels", "--preprocess",
            "--overwrite", "--json"} <= set(shared)
    for flag, uses in shared.items():
        made_here = [name for name, param in uses if not isinstance(param, SharedOption)]
        assert not made_here, f"{flag} of {made_here} is not made by a shared decorator (onnx_cnnviz/cli/common.py)"
        meanings = {param.shared_help for _, param in uses}
        assert len(meanings) == 1, (flag, meanings)
        kinds = {type(param.type).__name__ for _, param in uses}
        assert len(kinds) == 1, (flag, kinds)
        choices = {tuple(param.type.choices) for _, param in uses if isinstance(param.type, click.Choice)}
        assert len(choices) <= 1, (flag, choices)
        assert len({param.is_flag for _, param in uses}) == 1, flag
    # the meanings that were mixed up: each has its own name now
    assert by_flag["--batch-size"] and all("Images" in p.shared_help for _, p in by_flag["--batch-size"])
    assert [name for name, _ in by_flag["--predictions"]] == ["report"]
    assert sorted(name for name, _ in by_flag["--top-k"]) == ["explain", "localize", "occlusion", "report"]
    assert "--top" not in by_flag and "--methods" not in by_flag and "--class" not in by_flag


# Flags a command must not list: it would ignore them.
IGNORED = {
    "filters": ["--preprocess", "--mean", "--std", "--size", "--scale", "--labels", "--max-pixels", "--batch-size",
                "--recursive", "--target"],
    "dream": ["--max-pixels", "--recursive", "--batch-size"],
    "export-graph": ["--preprocess", "--labels", "--max-pixels", "--target"],
    "inspect": ["--max-pixels", "--out", "--overwrite"],
    "activations": ["--labels", "--target"],
    "patches": ["--labels", "--target"],
    "embed": ["--labels", "--target"],
    "invert": ["--labels", "--target"],
    "convert torch": ["--device", "--max-pixels", "--target"],
}


def test_commands_list_only_the_flags_they_use():
    for name, command in commands():
        listed = flags(command)
        text = help_text(*name.split())
        for flag in IGNORED.get(name, []):
            assert flag not in listed and not mentions(text, flag), (name, flag)
        reads_pictures = any(p.name in ("images", "image") for p in command.params)
        assert ("--max-pixels" in listed) == reads_pictures, name
        if reads_pictures:
            assert "--preprocess" in listed, name
        names_classes = "--target" in listed or name == "inspect"
        assert ("--labels" in listed) == (names_classes or name.startswith("convert")), name
    assert "--order" in flags(cli.commands["filters"])


def test_older_spellings_are_hidden_aliases(inputs, tmp_path):
    for command, alias in [("explain", "--methods"), ("report", "--methods"), ("report", "--top"),
                           ("report", "--batch-size"), ("localize", "--top"), ("activations", "--top"),
                           ("dream", "--class")]:
        assert not mentions(help_text(command), alias), (command, alias)
    assert "localise" not in help_text() and "localize" in help_text()
    model, a = inputs / "model.onnx", inputs / "a.png"
    result = invoke("explain", model, a, "--methods", "saliency", "--out", tmp_path / "e", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["methods"] == ["saliency"]
    result = invoke("report", model, a, "--methods", "cam", "--top", "2", "--batch-size", "1", "--out", tmp_path / "r",
                    "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["predictions"] == 2
    result = invoke("localise", model, a, "--top", "2", "--out", tmp_path / "l", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"][0]["boxes"]) == 2
    result = invoke("activations", model, a, "--top", "2", "--out", tmp_path / "act", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["results"][0]["channels"]) == 2
    result = invoke("patches", model, a, "--channels", "0", "-k", "1", "--out", tmp_path / "p.png", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["patches"]["0"]) == 1
    result = invoke("dream", model, "--class", "1", "--steps", "2", "--out", tmp_path / "d.png", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["class"] == 1


def test_localize_takes_one_method(inputs, tmp_path):
    result = invoke("localize", inputs / "model.onnx", inputs / "a.png", "-m", "cam,gradcam", "--out", tmp_path)
    assert result.exit_code == 2 and "one method" in result.stderr
    result = invoke("localize", inputs / "model.onnx", inputs / "a.png", "-m", "occlusion", "--out", tmp_path)
    assert result.exit_code == 2  # not a localisation method


def string_values(document):
    if isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from string_values(value)
    elif isinstance(document, list):
        for value in document:
            yield from string_values(value)
    elif isinstance(document, str):
        yield document


def test_json_paths_are_absolute_and_out_has_one_rule(inputs, tmp_path, monkeypatch):
    """Run from the inputs' folder with relative paths: every path in every JSON document (summaries and the records
    on disk) is absolute; --out defaults to the folder cnnviz-out, or cnnviz-out/COMMAND.png for one picture."""
    monkeypatch.chdir(inputs)
    runs = {
        "explain": ["explain", "model.onnx", "a.png", "b.png", "-m", "gradcam,occlusion", "--window", "4"],
        "occlusion": ["occlusion", "model.onnx", "a.png", "--window", "4", "--out", "occ"],
        "report": ["report", "model.onnx", ".", "-m", "cam", "--out", "rep"],
        "activations": ["activations", "model.onnx", "a.png"],
        "localize": ["localize", "model.onnx", "a.png", "--out", "loc"],
        "embed": ["embed", "model.onnx", "a.png", "b.png", "--out", "emb", "--neighbours", "1"],
        "patches": ["patches", "model.onnx", "a.png", "--channels", "0", "--per-channel", "1"],
        "filters": ["filters", "model.onnx"],
        "dream": ["dream", "model.onnx", "--target", "class2", "--labels", "labels.txt", "--steps", "2"],
        "invert": ["invert", "model.onnx", "a.png", "--steps", "2"],
        "inspect": ["inspect", "model.onnx"],
    }
    for name, args in runs.items():
        result = invoke(*args, "--json", "--quiet")
        assert result.exit_code == 0, (name, result.output)
        documents = [json.loads(result.stdout)]
        documents += [json.loads(Path(s).read_text()) for s in string_values(documents[0])
                      if s.endswith(".json") and Path(s).is_file()]
        for document in documents:
            relative = [s for s in string_values(document) if s and os.path.exists(s) and not os.path.isabs(s)]
            assert not relative, (name, relative)
        assert documents[0].get("model") == str((inputs / "model.onnx").resolve()), name
    out = inputs / "cnnviz-out"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == [
        "a.activations.png", "a.gradcam.top1.png", "a.occlusion.top1.png", "b.gradcam.top1.png",
        "b.occlusion.top1.png", "dream.png", "filters.png", "invert.png", "patches.png"]
    assert (out / "patches.json").is_file()
    record = json.loads((out / "a.gradcam.top1.json").read_text())
    assert record["method"] == "gradcam" and record["outputs"]["picture"] == str(out / "a.gradcam.top1.png")
    assert json.loads((inputs / "loc" / "a.boxes.json").read_text())["method"] in registry.names()
    for name in ("filters", "dream", "invert", "patches"):
        assert f"[default: cnnviz-out/{name}.png]" in re.sub(r"-\s+", "-", help_text(name)), name
    for name in ("explain", "occlusion", "report", "activations", "embed", "localize"):
        assert "[default: cnnviz-out]" in help_text(name), name


# ---------------------------------------------------------------------------------------------------------------------
# 6. progress in units of work


def slow_map(m, x, targets=None, layer=None, *, upsample=True, normalize=True, batch_size=None, progress=None):
    """A map function that reports 4 units of work per image through ``progress``."""
    x = m.check_input(x)
    total = 4 * len(x)
    for done in range(1, total + 1):
        if progress is not None:
            progress(done, total)
    maps = x.mean(axis=1)
    lo = maps.min(axis=(1, 2), keepdims=True)
    return ((maps - lo) / np.maximum(maps.max(axis=(1, 2), keepdims=True) - lo, 1e-12)).astype(np.float32)


def plain_map(m, x, targets=None, layer=None, *, upsample=True, normalize=True, batch_size=None):
    return slow_map(m, x)


@pytest.fixture
def slowmap():
    method = registry.register(registry.Method("slowmap", "Slow map", slow_map, kind="map", gradients=False))
    registry.register(registry.Method("plainmap", "Plain map", plain_map, kind="map", gradients=False))
    yield method
    registry.unregister("slowmap")
    registry.unregister("plainmap")


def test_registry_explain_forwards_progress_to_methods_that_take_it(slowmap, inputs):
    import onnx_cnnviz as cv

    m = cv.load(inputs / "model.onnx")
    x = np.zeros((1, 3, 8, 8), np.float32)
    seen = []
    registry.explain(m, "slowmap", x, np.array([0]), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    registry.explain(m, "plainmap", x, np.array([0]), progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == 4  # a method without a progress keyword runs as it is
    seen.clear()
    registry.explain(m, "occlusion", x, np.array([0]), params={"window": 4, "stride": 4},
                     progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (4, 4)  # the library's own long-running methods report their windows


def test_progress_lines_without_a_terminal(slowmap, inputs, tmp_path, monkeypatch):
    model, images = inputs / "model.onnx", [inputs / "a.png", inputs / "b.png"]
    result = invoke("explain", model, *images, "-m", "slowmap", "--out", tmp_path / "quick")
    assert result.exit_code == 0 and "explaining:" not in result.stderr  # a short run prints no progress line
    monkeypatch.setattr(common, "PROGRESS_INTERVAL", 0.0)
    result = invoke("explain", model, *images, "-m", "slowmap", "--batch-size", "1", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("cnnviz: explaining: ")]
    # inside the first image: the method's units of work, not only 0/2 images
    assert any(re.match(r"cnnviz: explaining: 0/2 images, slowmap 3/4, \d+m\d\ds$", line) for line in lines), lines
    assert any(line.startswith("cnnviz: explaining: 1/2 images") for line in lines)
    assert "\r" not in result.stderr and "[#" not in result.stderr  # lines, not a bar
    result = invoke("occlusion", model, images[0], "--window", "4", "--stride", "2", "--out", tmp_path / "occ")
    assert result.exit_code == 0, result.output
    assert re.search(r"explaining: 0/1 images, occlusion \d+/9, ", result.stderr), result.stderr
    result = invoke("report", model, images[0], "-m", "slowmap", "--out", tmp_path / "rep")
    assert result.exit_code == 0 and "explaining: 0/1 images, slowmap 4/4" in result.stderr
    result = invoke("explain", model, *images, "-m", "slowmap", "--out", tmp_path / "q", "--quiet")
    assert result.exit_code == 0 and result.stderr == ""


def terminal_screen(text: str) -> list[str]:
    """What a terminal shows for ``text``: carriage returns go back to column 0, ESC[K erases to the line's end."""
    screen = []
    for raw in text.split("\n"):
        line = ""
        for segment in raw.split("\r"):
            if segment.startswith("\x1b[K"):
                line, segment = "", segment[3:]
            line = segment + line[len(segment):]
        screen.append(line)
    return screen


def test_bar_on_a_terminal_never_runs_into_the_results(slowmap, inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "_stderr_is_terminal", lambda: True)
    monkeypatch.setattr(common, "BAR_INTERVAL", 0.0)
    model, images = inputs / "model.onnx", [inputs / "a.png", inputs / "b.png"]
    result = invoke("explain", model, *images, "-m", "slowmap", "--batch-size", "1", "--out", tmp_path / "o",
                    "--preprocess", "none")
    assert result.exit_code == 0, result.output
    assert "explaining [" in result.output and "slowmap 2/4" in result.output  # the bar was drawn, with units
    screen = terminal_screen(result.output)
    results = [line for line in screen if " -> " in line]
    assert len(results) == 2
    for line, image in zip(results, images):
        assert line.startswith(f"{image}  slowmap"), screen
    assert not [line for line in screen if "explaining [" in line], screen  # cleared before each line and at the end
    assert screen[-2].startswith("2 result(s) in "), screen


# ---------------------------------------------------------------------------------------------------------------------
# 7. --json errors


def failing_run(name: str, inputs: Path, tmp_path: Path) -> list:
    missing = tmp_path / "missing.onnx"
    a = inputs / "a.png"
    return {
        "inspect": ["inspect", missing],
        "explain": ["explain", missing, a, "--out", tmp_path / "o"],
        "occlusion": ["occlusion", missing, a, "--out", tmp_path / "o"],
        "report": ["report", missing, a, "--out", tmp_path / "o"],
        "export-graph": ["export-graph", missing, "--out", tmp_path / "g.onnx"],
        "filters": ["filters", missing, "--out", tmp_path / "f.png"],
        "activations": ["activations", missing, a, "--out", tmp_path / "o"],
        "patches": ["patches", missing, a, "--out", tmp_path / "p.png"],
        "embed": ["embed", missing, a, inputs / "b.png", "--out", tmp_path / "o"],
        "dream": ["dream", missing, "--target", "1", "--out", tmp_path / "d.png"],
        "invert": ["invert", missing, a, "--out", tmp_path / "i.png"],
        "localize": ["localize", missing, a, "--out", tmp_path / "o"],
        "evaluate": ["evaluate", missing, a, "--out", tmp_path / "o"],
        "convert torch": ["convert", "torch", "no_such_net", "--out", tmp_path / "x.onnx"],
        "convert keras": ["convert", "keras", tmp_path / "missing.keras", "--out", tmp_path / "x.onnx"],
    }[name]


@pytest.mark.parametrize("name", [name for name, _ in commands()])
def test_json_errors_for_every_command(name, inputs, tmp_path):
    result = invoke(*failing_run(name, inputs, tmp_path), "--json")
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == 1 and error["type"].endswith("Error") and error["message"]
    assert result.stderr.strip().splitlines()[-1] == f"cnnviz: error: {error['message']}"
    # a usage error: exit code 2, the same document
    result = invoke(*name.split(), "--no-such-flag", "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "NoSuchOption" and error["exit_code"] == 2 and "--no-such-flag" in error["message"]
    assert "Usage:" in result.stderr  # the usual help on stderr


def test_json_usage_errors(squeezenet_path, inputs, tmp_path):
    for args in (["--json", "nope"], ["explain", "--json"], ["--json", "explain", inputs / "model.onnx", inputs,
                                                            "--window", "abc"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert json.loads(result.stdout)["error"]["exit_code"] == 2
    result = invoke("explain", squeezenet_path, inputs / "a.png", "--target", "tabbby", *SQZ, "--out", tmp_path,
                    "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["type"] == "BadParameter"
    # without --json: nothing on stdout
    result = invoke("explain", tmp_path / "missing.onnx", inputs / "a.png", "--out", tmp_path)
    assert result.exit_code == 1 and result.stdout == ""


# ---------------------------------------------------------------------------------------------------------------------
# 8. the assumed preprocessing, inspect, class names


def test_a_model_without_preprocessing_warns_once(squeezenet_path, images, tmp_path):
    result = invoke("explain", squeezenet_path, images, "--out", tmp_path / "a", "--json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("cnnviz: warning:")]
    assert len(warnings) == 1, result.stderr
    assert "no preprocessing metadata" in warnings[0] and "assuming the imagenet preset" in warnings[0]
    assert "--preprocess caffe" in warnings[0] and "--mean" in warnings[0]
    result = invoke("explain", squeezenet_path, images, "--out", tmp_path / "b", "--preprocess", "caffe", "--json")
    assert result.exit_code == 0 and "warning" not in result.stderr
    kitten = [r for r in json.loads(result.stdout)["results"] if r["image"].endswith("kitten_224.png")][0]
    assert kitten["class"] == 281
    for command in (["report", "-m", "cam"], ["localize"], ["activations"]):
        result = invoke(command[0], squeezenet_path, images, *command[1:], "--out", tmp_path / command[0])
        assert result.exit_code == 0 and result.stderr.count("assuming the imagenet preset") == 1, command
    result = invoke("filters", squeezenet_path, "--out", tmp_path / "f.png")
    assert result.exit_code == 0 and "--order BGR" in result.stderr


def test_inspect_says_where_the_preprocessing_comes_from(inputs, tmp_path):
    from onnx_cnnviz.image import PRESETS

    model = inputs / "model.onnx"
    doc = json.loads(invoke("inspect", model, "--json").stdout)
    used = doc["preprocessing_used"]
    assert used["source"] == "assumed" and used["preset"] == "imagenet" and doc["preprocessing"] is None
    assert used["settings"]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and used["settings"]["size"] == [8, 8]
    text = invoke("inspect", model).stdout
    assert "assumed: the imagenet preset" in text and "--preprocess" in text
    used = json.loads(invoke("inspect", model, "--preprocess", "caffe", "--json").stdout)["preprocessing_used"]
    assert used["source"] == "flags" and used["settings"]["order"] == "BGR"
    used = json.loads(invoke("inspect", model, "--mean", "0.5", "--json").stdout)["preprocessing_used"]
    assert used["source"] == "flags" and used["flags"] == ["--mean"] and used["settings"]["mean"] == [0.5] * 3
    meta = with_metadata(model, tmp_path / "meta.onnx", PRESETS["caffe"].to_metadata())
    used = json.loads(invoke("inspect", meta, "--json").stdout)["preprocessing_used"]
    assert used["source"] == "metadata" and used["settings"]["order"] == "BGR"
    assert "from the model's metadata" in invoke("inspect", meta).stdout
    result = invoke("explain", meta, inputs / "a.png", "--out", tmp_path / "o")
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_target_by_class_name(squeezenet_path, inputs, images, tmp_path):
    kitten = images / "kitten_224.png"
    for name in ("tabby", "TABBY", " Tabby "):
        result = invoke("explain", squeezenet_path, kitten, "--target", name, *SQZ, "--out", tmp_path / "o",
                        "--json", "--overwrite")
        assert result.exit_code == 0, result.output
        (record,) = json.loads(result.stdout)["results"]
        assert (record["class"], record["class_name"]) == (281, "tabby")
    assert (tmp_path / "o" / "kitten_224.gradcam.c281.png").exists()
    result = invoke("explain", squeezenet_path, kitten, "--target", "tabbby", *SQZ, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "no class is named 'tabbby'" in result.stderr and "281 (tabby)" in result.stderr
    assert not (tmp_path / "x").exists()
    # names need class names; ambiguous names list their classes; synonyms after a comma count
    result = invoke("explain", squeezenet_path, kitten, "--target", "tabby", "--preprocess", "caffe", "--out",
                    tmp_path / "x")
    assert result.exit_code == 2 and "--labels" in result.stderr
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog, hound\nCat\nbird\nfish\n")
    model, a = inputs / "model.onnx", inputs / "a.png"
    result = invoke("explain", model, a, "--labels", labels, "--target", "cat", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "0 (cat)" in result.stderr and "2 (Cat)" in result.stderr
    for command in (["explain"], ["localize"], ["report", "-m", "cam"]):
        result = invoke(command[0], model, a, *command[1:], "--labels", labels, "--target", "Hound", "--out",
                        tmp_path / command[0], "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        found = doc["target"] if command[0] == "report" else \
            [b["class"] for b in doc["results"][0]["boxes"]] if command[0] == "localize" else \
            doc["results"][0]["class"]
        assert found in (1, [1]), (command, found)
    result = invoke("dream", model, "--labels", labels, "--target", "bird", "--steps", "2", "--out",
                    tmp_path / "d.png", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["class"] == 3


def test_inspect_lists_the_classes(squeezenet_path, inputs, tmp_path):
    result = invoke("inspect", squeezenet_path, "--classes", "--labels", LABELS)
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s+281  tabby$", result.stdout, re.M) and re.search(r"^\s+0  tench$", result.stdout, re.M)
    doc = json.loads(invoke("inspect", squeezenet_path, "--classes", "--labels", LABELS, "--json").stdout)
    assert len(doc["classes"]) == 1000 and doc["classes"][281] == {"index": 281, "name": "tabby"}
    result = invoke("inspect", inputs / "model.onnx", "--classes")
    assert result.exit_code == 1 and "--labels" in result.stderr
    meta = with_metadata(inputs / "model.onnx", tmp_path / "m.onnx",
                         {"cnnviz.labels": "\n".join(f"c{i}" for i in range(CLASSES))})
    doc = json.loads(invoke("inspect", meta, "--classes", "--json").stdout)
    assert [c["name"] for c in doc["classes"]] == [f"c{i}" for i in range(CLASSES)]


# ---------------------------------------------------------------------------------------------------------------------
# 9. convert torch: cached pretrained weights, never downloaded


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache (TORCH_HOME), and no download allowed."""
    import torch

    home = tmp_path / "torch-home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home


def test_convert_uses_cached_pretrained_weights(torch_home, tmp_path):
    import onnxruntime as ort
    import torch
    import torchvision

    torch.manual_seed(7)
    net = torchvision.models.resnet18(weights=None).eval()
    torch.save(net.state_dict(), torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    out = tmp_path / "r18.onnx"
    result = invoke("convert", "torch", "resnet18", "--out", out, "--input-size", "64", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and doc["labels"] == 1000
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    labels = meta["cnnviz.labels"].splitlines()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[281] == "tabby"
    assert "IMAGENET1K_V1" in meta["cnnviz.source"] and meta["cnnviz.preprocess.size"] == "64,64"
    assert meta["cnnviz.preprocess.order"] == "RGB"
    # the weights are those of the cached file
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-3, atol=1e-4)
    # the exported model needs no flags: labels and preprocessing from its metadata, no warning
    text = invoke("inspect", out).stdout
    assert "from the model's metadata" in text and "1000 class names in the metadata" in text


def test_convert_refuses_weights_that_are_not_cached(torch_home, tmp_path):
    out = tmp_path / "x.onnx"
    result = invoke("convert", "torch", "resnet18", "--out", out)
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    checkpoint = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert line.startswith("cnnviz: error: the pretrained weights ResNet18_Weights.IMAGENET1K_V1")
    assert str(checkpoint) in line and "--random-weights" in line and "nothing is downloaded" in line
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in line
    result = invoke("convert", "torch", "resnet18", "--weights", "IMAGENET1K_V1", "--out", out)
    assert result.exit_code == 1 and str(checkpoint) in result.stderr
    assert not out.exists()
    result = invoke("convert", "torch", "resnet18", "--weights", "DEFAULT", "--random-weights", "--out", out)
    assert result.exit_code == 2 and "exclude each other" in result.stderr
    result = invoke("convert", "torch", "squeezenet1_1", "--random-weights", "--input-size", "64", "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["weights"] == "random weights" and json.loads(result.stdout)["labels"] is None
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "random weights" in meta["cnnviz.source"] and "cnnviz.labels" not in meta


def test_convert_without_torch_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with unchanged(tmp_path):
        result = invoke("convert", "torch", "resnet18", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "internal error" not in line and "pip install torch" in line, line
    result = invoke("convert", "torch", "resnet18", "--out", tmp_path / "x.onnx", "--json")
    assert json.loads(result.stdout)["error"]["type"] == "MissingDependencyError"
