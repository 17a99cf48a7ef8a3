"""The bad-input tour: every kind of wrong input a careful user (or a careless one) gives the ``cnnviz`` command line,
each run as a subprocess on small models, and what came of it.

    .venv/bin/python benchmarks/bad_input_tour.py                  # every case; prints one line per case
    .venv/bin/python benchmarks/bad_input_tour.py --write          # ... and writes docs/validation/bad-input-tour.md
    .venv/bin/python benchmarks/bad_input_tour.py --only nan-model,ray-bad-ip --keep   # some cases, workspace kept

The cases are the kinds of issue 24 (points 3 to 6) and of the three tours before it: bad models (empty, truncated,
not ONNX, two nodes of one name, external data that is missing, a device or a FIFO), bad images (empty, cut, a
header claiming gigapixels, a FIFO, 16-bit RGBA at 10000 x 9999), bad options (out-of-range classes, sizes, windows,
samples, JSON parameters), outputs that are symbolic links to the user's files or are the inputs themselves,
``--resume`` over broken records and journals, huge sizes, malformed ``CNNVIZ_`` environment settings, Ray addresses
that do not answer, and JSON nested 100,000 deep.

Each case runs in a workspace of its own (a temporary folder; the tiny models and pictures are made there, no
download), as its own process group, under a watchdog that kills the group above :data:`MEMORY_LIMIT` bytes of
resident memory (all its processes together) or after the case's timeout. Its outcome is one of:

* ``typed error``: exit status not 0, the last line ``cnnviz: error: ...`` (or click's ``Error: ...`` usage line),
  no traceback; where the case is bad input, this is the right answer;
* ``success``: exit status 0 (or 1 where the case expects a partial run: some results written, the rest named), and
  the outputs pass the case's check (no ``NaN``/``Infinity`` in a JSON file, no non-finite map);
* ``data loss``: a file the user owns (the inputs, the models, a symbolic link's target) was changed, added to or
  removed -- whatever the exit status;
* ``silent wrong``: exit status 0 where the input is wrong (the case expects an error), or outputs that fail the
  case's check (a NaN, a map of zeros without a word);
* ``refused``: a typed error where the input is valid (the case expects success);
* ``hang``: the case's timeout passed; ``over memory``: the watchdog's limit passed;
* ``traceback``: a Python traceback or the CLI's "internal error" line, or a failure without a typed line.

The first five but ``data loss`` and ``silent wrong`` are fine (``refused`` is a usability bug, not a safety one);
the pytest tests/errors/test_tour.py runs :data:`QUICK`, a representative fifth, and fails on any data loss,
traceback, hang or memory overrun.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAGE = ROOT / "docs" / "validation" / "bad-input-tour.md"
#: Resident memory of a case's processes together above which the watchdog kills them (issue 24: no command of the
#: tour passes 2 GB).
MEMORY_LIMIT = 2 * 2 ** 30
TIMEOUT = 120.0
#: The outcomes, in the order of the page; the first four are the failures the pytest refuses.
FAILURES = ("data loss", "traceback", "hang", "over memory")
OUTCOMES = ("typed error", "success", "refused", "silent wrong", *FAILURES)


@dataclasses.dataclass
class Case:
    """One run of the CLI.

    ``args`` is formatted with the workspace's paths (:func:`paths`) and split like a shell line; ``expect`` is
    ``"error"`` (bad input: a typed error is right), ``"ok"`` (valid input), ``"partial"`` (some inputs bad: exit 1
    with the rest written, or 0) or ``"either"`` (a typed error or a success are both right). ``setup(ws)`` makes the
    case's own files and returns the ones the user owns beyond the workspace's inputs (a link's target, a journal);
    ``check(ws, stdout)`` returns what is wrong with a successful run's outputs, or None."""

    name: str
    kind: str
    args: str
    expect: str = "error"
    setup: Callable | None = None
    check: Callable | None = None
    env: dict = dataclasses.field(default_factory=dict)
    timeout: float = TIMEOUT
    note: str = ""


# --- the workspace ---------------------------------------------------------------------------------------------------
def tiny_models(folder: Path) -> None:
    """The small models every case uses, made without torch: ``tiny.onnx`` (tests/tiny_models.py's classifier,
    32x32, 5 classes, batch 1), ``gap.onnx`` (the repository's 64x64 6-class CNN), ``mlp.onnx`` (no spatial layer),
    ``nan.onnx`` (scores NaN), ``twins.onnx`` (two nodes of one name)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.tiny_models import gap_classifier, log_of_negative, make_model, save

    save(gap_classifier(size=32), folder / "tiny.onnx")
    shutil.copy(ROOT / "models" / "gap_cnn.onnx", folder / "gap.onnx")
    save(gap_classifier(size=32, mid=log_of_negative), folder / "nan.onnx")
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((5, 3 * 32 * 32)).astype(np.float32) * 0.01, "w")
    b = numpy_helper.from_array(np.zeros(5, np.float32), "b")
    mlp = make_model([helper.make_node("Flatten", ["x"], ["flat"], name="flat"),
                      helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1, name="fc")],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], [w, b])
    save(mlp, folder / "mlp.onnx")
    twins = gap_classifier(size=32)
    twins.graph.node[2].name = twins.graph.node[0].name  # the pool named like the convolution
    save(twins, folder / "twins.onnx")


def pictures(folder: Path) -> None:
    """``a.png``, ``b.png`` (32x32 noise) and ``c.jpg`` in ``folder``."""
    import cv2

    from tests.tiny_models import write_png

    write_png(folder / "a.png", seed=1)
    write_png(folder / "b.png", seed=2)
    cv2.imwrite(str(folder / "c.jpg"), cv2.imread(str(folder / "a.png")))


def paths(ws: Path, fixtures: Path) -> dict:
    return {"tiny": fixtures / "tiny.onnx", "gap": fixtures / "gap.onnx", "mlp": fixtures / "mlp.onnx",
            "nan": fixtures / "nan.onnx", "twins": fixtures / "twins.onnx", "imgs": ws / "imgs",
            "img": ws / "imgs" / "a.png", "out": ws / "out", "ws": ws}


def checksums(*roots: Path) -> dict:
    """sha256 (or, for what is not a regular file, its kind) of every path under ``roots``, links not followed."""
    out = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        found = [root] if not root.is_dir() or root.is_symlink() else [root, *sorted(root.rglob("*"))]
        for p in found:
            if p.is_symlink():
                out[str(p)] = "link -> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "folder"
            else:
                out[str(p)] = "special"
    return out


# --- what a case's outputs must not hold -----------------------------------------------------------------------------
NON_FINITE = re.compile(r"\b(NaN|-?Infinity)\b")


def finite_outputs(ws: Path, _stdout: str = "") -> str | None:
    """Every JSON file under the workspace's out folder is strict JSON without NaN/Infinity, every .npy finite."""
    import numpy as np

    out = ws / "out"
    if not out.exists():
        return None
    for p in sorted(out.rglob("*")):
        if p.suffix in (".json", ".jsonl") and p.is_file() and not p.is_symlink():
            if NON_FINITE.search(p.read_text(errors="replace")):
                return f"{p.name} holds NaN or Infinity"
        elif p.suffix == ".npy" and p.is_file() and not p.is_symlink():
            try:
                if not np.isfinite(np.load(p)).all():
                    return f"{p.name} is not finite"
            except ValueError:
                return f"{p.name} is not a readable array"
    return None


def wrote(*patterns: str):
    """A check: the out folder holds a file matching each glob pattern, and everything is finite."""
    def check(ws: Path, stdout: str = "") -> str | None:
        for pattern in patterns:
            if not list((ws / "out").glob(pattern)):
                return f"no {pattern} written"
        return finite_outputs(ws, stdout)
    return check


def nonzero_maps(ws: Path, stderr: str = "") -> str | None:
    """A check: no map is constant unless the run said so on stderr (a check is given the run's stderr)."""
    import numpy as np

    for p in sorted((ws / "out").glob("*.npy")):
        values = np.load(p)
        if not np.ptp(values) > 0 and "warning" not in stderr:
            return f"{p.name} is constant ({float(values.flat[0]):g}), without a warning"
    return finite_outputs(ws, stderr)


# --- the setups ------------------------------------------------------------------------------------------------------
def write(rel: str, data: bytes | str):
    def setup(ws: Path):
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def chain(*setups):
    def setup(ws: Path):
        owned = []
        for s in setups:
            owned += s(ws) or []
        return owned
    return setup


def link(rel: str, target: str, make_target: bytes | None = b"the user's own file\n"):
    """``ws/rel`` a symbolic link to ``ws/target`` (made with ``make_target`` unless None); the target is owned."""
    def setup(ws: Path):
        t = ws / target
        if make_target is not None:
            t.parent.mkdir(parents=True, exist_ok=True)
            t.write_bytes(make_target)
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(t if not target.startswith("/") else Path(target))
        return [t] if make_target is not None else []
    return setup


def fifo(rel: str):
    def setup(ws: Path):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(ws / rel)
    return setup


def copy_model(name: str, rel: str, cut: float | None = None):
    """The fixture model ``name`` copied to ``ws/rel`` (its first ``cut`` fraction of bytes only, if given)."""
    def setup(ws: Path):
        data = (ws.parent / "fixtures" / f"{name}.onnx").read_bytes()
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(data if cut is None else data[:int(len(data) * cut)])
    return setup


def onnx_model(rel: str, build: Callable):
    """``ws/rel`` the ONNX model ``build()`` returns (tests/tiny_models.py's helpers)."""
    def setup(ws: Path):
        from tests.tiny_models import save

        save(build(), ws / rel)
    return setup


def external_data(kind: str):
    """``ws/ext.onnx``: the tiny model with its weights in ``ws/ext.bin``, then that file replaced by ``kind``:
    ``missing``, ``zero`` (a link to /dev/zero), ``fifo``, ``short`` (cut to 10 bytes)."""
    def setup(ws: Path):
        import onnx

        from tests.tiny_models import gap_classifier

        model = gap_classifier(size=32)
        onnx.save(model, str(ws / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="ext.bin", size_threshold=0)
        data = ws / "ext.bin"
        if kind == "missing":
            data.unlink()
        elif kind == "zero":
            data.unlink()
            data.symlink_to("/dev/zero")
        elif kind == "fifo":
            data.unlink()
            os.mkfifo(data)
        elif kind == "short":
            data.write_bytes(data.read_bytes()[:10])
    return setup


def png(rel: str, shape, dtype="uint8"):
    def setup(ws: Path):
        import cv2
        import numpy as np

        rng = np.random.default_rng(5)
        top = 65535 if dtype == "uint16" else 255
        pixels = rng.integers(0, top + 1, shape, dtype=dtype)
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(p), pixels)
    return setup


def huge_header_png(rel: str, width: int, height: int):
    """A PNG whose IHDR claims ``width`` x ``height`` and whose data is one empty IDAT: only a header check saves
    the memory."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return write(rel, data)


def big_png(rel: str):
    """A 10000 x 9999 RGBA 16-bit PNG of one colour (small on disk, 0.8 GB as float64): issue 24 point 5."""
    def setup(ws: Path):
        import cv2
        import numpy as np

        pixels = np.full((9999, 10000, 4), 30000, np.uint16)
        assert cv2.imwrite(str(ws / rel), pixels)
    return setup


def nested_json(rel: str, depth: int = 100_000):
    return write(rel, "[" * depth + "]" * depth)


def boxes(rel: str, rows: list[str]):
    return write(rel, "\n".join(["image,x0,y0,x1,y1,label", *rows]) + "\n")


def many_boxes(rel: str, count: int):
    def setup(ws: Path):
        with open(ws / rel, "w") as f:
            f.write("image,x0,y0,x1,y1\n")
            row = "a.png,1,1,20,20\n"
            for _ in range(count // 1000):
                f.write(row * 1000)
    return setup


def first_run(args: str):
    """Run ``cnnviz ARGS`` once (the run --resume then goes on from), through the same runner; its outputs are the
    tool's, not the user's."""
    def setup(ws: Path):
        fields = paths(ws, ws.parent / "fixtures")
        result = run_cli(shlex.split(args.format(**fields)), ws, {}, TIMEOUT)
        if result["rc"] != 0:
            raise RuntimeError(f"the first run failed: {result['stderr'][-300:]}")
    return setup


def edit(rel: str, fn: Callable[[Path], None]):
    def setup(ws: Path):
        fn(ws / rel)
    return setup


def truncate_to(n: int):
    def fn(p: Path):
        p.write_bytes(p.read_bytes()[:n])
    return fn


def one_out(pattern: str, fn: Callable[[Path], None]):
    """Apply ``fn`` to the first file of the out folder matching ``pattern``."""
    def setup(ws: Path):
        fn(sorted((ws / "out").glob(pattern))[0])
    return setup


def journal_line(text: bytes):
    """Append a raw line to the evaluate journal (after a first run)."""
    def setup(ws: Path):
        with open(ws / "out" / "results.jsonl", "ab") as f:
            f.write(text + b"\n")
    return setup


def journal_value(value: str):
    """Replace the first row's value in the evaluate journal by the JSON text ``value``."""
    def setup(ws: Path):
        p = ws / "out" / "results.jsonl"
        lines = p.read_text().splitlines()
        row = json.loads(lines[0])
        key = next(k for k in ("value", "score", "auc") if k in row)
        lines[0] = json.dumps(row).replace(json.dumps({key: row[key]})[1:-1], f'"{key}": {value}', 1)
        p.write_text("\n".join(lines) + "\n")
    return setup


# --- the cases -------------------------------------------------------------------------------------------------------
EXPLAIN = "explain {tiny} {imgs} --out {out} --quiet"
EVAL = "evaluate {gap} {imgs} --out {out} --quiet --metric deletion --metric-param deletion.pixels_per_step=256"
BOXES = "evaluate {gap} {imgs} --out {out} --quiet --metric pointing-game --boxes "
RAY = "evaluate {tiny} {imgs} --out {out} --quiet --metric deletion --metric-param deletion.pixels_per_step=64 --ray "


def cases() -> list[Case]:
    c = Case
    out = [
        # -- bad models --------------------------------------------------------------------------------------------
        c("model-missing", "model", "explain {ws}/nope.onnx {imgs} --out {out}"),
        c("model-empty", "model", "explain {ws}/m.onnx {imgs} --out {out}", setup=write("m.onnx", b"")),
        c("model-text", "model", "explain {ws}/m.onnx {imgs} --out {out}", setup=write("m.onnx", "not a model\n")),
        c("model-png", "model", "explain {img} {imgs} --out {out}"),
        c("model-folder", "model", "explain {imgs} {imgs} --out {out}"),
        c("model-truncated", "model", "explain {ws}/m.onnx {imgs} --out {out}", setup=copy_model("gap", "m.onnx", 0.5)),
        c("model-truncated-header", "model", "inspect {ws}/m.onnx", setup=copy_model("gap", "m.onnx", 0.01)),
        c("model-devzero", "model", "inspect {ws}/m.onnx", setup=link("m.onnx", "/dev/zero", None), timeout=60),
        c("model-fifo", "model", "inspect {ws}/m.onnx", setup=fifo("m.onnx"), timeout=60),
        c("model-nan-scores", "model", "explain {nan} {imgs} --out {out} -m saliency", expect="either",
          check=finite_outputs),
        c("model-two-nodes-one-name", "model", "inspect {twins}"),
        c("model-mlp-gradcam", "model", "explain {mlp} {imgs} --out {out} -m gradcam"),
        c("model-mlp-gradcam-saliency", "model", "explain {mlp} {imgs} --out {out} -m gradcam,saliency",
          expect="partial", check=wrote("*.saliency.*.npy"), note="saliency computed, Grad-CAM named unavailable"),
        c("model-external-missing", "model", "inspect {ws}/ext.onnx", setup=external_data("missing")),
        c("model-external-devzero", "model", "inspect {ws}/ext.onnx", setup=external_data("zero"), timeout=60),
        c("model-external-fifo", "model", "inspect {ws}/ext.onnx", setup=external_data("fifo"), timeout=60),
        c("model-external-short", "model", "explain {ws}/ext.onnx {imgs} --out {out}", setup=external_data("short")),
        c("model-external-ok", "model", "explain {ws}/ext.onnx {imgs} --out {out} --quiet", expect="ok",
          setup=external_data("ok"), check=wrote("*.npy")),
        c("model-max-nodes", "model", "explain {gap} {imgs} --out {out} --max-nodes 2"),
        c("model-opset-99", "model", "inspect {ws}/m.onnx",
          setup=onnx_model("m.onnx", opset_99)),
        c("model-unknown-op", "model", "explain {ws}/m.onnx {imgs} --out {out}", setup=onnx_model("m.onnx", custom_op)),
        c("model-int-input", "model", "explain {ws}/m.onnx {imgs} --out {out}", setup=onnx_model("m.onnx", int_input)),
        c("model-no-output", "model", "inspect {ws}/m.onnx", setup=onnx_model("m.onnx", no_output)),
        c("model-huge-declared-input", "model", "explain {ws}/m.onnx {imgs} --out {out}",
          setup=onnx_model("m.onnx", huge_input)),
        c("model-inspect-ok", "model", "inspect {gap}", expect="ok"),
        c("model-input-name-wrong", "model", "explain {gap} {imgs} --out {out} --input nosuch"),
        c("model-output-name-wrong", "model", "explain {gap} {imgs} --out {out} --output nosuch"),
        # -- bad images --------------------------------------------------------------------------------------------
        c("image-missing", "image", "explain {tiny} {ws}/nope.png --out {out}"),
        c("image-empty-folder", "image", "explain {tiny} {ws}/empty --out {out}",
          setup=lambda ws: (ws / "empty").mkdir() and None),
        c("image-empty-file", "image", "explain {tiny} {ws}/e.png --out {out}", setup=write("e.png", b"")),
        c("image-text-file", "image", "explain {tiny} {ws}/t.png --out {out}", setup=write("t.png", "hello\n")),
        c("image-truncated", "image", "explain {tiny} {ws}/cut.png --out {out}",
          setup=chain(png("cut.png", (64, 64, 3)), edit("cut.png", truncate_to(60)))),
        c("image-mixed-good-bad", "image", "explain {tiny} {imgs} --out {out} --quiet", expect="partial",
          setup=write("imgs/zz.png", b"junk"), check=wrote("a.*.npy", "b.*.npy")),
        c("image-huge-header", "image", "explain {tiny} {ws}/h.png --out {out}",
          setup=huge_header_png("h.png", 100_000, 100_000)),
        c("image-huge-header-no-limit", "image", "explain {tiny} {ws}/h.png --out {out} --max-pixels none",
          setup=huge_header_png("h.png", 60_000, 60_000)),
        c("image-devzero", "image", "explain {tiny} {ws}/z.png --out {out}", setup=link("z.png", "/dev/zero", None),
          timeout=60),
        c("image-fifo", "image", "explain {tiny} {ws}/f.png --out {out}", setup=fifo("f.png"), timeout=60),
        c("image-gray", "image", "explain {tiny} {ws}/g.png --out {out} --quiet", expect="ok",
          setup=png("g.png", (40, 40)), check=wrote("g.*.npy")),
        c("image-rgba16", "image", "explain {tiny} {ws}/r.png --out {out} --quiet", expect="ok",
          setup=png("r.png", (40, 30, 4), "uint16"), check=wrote("r.*.npy")),
        c("image-1x1", "image", "explain {tiny} {ws}/p.png --out {out} --quiet", expect="either",
          setup=png("p.png", (1, 1, 3)), check=finite_outputs),
        c("image-1x5000", "image", "explain {tiny} {ws}/p.png --out {out} --quiet", expect="either",
          setup=png("p.png", (1, 5000, 3)), check=finite_outputs),
        c("image-jpeg-named-png", "image", "explain {tiny} {ws}/j.png --out {out} --quiet", expect="ok",
          setup=lambda ws: shutil.copy(ws / "imgs" / "c.jpg", ws / "j.png") and None, check=wrote("j.*.npy")),
        c("image-unicode-space-name", "image", "explain {tiny} {imgs} --out {out} --quiet", expect="ok",
          setup=lambda ws: shutil.copy(ws / "imgs" / "a.png", ws / "imgs" / "chat noir é.png") and None,
          check=wrote("chat noir é.*.npy")),
        c("image-10000x9999-rgba16", "image", "explain {tiny} {ws}/big.png --out {out} --quiet", expect="ok",
          setup=big_png("big.png"), check=wrote("big.*.npy"), timeout=240),
        c("image-dir-symlink-loop", "image", "explain {tiny} {imgs} -r --out {out} --quiet", expect="ok",
          setup=lambda ws: (ws / "imgs" / "loop").symlink_to(ws / "imgs") or None, check=wrote("*.npy")),
        # -- bad options -------------------------------------------------------------------------------------------
        c("top-k-0", "option", EXPLAIN + " --top-k 0"),
        c("top-k-over-classes", "option", EXPLAIN + " --top-k 11"),
        c("top-k-negative", "option", EXPLAIN + " --top-k -3"),
        c("top-k-100-gap", "option", "explain {gap} {imgs} --out {out} --top-k 100"),
        c("target-out-of-range", "option", EXPLAIN + " --target 99"),
        c("target-negative", "option", EXPLAIN + " --target -1"),
        c("target-unknown-name", "option", EXPLAIN + " --target zebra"),
        c("target-huge", "option", EXPLAIN + " --target 99999999999999999999"),
        c("target-float", "option", EXPLAIN + " --target 1.5"),
        c("method-unknown", "option", EXPLAIN + " -m nosuch"),
        c("method-empty", "option", EXPLAIN + " -m ''"),
        c("method-empty-item", "option", EXPLAIN + " -m gradcam,,saliency", expect="either", check=finite_outputs),
        c("layer-unknown", "option", EXPLAIN + " --layer nosuch"),
        c("layer-1x1-gradcam", "option", "explain {tiny} {imgs} --out {out} --layer pool", expect="either",
          check=nonzero_maps, note="a 1x1 layer: Grad-CAM's map is constant; a warning must say so"),
        c("window-zero", "option", "occlusion {tiny} {imgs} --out {out} --window 0x0"),
        c("window-fraction", "option", "occlusion {tiny} {imgs} --out {out} --window 4.5x4"),
        c("window-huge", "option", "occlusion {tiny} {imgs} --out {out} --window 1000x1000 --quiet", expect="either",
          check=finite_outputs),
        c("stride-zero", "option", "occlusion {tiny} {imgs} --out {out} --stride 0"),
        c("stride-huge", "option", "occlusion {tiny} {imgs} --out {out} --stride 100x100 --quiet", expect="either",
          check=finite_outputs),
        c("samples-zero", "option", EXPLAIN + " -m smoothgrad --samples 0"),
        c("samples-overflow", "option", EXPLAIN + " -m smoothgrad --samples 99999999999999999999"),
        c("samples-huge-param", "option", EXPLAIN + " -m smoothgrad --param smoothgrad.samples=100000000"),
        c("steps-zero", "option", EXPLAIN + " -m ig --steps 0"),
        c("noise-negative", "option", EXPLAIN + " -m smoothgrad --noise -1"),
        c("noise-nan", "option", EXPLAIN + " -m smoothgrad --noise nan"),
        c("alpha-two", "option", EXPLAIN + " --alpha 2"),
        c("alpha-nan", "option", EXPLAIN + " --alpha nan"),
        c("colormap-unknown", "option", EXPLAIN + " --colormap nosuch"),
        c("batch-size-zero", "option", EXPLAIN + " --batch-size 0"),
        c("batch-size-fraction", "option", EXPLAIN + " --batch-size 2.5"),
        c("batch-size-huge", "option", EXPLAIN + " --batch-size 2147483647", expect="ok", check=wrote("*.npy")),
        c("rows-per-run-zero", "option", EXPLAIN + " --rows-per-run 0"),
        c("param-bad-syntax", "option", EXPLAIN + " --param occlusion"),
        c("param-unknown-method", "option", EXPLAIN + " --param nosuch.x=1"),
        c("param-unknown-key", "option", "occlusion {tiny} {imgs} --out {out} --param occlusion.nosuch=1"),
        c("param-wrong-type", "option", "occlusion {tiny} {imgs} --out {out} --param occlusion.window=\"big\""),
        c("param-nested-json", "json", "occlusion {tiny} {imgs} --out {out} --param occlusion.window="
          + "[" * 50_000 + "]" * 50_000),
        c("metric-param-nested-json", "json", EVAL + " --metric-param deletion.baseline=" + "[" * 50_000
          + "]" * 50_000),
        c("mean-wrong-count", "option", EXPLAIN + " --mean 1,2"),
        c("std-zero", "option", EXPLAIN + " --std 0,0,0"),
        c("std-nan", "option", EXPLAIN + " --std nan"),
        c("scale-zero", "option", EXPLAIN + " --scale 0"),
        c("scale-text", "option", EXPLAIN + " --scale abc"),
        c("preprocess-unknown", "option", EXPLAIN + " --preprocess bogus"),
        c("preprocess-tf-ok", "option", EXPLAIN + " --preprocess tf", expect="ok", check=wrote("*.npy")),
        c("order-unknown", "option", EXPLAIN + " --order xyz"),
        c("labels-missing", "option", EXPLAIN + " --labels {ws}/nope.txt"),
        c("labels-too-few", "option", EXPLAIN + " --labels {ws}/l.txt", setup=write("l.txt", "a\nb\nc\n")),
        c("labels-empty", "option", EXPLAIN + " --labels {ws}/l.txt", setup=write("l.txt", "")),
        c("labels-binary", "option", EXPLAIN + " --labels {ws}/l.txt", setup=write("l.txt", bytes(range(256)) * 4)),
        c("device-cuda-absent", "option", EXPLAIN + " --device cuda", expect="either", check=finite_outputs),
        c("input-size-zero", "option", EXPLAIN + " --input-size 0"),
        c("max-pixels-zero", "option", EXPLAIN + " --max-pixels 0"),
        c("max-pixels-negative", "option", EXPLAIN + " --max-pixels -1"),
        # -- huge sizes --------------------------------------------------------------------------------------------
        c("size-zero", "size", "explain {gap} {imgs} --out {out} --size 0x0"),
        c("size-negative", "size", "explain {gap} {imgs} --out {out} --size -5x5"),
        c("size-text", "size", "explain {gap} {imgs} --out {out} --size abc"),
        c("size-30000-dynamic", "size", "explain {ws}/dyn.onnx {imgs} --out {out} --size 30000x30000",
          setup=onnx_model("dyn.onnx", dynamic_hw)),
        c("size-100000-dynamic", "size", "explain {ws}/dyn.onnx {imgs} --out {out} --size 100000x100000",
          setup=onnx_model("dyn.onnx", dynamic_hw)),
        c("size-fixed-model-mismatch", "size", "explain {tiny} {imgs} --out {out} --size 64x64", expect="either",
          note="documented: a model of a fixed size uses its own"),
        c("metric-samples-1e8", "size", EVAL.replace("deletion", "sensitivity-max", 1).split(" --metric-param")[0]
          + " --metric-param sensitivity-max.samples=100000000"),
        c("metric-samples-overflow", "size", EVAL.split(" --metric-param")[0].replace("deletion", "sensitivity-max")
          + " --metric-param sensitivity-max.samples=99999999999999999999"),
        c("boxes-2m-rows", "size", BOXES + "{ws}/b.csv", setup=many_boxes("b.csv", 2_000_000), timeout=180),
        # -- outputs -----------------------------------------------------------------------------------------------
        c("out-is-a-file", "output", "explain {tiny} {imgs} --out {ws}/f.txt", setup=write("f.txt", "keep me\n")),
        c("out-is-an-input", "output", "explain {tiny} {imgs} --out {img}"),
        c("out-same-as-inputs", "output", "explain {tiny} {imgs} --out {imgs} --quiet", expect="either",
          check=finite_outputs),
        c("out-same-as-inputs-look-alike", "output", "explain {tiny} {imgs} --out {imgs} --overwrite --quiet",
          expect="either", setup=lambda ws: shutil.copy(ws / "imgs" / "b.png", ws / "imgs" / "a.gradcam.top1.png")
          and None, note="issue 24: a picture named like an output is an input"),
        c("out-existing-no-overwrite", "output", EXPLAIN, expect="either", setup=first_run(EXPLAIN)),
        c("out-existing-overwrite", "output", EXPLAIN + " --overwrite", expect="ok", setup=first_run(EXPLAIN),
          check=wrote("*.npy")),
        c("out-png-link-overwrite", "output", EXPLAIN + " --overwrite", expect="either",
          setup=chain(first_run(EXPLAIN), lambda ws: relink(ws, "a.gradcam.top1.png"))),
        c("out-npy-link-overwrite", "output", EXPLAIN + " --overwrite", expect="either",
          setup=chain(first_run(EXPLAIN), lambda ws: relink(ws, "a.gradcam.top1.npy"))),
        c("out-json-link-no-overwrite", "output", EXPLAIN, expect="either",
          setup=lambda ws: relink(ws, "a.gradcam.top1.json", first=False)),
        c("out-folder-link", "output", EXPLAIN, expect="either", check=finite_outputs,
          setup=lambda ws: ((ws / "real").mkdir(), (ws / "out").symlink_to(ws / "real")) and None),
        c("out-readonly", "output", "explain {tiny} {imgs} --out {ws}/ro/out --quiet", expect="either",
          setup=readonly_dir("ro"), note="as root the folder's mode does not bind: written"),
        c("report-over-an-input", "output", "report {tiny} {imgs} --out {img}"),
        c("report-existing-html", "output", "report {tiny} {imgs} --out {ws}/r.html",
          setup=write("r.html", "<p>the user's page</p>")),
        c("export-graph-over-model", "output", "export-graph {ws}/m.onnx --out {ws}/m.onnx",
          setup=copy_model("tiny", "m.onnx")),
        c("export-graph-ok", "output", "export-graph {tiny} --out {ws}/g.onnx --quiet", expect="ok"),
        c("evaluate-journal-link-overwrite", "output", EVAL + " --overwrite", expect="either",
          setup=link("out/results.jsonl", "precious.txt")),
        c("evaluate-journal-link-resume", "resume", EVAL + " --resume", expect="either",
          setup=chain(first_run(EVAL), lambda ws: move_and_link(ws, "out/results.jsonl", "journal-copy.jsonl"),
                      png("imgs/d.png", (32, 32, 3)))),
        c("evaluate-journal-dangling-link", "output", EVAL + " --overwrite", expect="either",
          setup=link("out/results.jsonl", "elsewhere.txt", None)),
        # -- resume with broken files ------------------------------------------------------------------------------
        c("resume-png-deleted", "resume", EXPLAIN + " --resume", expect="ok", check=wrote("a.gradcam.top1.png"),
          setup=chain(first_run(EXPLAIN), one_out("a.*.png", Path.unlink))),
        c("resume-npy-cut", "resume", EXPLAIN + " --resume", expect="ok", check=wrote("a.gradcam.top1.npy"),
          setup=chain(first_run(EXPLAIN), one_out("a.*.npy", truncate_to(10)))),
        c("resume-json-garbage", "resume", EXPLAIN + " --resume", expect="ok", check=wrote("*.json"),
          setup=chain(first_run(EXPLAIN), one_out("a.*.json", lambda p: p.write_text("{not json")))),
        c("resume-json-other-model", "resume", "explain {gap} {imgs} --out {out} --quiet --resume", expect="either",
          setup=first_run(EXPLAIN), check=finite_outputs),
        c("resume-tmp-leftover", "resume", EXPLAIN + " --resume", expect="ok", check=wrote("*.npy"),
          setup=chain(first_run(EXPLAIN), write("out/a.gradcam.top1.npy.tmp-123", b"half"))),
        c("resume-and-overwrite", "resume", EXPLAIN + " --resume --overwrite", expect="either"),
        c("evaluate-journal-bad-utf8", "resume", EVAL + " --resume", expect="either", check=finite_outputs,
          setup=chain(first_run(EVAL), journal_line(b'{"image": "\xff\xfe"}'))),
        c("evaluate-journal-value-text", "resume", EVAL + " --resume", expect="either", check=finite_outputs,
          setup=chain(first_run(EVAL), journal_value('"abc"'))),
        c("evaluate-journal-cut-line", "resume", EVAL + " --resume", expect="either", check=finite_outputs,
          setup=chain(first_run(EVAL), journal_line(b'{"image": "a.png", "met'))),
        c("evaluate-journal-nested", "json", EVAL + " --resume", expect="either", check=finite_outputs,
          setup=chain(first_run(EVAL), journal_line(b"[" * 100_000 + b"]" * 100_000))),
        # -- evaluate: boxes, metrics ------------------------------------------------------------------------------
        c("boxes-nested-json", "json", BOXES + "{ws}/b.json",
          setup=nested_json("b.json")),
        c("boxes-label-out-of-range", "json", BOXES + "{ws}/b.csv",
          setup=boxes("b.csv", ["a.png,1,1,20,20,7", "b.png,1,1,20,20,7"])),
        c("boxes-label-huge", "json", BOXES + "{ws}/b.csv",
          setup=boxes("b.csv", ["a.png,1,1,20,20,100000000000000000000"])),
        c("boxes-malformed-row", "json", BOXES + "{ws}/b.csv",
          setup=boxes("b.csv", ["a.png,1,1,twenty,20"])),
        c("boxes-inverted", "json", BOXES + "{ws}/b.csv",
          setup=boxes("b.csv", ["a.png,20,20,1,1"])),
        c("boxes-nan", "json", BOXES + "{ws}/b.csv",
          setup=boxes("b.csv", ["a.png,nan,1,20,20"])),
        c("boxes-missing-file", "json", BOXES + "{ws}/nope.csv"),
        c("boxes-devzero", "json", BOXES + "{ws}/b.csv",
          setup=link("b.csv", "/dev/zero", None), timeout=60),
        c("metric-unknown", "option", EVAL + " --metric nosuch"),
        c("metric-param-unknown", "option", EVAL + " --metric-param deletion.nosuch=1"),
        c("model-randomisation-gap", "option", "evaluate {gap} {imgs} --out {out} --quiet --metric "
          "model-randomisation", expect="either", check=finite_outputs, timeout=240),
        c("evaluate-n2-interval", "option", EVAL, expect="ok", check=interval_in_range),
        # -- environment settings ----------------------------------------------------------------------------------
        c("env-hold-above-1GB", "env", "inspect {tiny}", env={"CNNVIZ_HOLD_ABOVE_BYTES": "1GB"}),
        c("env-hold-min-negative", "env", "inspect {tiny}", env={"CNNVIZ_HOLD_MIN_BYTES": "-5"}),
        c("env-hold-above-huge", "env", "inspect {tiny}", env={"CNNVIZ_HOLD_ABOVE_BYTES": "9" * 40},
          expect="either"),
        c("env-share-weights-maybe", "env", "inspect {tiny}", env={"CNNVIZ_SHARE_WEIGHTS": "maybe"}),
        c("env-debug-text", "env", "inspect {tiny}", env={"CNNVIZ_DEBUG": "loud"}),
        c("env-hold-everything", "env", EXPLAIN, env={"CNNVIZ_HOLD_ABOVE_BYTES": "0", "CNNVIZ_HOLD_MIN_BYTES": "0"},
          expect="ok", check=wrote("*.npy")),
        c("env-debug-traceback", "env", "inspect {ws}/nope.onnx", env={"CNNVIZ_DEBUG": "1"},
          note="the traceback asked for; the last line still the typed error"),
        c("env-omp-threads-text", "env", EXPLAIN, env={"OMP_NUM_THREADS": "abc"}, expect="either",
          check=finite_outputs),
        # -- Ray addresses -----------------------------------------------------------------------------------------
        c("ray-bad-ip", "ray", RAY + "256.256.256.256:6379", timeout=90),
        c("ray-closed-port", "ray", RAY + "localhost:1", timeout=90),
        c("ray-not-an-address", "ray", RAY + "'not an address'", timeout=90),
        c("ray-client-scheme", "ray", RAY + "ray://127.0.0.1:1", timeout=90),
        c("ray-unroutable", "ray", RAY + "203.0.113.1:6379", timeout=90, note="TEST-NET-3: nothing answers, not even "
          "a refusal"),
        # -- other commands ----------------------------------------------------------------------------------------
        c("activations-layer-unknown", "command", "activations {tiny} {imgs} --out {out} --layer nosuch"),
        c("filters-mlp", "command", "filters {mlp} --out {out}/f.png", expect="either"),
        c("dream-steps-zero", "command", "dream {tiny} --out {out} --steps 0"),
        c("invert-missing-image", "command", "invert {tiny} {ws}/nope.png --out {out}"),
        c("patches-empty-folder", "command", "patches {tiny} {ws}/empty --out {out}",
          setup=lambda ws: (ws / "empty").mkdir() and None),
        c("embed-one-image", "command", "embed {tiny} {img} --out {out} --quiet", expect="either",
          check=finite_outputs),
        c("localize-nan-model", "command", "localize {nan} {imgs} --out {out} --quiet", expect="either",
          check=finite_outputs),
        c("report-no-images", "command", "report {tiny} {ws}/nope/*.png --out {ws}/r.html"),
        c("unknown-command", "command", "explian {tiny} {imgs}"),
        c("unknown-option", "command", EXPLAIN + " --colour red"),
    ]
    names = [case.name for case in out]
    assert len(names) == len(set(names)), "two cases of one name"
    return out


#: The cases the pytest runs (tests/errors/test_tour.py): one or two of each kind, the fast ones.
QUICK = ("model-empty", "model-truncated", "model-fifo", "model-two-nodes-one-name", "model-external-devzero",
         "image-empty-file", "image-huge-header", "image-fifo", "image-mixed-good-bad", "top-k-over-classes",
         "target-huge", "samples-overflow", "window-fraction", "size-100000-dynamic", "out-is-an-input",
         "out-png-link-overwrite", "evaluate-journal-link-overwrite", "resume-npy-cut", "boxes-nested-json",
         "env-hold-above-1GB", "export-graph-over-model")


# --- the models some cases build ----------------------------------------------------------------------------------
def opset_99():
    from tests.tiny_models import gap_classifier

    return gap_classifier(size=32, opset=99)


def custom_op():
    from onnx import TensorProto, helper

    from tests.tiny_models import make_model

    model = make_model([helper.make_node("Frobnicate", ["x"], ["logits"], domain="com.example", name="f")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                       [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], [])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def int_input():
    from onnx import TensorProto, helper

    from tests.tiny_models import make_model

    return make_model([helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT, name="cast"),
                       helper.make_node("ReduceMean", ["xf"], ["logits"], axes=[2, 3], keepdims=0, name="mean")],
                      [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3, 32, 32])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], [])


