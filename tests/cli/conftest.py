"""Fixtures of the command-line tests."""
from __future__ import annotations

import shutil

import pytest

from tests.tiny_models import CLASSES, gap_classifier, save, write_png

from . import IMAGES


@pytest.fixture
def images(tmp_path):
    """A private copy of the shared images (kitten_224.png, fish.png)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for src in sorted(IMAGES.glob("*.png")):
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture
def inputs(tmp_path):
    """A folder of user files: the tiny model (no metadata), its labels and two pictures."""
    folder = tmp_path / "in"
    save(gap_classifier(), folder / "model.onnx")
    (folder / "labels.txt").write_text("".join(f"class{i}\n" for i in range(CLASSES)))
    write_png(folder / "a.png", seed=1)
    write_png(folder / "b.png", seed=2)
    return folder
