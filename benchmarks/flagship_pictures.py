"""Pictures from the flagship model: EfficientNet-Lite0 with the library's default settings, and what they measure.

    .venv/bin/python benchmarks/flagship_pictures.py [--out docs/img] [--no-before] [--squeezenet PATH] [--write]

Builds the model (``models/build_efficientnet_lite0.py``, kept when already built) and the four sample photographs
(``models/sample_images.py``, into ``out/samples``), then writes into ``--out`` (``docs/img`` by default, every PNG
under 300 KB):

* ``class_model_tabby.png``, ``class_model_king_penguin.png``: ``class_model(m, c)`` with the library's defaults
  (Simonyan et al.'s class model, regularised and preconditioned; see :mod:`onnx_cnnviz.methods.optimise`);
  ``class_model_tabby_before.png``: the same with the former defaults (the grey texture of issue 11);
* ``inversion_cat.png``: the cat photo and ``invert(m, x)`` at the default inversion layer
  (:func:`onnx_cnnviz.methods.features.mid_layer`), side by side;
* ``patches.png``: ``top_patches`` at its default layer over the four photos: one row per channel (eight channels,
  each the most selective for one photo), its patches left to right;
* ``report.png``: the top of the HTML page ``cnnviz report`` writes for the cat and the coffee photos, rendered by
  headless Chromium (``tests/cli/chromium.py``).

and prints the measured numbers as a markdown table: the class model's target probability (softmax of the final
image's scores) and its coarse contrast (standard deviation of the grey picture blurred with sigma 4 px and shrunk to
28x28: contrast at the scale of object parts; a flat texture scores about 1), before (the former defaults) and after;
the inversion's relative code error ``||Phi(y) - Phi_0|| / ||Phi_0||`` and its correlation with the photo; the
patches' receptive field. ``--squeezenet`` (default ``../shared/models/squeezenet1.1-imagenet-fp16.onnx`` when
present) adds the class model of 'tabby' and the inversion of the cat photo on SqueezeNet 1.1 (caffe preprocessing),
before and after, to show it did not get worse. ``--no-before`` skips every run with the former defaults. About 5
minutes on 2 CPU cores (2 with ``--no-before``). ``--write`` puts the table, with the date, commit and machine, in
``docs/guides/inside-the-network.md`` (between its ``flagship_pictures`` markers).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pages  # noqa: E402  (benchmarks/pages.py: this script's folder is on sys.path)

import onnx_cnnviz as cv  # noqa: E402
from onnx_cnnviz import image as im  # noqa: E402
from onnx_cnnviz.methods import features, optimise  # noqa: E402
from onnx_cnnviz.methods.receptive_field import receptive_field  # noqa: E402

MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
SAMPLES = ROOT / "out" / "samples"
WORK = ROOT / "out" / "flagship"
SQUEEZENET = ROOT.parent / "shared" / "models" / "squeezenet1.1-imagenet-fp16.onnx"
CLASSES = ((281, "tabby"), (145, "king_penguin"))
MAX_BYTES = 300_000
PAGE = ROOT / "docs" / "guides" / "inside-the-network.md"

#: The library's defaults before issue 11 (onnx_cnnviz/methods/optimise.py): no gradient preconditioning, and
#: ``invert`` at ``Model.default_layer`` (the last map) with 300 Adam steps of 0.05.
BEFORE_CLASS_MODEL = dict(lr=0.01, decay=0.005, jitter=4, blur_every=4, blur_sigma=0.5, grad_blur=None,
                          decorrelate=False)
BEFORE_INVERT = dict(steps=300, lr=0.05, grad_blur=None, decorrelate=False)


def _script(name: str):
    """models/NAME.py as a module (models/ is a folder of scripts, not a package)."""
    return _module(ROOT / "models" / f"{name}.py")


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_cnnviz_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def probability(m, x, target: int) -> float:
    s = m.scores(x[None])[0].astype(np.float64)
    p = np.exp(s - s.max())
    return float(p[target] / p.sum())


def coarse_contrast(picture: np.ndarray) -> float:
    """Standard deviation of the grey picture blurred (sigma 4 px) and shrunk to 28x28."""
    import cv2

    grey = picture.astype(np.float64).mean(axis=2)
    small = cv2.resize(cv2.GaussianBlur(grey, (0, 0), 4), (28, 28), interpolation=cv2.INTER_AREA)
    return float(small.std())


def save_png(path: Path, picture: np.ndarray, max_bytes: int = MAX_BYTES) -> Path:
    """A PNG under ``max_bytes``: as is, else with an adaptive palette, else also shrunk (the first that fits)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(picture))
    for scale, colours in ((1.0, None), (1.0, 256), (0.75, 256), (0.75, 128), (0.5, 128)):
        candidate = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)),
                                                              Image.LANCZOS)
        if colours:
            candidate = candidate.quantize(colors=colours, dither=Image.Dither.FLOYDSTEINBERG)
        buffer = io.BytesIO()
        candidate.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_bytes:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def class_models(m, out: Path, before: bool, log) -> list:
    rows = []
    for target, name in CLASSES:
        t = time.time()
        r = optimise.class_model(m, target)
        save_png(out / f"class_model_{name}.png", r.image)
        row = {"what": f"class model '{name.replace('_', ' ')}' ({target})", "p_after": probability(m, r.x, target),
               "c_after": coarse_contrast(r.image), "score_after": r.final}
        log(f"class model {target} {name}: p={row['p_after']:.4f} ({time.time() - t:.0f} s)")
        if before:
            b = optimise.class_model(m, target, **BEFORE_CLASS_MODEL)
            row.update(p_before=probability(m, b.x, target), c_before=coarse_contrast(b.image), score_before=b.final)
            if target == 281:
                save_png(out / f"class_model_{name}_before.png", b.image)
            log(f"  before: p={row['p_before']:.4f}")
        rows.append(row)
    return rows