def no_output():
    from tests.tiny_models import gap_classifier

    model = gap_classifier(size=32)
    del model.graph.output[:]
    return model


def huge_input():
    from tests.tiny_models import gap_classifier

    model = gap_classifier(size=32)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 200_000
    return model


def dynamic_hw():
    from tests.tiny_models import gap_classifier

    model = gap_classifier(size=32)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


def relink(ws: Path, name: str, first: bool = True) -> list[Path]:
    """Replace the output ``out/NAME`` by a link to the user's ``precious.bin`` (after a first run, or in an empty
    out folder when ``first`` is False)."""
    (ws / "out").mkdir(exist_ok=True)
    precious = ws / "precious.bin"
    precious.write_bytes(b"the user's own data\n")
    target = ws / "out" / name
    if os.path.lexists(target):
        target.unlink()
    target.symlink_to(precious)
    return [precious]


def move_and_link(ws: Path, rel: str, to: str) -> list[Path]:
    shutil.move(ws / rel, ws / to)
    (ws / rel).symlink_to(ws / to)
    return [ws / to]


def readonly_dir(rel: str):
    def setup(ws: Path):
        (ws / rel).mkdir()
        (ws / rel).chmod(0o555)
    return setup


def interval_in_range(ws: Path, stdout: str = "") -> str | None:
    """summary.json's 95% intervals of deletion (a value in [0, 1]) lie in [0, 1]."""
    problem = finite_outputs(ws)
    if problem:
        return problem
    summary = json.loads((ws / "out" / "summary.json").read_text())
    rows = summary if isinstance(summary, list) else summary.get("rows", [])
    for row in rows:
        for key in ("ci95_low", "ci95_high", "ci_low", "ci_high"):
            if key in row and row[key] is not None and not -1e-9 <= float(row[key]) <= 1 + 1e-9:
                return f"{key} {row[key]} outside [0, 1]"
    return None


