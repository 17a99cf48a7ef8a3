"""Fixtures of the command-line tests."""
from __future__ import annotations

import shutil

import pytest

from . import IMAGES


@pytest.fixture
def images(tmp_path):
    """A private copy of the shared images (kitten_224.png, fish.png)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for src in sorted(IMAGES.glob("*.png")):
        shutil.copy(src, folder / src.name)
    return folder