def squeezenet_rows(path: Path, photo: Path, before: bool, log) -> tuple[dict, dict]:
    """The class model of 'tabby' and the inversion of the cat photo on SqueezeNet 1.1 (caffe preprocessing)."""
    m = cv.load(path, device="cpu")
    target = CLASSES[0][0]
    r = optimise.class_model(m, target, preprocess="caffe")
    row = {"what": f"SqueezeNet 1.1: class model 'tabby' ({target})", "p_after": probability(m, r.x, target),
           "c_after": coarse_contrast(r.image), "score_after": r.final}
    if before:
        b = optimise.class_model(m, target, preprocess="caffe", **BEFORE_CLASS_MODEL)
        row.update(p_before=probability(m, b.x, target), c_before=coarse_contrast(b.image), score_before=b.final)
    log(f"squeezenet class model: p={row['p_after']:.4f}")
    x = im.preprocess([photo], preset="caffe")
    r = optimise.invert(m, x, preprocess="caffe")
    inv = {"layer": r.layer, "field": receptive_field(m, r.layer).size[0], "err_after": r.final,
           "corr_after": float(np.corrcoef(r.x.ravel(), x.ravel())[0, 1]), "hw": m.layer(r.layer).shape[2:]}
    if before:
        b = optimise.invert(m, x, m.default_layer, preprocess="caffe", **BEFORE_INVERT)
        inv.update(layer_before=m.default_layer, field_before=receptive_field(m, m.default_layer).size[0],
                   err_before=b.final, corr_before=float(np.corrcoef(b.x.ravel(), x.ravel())[0, 1]))
    log(f"squeezenet inversion at {r.layer}: error {r.final:.3f}")
    return row, inv


def inversion(m, photo: Path, out: Path, before: bool, log) -> dict:
    prep = features.preprocessing_for(m)
    x = im.preprocess([photo], preset=prep)
    t = time.time()
    r = optimise.invert(m, x)
    shown = im.deprocess(x[0], prep)
    save_png(out / "inversion_cat.png", im.grid([shown, r.image], ncols=2, pad=4, bg=255))
    row = {"layer": r.layer, "field": receptive_field(m, r.layer).size[0], "err_after": r.final,
           "corr_after": float(np.corrcoef(r.x.ravel(), x.ravel())[0, 1]), "hw": m.layer(r.layer).shape[2:]}
    log(f"inversion at {r.layer}: error {r.final:.3f} ({time.time() - t:.0f} s)")
    if before:
        b = optimise.invert(m, x, m.default_layer, **BEFORE_INVERT)
        row.update(layer_before=m.default_layer, field_before=receptive_field(m, m.default_layer).size[0],
                   err_before=b.final, corr_before=float(np.corrcoef(b.x.ravel(), x.ravel())[0, 1]))
        log(f"  before (at {m.default_layer}): error {b.final:.3f}")
    return row