# --- running ---------------------------------------------------------------------------------------------------------
def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("cnnviz")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from onnx_cnnviz.cli.main import main; main()"]


def group_rss(pgid: int) -> int:
    """Resident bytes of every process in the group ``pgid`` (Ray's workers included)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_cli(args: list[str], ws: Path, env: dict, timeout: float) -> dict:
    """``cnnviz ARGS`` in ``ws`` as a process group of its own, killed (the whole group) above :data:`MEMORY_LIMIT`
    or after ``timeout`` s; returns rc, stdout, stderr, peak bytes, seconds and why it was killed."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **env}
    if "CNNVIZ_DEBUG" not in env:  # the tour's own setting would show every error's traceback
        full_env.pop("CNNVIZ_DEBUG", None)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start, peak, killed = time.monotonic(), 0, None
        child = subprocess.Popen(cli_command() + args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ws,
                                 env=full_env, start_new_session=True)
        try:
            while child.poll() is None:
                peak = max(peak, group_rss(child.pid))
                if peak > MEMORY_LIMIT:
                    killed = "over memory"
                elif time.monotonic() - start > timeout:
                    killed = "hang"
                if killed:
                    break
                time.sleep(0.1)
        finally:
            try:  # the group: Ray's raylet and workers too
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
        out.seek(0)
        err.seek(0)
        return {"rc": child.returncode, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace"), "peak": peak,
                "seconds": time.monotonic() - start, "killed": killed}


