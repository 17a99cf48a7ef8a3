#!/usr/bin/env python3
"""Write scikit-image's sample photographs as PNGs, for trying ``cnnviz`` on real pictures.

    python models/sample_images.py [OUT_DIR]     # default: out/samples

The photos ship inside the scikit-image wheel (``pip install -e '.[models]'``), so nothing is downloaded:
``chelsea`` (a tabby cat, ImageNet classes 281-285), ``coffee`` (a cup of coffee), ``astronaut`` (Eileen Collins)
and ``rocket`` (a rocket on its launch pad). Existing files are replaced (the content is always the same).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEFAULT_DIR = Path("out") / "samples"


def photo(name: str):
    """The photo as a uint8 (H, W, 3) RGB array."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}.")
    import skimage.data

    return getattr(skimage.data, name)()


def write_samples(out_dir=DEFAULT_DIR, names=PHOTOS) -> list[Path]:
    """Write each photo as ``OUT_DIR/NAME.png``; returns the paths."""
    from onnx_cnnviz.image import save_image

    out_dir = Path(out_dir)
    return [save_image(out_dir / f"{name}.png", photo(name), overwrite=True) for name in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=str(DEFAULT_DIR), help="folder for the PNGs "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        paths = write_samples(args.out_dir)
    except ImportError as exc:
        print(f"sample_images: error: the photos come with scikit-image ({exc}): pip install -e '.[models]' "
              "(or: pip install scikit-image).", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} photos to {args.out_dir}: {', '.join(p.name for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