def views(photos: list, grid: int = 3, frac: float = 0.5) -> tuple[list, list]:
    """Each photo whole and as ``grid x grid`` overlapping square crops of ``frac`` of its smaller side (the model
    resizes each to its input): more places for a channel's maximum than four photos give. Returns (arrays, the photo
    index of each)."""
    pictures, owners = [], []
    for index, path in enumerate(photos):
        rgb = im.read_image(path)
        h, w = rgb.shape[:2]
        side = int(min(h, w) * frac)
        pictures.append(rgb)
        owners.append(index)
        for y in np.linspace(0, h - side, grid).astype(int):
            for x in np.linspace(0, w - side, grid).astype(int):
                pictures.append(np.ascontiguousarray(rgb[y:y + side, x:x + side]))
                owners.append(index)
    return pictures, owners


def patches(m, photos: list, out: Path, log, per_photo: int = 2, k: int = 6) -> dict:
    """``top_patches`` at its default layer over :func:`views` of the photos, for ``per_photo`` channels of each
    photo: those whose ``k`` best views all come from that photo, with the largest margin between their k-th value
    and their best value on any other photo (channels that answer to something in that photo only)."""
    pictures, owners = views(photos)
    ranked = features.top_patches(m, pictures, k=len(pictures), crops=False)
    chosen = []
    for index in range(len(photos)):
        margins = []
        for c, plist in ranked.patches.items():
            mine = [p for p in plist if owners[p.index] == index]
            other = [p.value for p in plist if owners[p.index] != index]
            if len(mine) >= k and all(owners[p.index] == index for p in plist[:k]):
                margins.append((mine[k - 1].value - max(other, default=0.0), c))
        chosen += [c for _, c in sorted(margins, reverse=True)[:per_photo]]
    result = features.top_patches(m, pictures, channels=chosen, k=k)
    save_png(out / "patches.png", result.grid(tile=80))
    rf = result.receptive_field
    sizes = sorted({p.crop.shape[:2] for ps in result.patches.values() for p in ps})
    log(f"patches at {result.layer}: field {rf.size}, channels {chosen} over {len(pictures)} views")
    return {"layer": result.layer, "field": rf.size[0], "jump": rf.jump[0], "hw": rf.layer_hw, "channels": chosen,
            "crop_sizes": sizes, "default_layer": m.default_layer, "views": len(pictures),
            "default_field": receptive_field(m, m.default_layer).size[0]}