def classify(case: Case, result: dict, lost: list[str], problem: str | None) -> tuple[str, str]:
    """(outcome, detail) of one run: see the module docstring."""
    stderr = result["stderr"]
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if lost:
        return "data loss", "; ".join(lost)[:200]
    if result["killed"]:
        return result["killed"], f"killed after {result['seconds']:.0f} s at {result['peak'] / 2 ** 30:.2f} GB"
    asked = case.env.get("CNNVIZ_DEBUG") == "1"  # a traceback the user asked for
    if not asked and ("Traceback (most recent call last)" in stderr or "internal error" in stderr.lower()):
        tail = [line for line in lines if not line.startswith(" ")]
        return "traceback", (tail[-1] if tail else last)[:200]
    rc = result["rc"]
    typed = last.startswith("cnnviz: error: ") or last.startswith("Error: ")
    ok_codes = (0, 1) if case.expect == "partial" else (0,)
    if rc in ok_codes and not (rc == 1 and not any("error" in line or "warning" in line for line in lines)):
        if problem:
            return "silent wrong", problem[:200]
        if case.expect == "error":
            return "silent wrong", f"exit {rc} on bad input" + (f"; stderr: {last[:120]}" if last else "")
        return "success", f"exit {rc}" + (f"; {last[:150]}" if last else "")
    if not typed:
        return "traceback", f"exit {rc} without a typed error line: {last[:150]}"
    if case.expect == "ok":
        return "refused", last[:200]
    return "typed error", last[:200]


def run_case(case: Case, root: Path) -> dict:
    """Make the case's workspace under ``root``, run it, classify it, and return its row."""
    fixtures = root / "fixtures"
    ws = root / case.name
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    shutil.copytree(fixtures / "imgs", ws / "imgs")
    owned = [ws / "imgs", fixtures]
    try:
        owned += (case.setup(ws) if case.setup else None) or []
    except Exception as exc:  # noqa: BLE001 - a setup that fails is the tour's bug: said so, not hidden
        return {"case": case.name, "kind": case.kind, "expect": case.expect, "outcome": "setup failed",
                "detail": f"{type(exc).__name__}: {exc}"[:200], "rc": None, "seconds": 0, "peak_gb": 0}
    owned += [p for p in ws.iterdir() if p.name not in ("out", "imgs") and p not in owned]
    fields = paths(ws, fixtures)
    before = checksums(*owned)
    args = shlex.split(case.args.format(**fields))
    result = run_cli(args, ws, case.env, case.timeout)
    after = checksums(*owned)
    # Outputs written where the user sent them (--out naming an input folder, or a link to one) are no loss;
    # anything else added, and anything changed or removed, is.
    outs = [Path(args[i + 1]).resolve() for i, a in enumerate(args[:-1]) if a == "--out"]

    def asked(k: str) -> bool:
        return any(Path(k).resolve().is_relative_to(o) for o in outs)

    lost = [f"{Path(k).relative_to(root) if k.startswith(str(root)) else k}: "
            f"{'removed' if k not in after else 'added' if k not in before else 'changed'}"
            for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k) and not (k not in before and asked(k))]
    problem = None
    if result["rc"] in (0, 1) and not result["killed"] and case.check is not None:
        try:
            problem = case.check(ws, result["stderr"])
        except Exception as exc:  # noqa: BLE001 - unreadable outputs are a wrong result
            problem = f"outputs unreadable: {type(exc).__name__}: {exc}"
    outcome, detail = classify(case, result, lost, problem)
    return {"case": case.name, "kind": case.kind, "expect": case.expect, "outcome": outcome, "detail": detail,
            "rc": result["rc"], "seconds": round(result["seconds"], 1), "peak_gb": round(result["peak"] / 2 ** 30, 2),
            "note": case.note}