def report_screenshot(model: Path, photos: list, out: Path, log, width: int = 1200, height: int = 1010) -> Path | None:
    chromium = _module(ROOT / "tests" / "cli" / "chromium.py")  # the tests' DevTools driver, without pytest
    browser = chromium.find()
    if browser is None:
        log("no Chromium found: report.png not made")
        return None
    folder = WORK / "report"
    cnnviz = Path(sys.executable).with_name("cnnviz")
    command = [str(cnnviz)] if cnnviz.exists() else [sys.executable, "-c",
                                                      "from onnx_cnnviz.cli.main import main; main()"]
    def rel(path):
        path = Path(path).resolve()
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    subprocess.run(command + ["report", rel(model), *map(rel, photos), "--out", rel(folder), "--overwrite",
                              "--quiet"], check=True, cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "page.png"
        state = chromium.open_page(browser, folder / "report.html", screenshot=shot, width=width)
        if state["exceptions"] or state["console"]:
            log(f"the page logged errors: {state['exceptions'] or state['console']}")
        page = im.read_image(shot)
    top = page[:min(height, page.shape[0])]
    return save_png(out / "report.png", top)


def table(class_rows, inv, patch, before: bool) -> str:
    def num(row, key, fmt):
        return format(row[key], fmt) if key in row else "–"

    lines = ["| what (EfficientNet-Lite0 unless named) | measure | former defaults | defaults now |",
             "|---|---|---:|---:|"]
    for row in class_rows:
        lines.append(f"| {row['what']} | probability of the class | {num(row, 'p_before', '.4f')} | "
                     f"{num(row, 'p_after', '.4f')} |")
        for label, key, fmt in (("class score (logit)", "score", ".1f"), ("coarse contrast (flat ≈ 1)", "c", ".1f")):
            lines.append(f"| | {label} | {num(row, key + '_before', fmt)} | {num(row, key + '_after', fmt)} |")
    for row in inv:
        lines.append(f"| {row.get('what', 'inversion of the cat photo')} | layer (field) | "
                     f"`{row.get('layer_before', '–')}` ({row.get('field_before', '–')} px) | `{row['layer']}` "
                     f"({row['field']} px, {row['hw'][0]}×{row['hw'][1]}) |")
        lines.append(f"| | relative code error | {num(row, 'err_before', '.3f')} | {num(row, 'err_after', '.3f')} |")
        lines.append(f"| | correlation with the photo | {num(row, 'corr_before', '.2f')} | "
                     f"{num(row, 'corr_after', '.2f')} |")
    largest = max(max(h, w) for h, w in patch["crop_sizes"])
    smallest = min(min(h, w) for h, w in patch["crop_sizes"])
    lines.append(f"| patches | layer (field) | `{patch['default_layer']}` ({patch['default_field']} px): failed, "
                 f"\"pads computed at run time\" | `{patch['layer']}` ({patch['field']} px, stride "
                 f"{patch['jump']}) |")
    lines.append(f"| | patch size | the whole 224×224 image | {smallest} to {largest} px a side (clipped at the "
                 f"image border), over {patch['views']} views of the 4 photos |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--no-before", dest="before", action="store_false",
                        help="skip the runs with the former defaults")
    parser.add_argument("--squeezenet", type=Path, default=SQUEEZENET if SQUEEZENET.exists() else None)
    parser.add_argument("--write", action="store_true",
                        help=f"write the table into {PAGE.relative_to(ROOT)} (section flagship_pictures)")
    args = parser.parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    start = time.time()
    model = _script("build_efficientnet_lite0").build(MODEL, log=log)
    photos = {p.stem: p for p in _script("sample_images").write_samples(SAMPLES)}
    m = cv.load(model, device="cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    class_rows = class_models(m, args.out, args.before, log)
    inv = [inversion(m, photos["chelsea"], args.out, args.before, log)]
    if args.squeezenet is not None:
        sq_class, sq_inv = squeezenet_rows(args.squeezenet, photos["chelsea"], args.before, log)
        class_rows.append(sq_class)
        inv.append({**sq_inv, "what": "SqueezeNet 1.1: inversion of the cat photo"})
    patch = patches(m, [photos[k] for k in ("chelsea", "coffee", "astronaut", "rocket")], args.out, log)
    report_screenshot(model, [photos["chelsea"], photos["coffee"]], args.out, log)
    print(table(class_rows, inv, patch, args.before))
    for path in sorted(args.out.glob("*.png")):
        log(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size // 1000} KB")
    log(f"{time.time() - start:.0f} s")
    if args.write:
        command = " ".join([".venv/bin/python benchmarks/flagship_pictures.py",
                            *(argv if argv is not None else sys.argv[1:])])
        intro = (f"Measured on the pictures above, with the model's own preprocessing "
                 f"({features.preprocessing_for(m).describe()}) (\"former defaults\": the settings before issue 11; "
                 "probability: softmax of the final picture's scores; coarse contrast: standard deviation of the grey "
                 "picture blurred with sigma 4 px and shrunk to 28×28, near 1 for a flat texture; relative code error: "
                 "‖Φ(y) − Φ₀‖ / ‖Φ₀‖ at the inverted layer)" + ("" if args.before else
                 ". This run left out the former defaults (`--no-before`: a full run took over 20 minutes on the "
                 "shared machine), so their column is empty") + ":")
        pages.write_section(PAGE, "flagship_pictures", "\n\n".join([
            pages.header("benchmarks/flagship_pictures.py", command,
                         f"The whole run took {time.time() - start:.0f} s."),
            intro, table(class_rows, inv, patch, args.before)]))
        log(f"wrote the flagship_pictures section of {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