def prepare(root: Path) -> None:
    (root / "fixtures" / "imgs").mkdir(parents=True, exist_ok=True)
    tiny_models(root / "fixtures")
    pictures(root / "fixtures" / "imgs")


def run_cases(selected: list[Case], root: Path, echo: Callable | None = None) -> list[dict]:
    prepare(root)
    rows = []
    for case in selected:
        row = run_case(case, root)
        rows.append(row)
        if echo:
            echo(row)
    return rows


# --- the page --------------------------------------------------------------------------------------------------------
def page(rows: list[dict]) -> str:
    counts = {k: sum(r["outcome"] == k for r in rows) for k in (*OUTCOMES, "setup failed")}
    bad = [r for r in rows if r["outcome"] in (*FAILURES, "silent wrong", "setup failed")]
    lines = ["# The bad-input tour", "",
             "Made by `benchmarks/bad_input_tour.py --write` (its docstring defines each outcome): every case is one "
             "`cnnviz` command on small models made on the spot, run as a process group of its own under a "
             f"{MEMORY_LIMIT / 2 ** 30:g} GB memory watchdog (all its processes together) and a timeout. "
             "tests/errors/test_tour.py runs a fast fifth of them and fails on any data loss, traceback, hang or "
             "memory overrun.", "",
             f"**{len(rows)} cases:** " + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + ".", ""]
    if bad:
        lines += ["## What is wrong", "", "| case | kind | outcome | what happened |", "|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['kind']} | {r['outcome']} | {cell(r['detail'])} |" for r in bad]
        lines.append("")
    lines += ["## Every case", "", "| case | kind | expected | outcome | exit | peak GB | seconds | what happened |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['kind']} | {r['expect']} | {r['outcome']} | {r['rc']} | {r['peak_gb']} | "
              f"{r['seconds']} | {cell(r['detail'] + (' (' + r['note'] + ')' if r.get('note') else ''))} |"
              for r in rows]
    return "\n".join(lines) + "\n"


WORKSPACE = re.compile(r"/[^\s'\"]*?/cnnviz-tour-[A-Za-z0-9_]+/([^/\s'\"]+)")


def cell(text: str) -> str:
    """A table cell: the run's temporary folders written WS (the case's workspace) or FIXTURES."""
    text = WORKSPACE.sub(lambda m: "FIXTURES" if m.group(1) == "fixtures" else "WS", text)
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--quick", action="store_true", help="the pytest's cases only")
    parser.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(ROOT)}")
    parser.add_argument("--results", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces (their folder is printed)")
    parser.add_argument("--merge", type=Path, help="rows of an earlier --results file for the cases not run now "
                        "(the page then lists every case)")
    args = parser.parse_args(argv)
    everything = cases()
    wanted = set(args.only.split(",")) if args.only else set(QUICK) if args.quick else None
    selected = [c for c in everything if wanted is None or c.name in wanted]
    if wanted and len(selected) != len(wanted):
        parser.error(f"no such case: {sorted(wanted - {c.name for c in everything})}")
    root = Path(tempfile.mkdtemp(prefix="cnnviz-tour-"))
    try:
        rows = run_cases(selected, root, lambda r: print(f"{r['outcome']:>12}  {r['case']:<32} {r['detail']}",
                                                            flush=True))
    finally:
        if args.keep:
            print(f"workspaces kept in {root}")
        else:
            for p in root.rglob("*"):  # the read-only folders of the case that made them
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
            shutil.rmtree(root, ignore_errors=True)
    if args.merge:
        ran = {r["case"] for r in rows}
        earlier = {r["case"]: r for r in json.loads(args.merge.read_text())}
        rows = [next(r for r in rows if r["case"] == c.name) if c.name in ran else earlier[c.name]
                for c in everything if c.name in ran or c.name in earlier]
    if args.results:
        args.results.write_text(json.dumps(rows, indent=1))
    if args.write:
        PAGE.parent.mkdir(parents=True, exist_ok=True)
        PAGE.write_text(page(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
