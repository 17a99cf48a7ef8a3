"""Fixtures of the documentation tests: the example folder, built once per session and copied per test."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tests.docs import sandbox


@pytest.fixture(scope="session")
def example_template(tmp_path_factory) -> Path:
    return sandbox.build(tmp_path_factory.mktemp("docs-examples"))


@pytest.fixture
def example_dir(example_template, tmp_path) -> Path:
    """A fresh copy of the example folder (links kept as links), with ``../shared`` beside it."""
    work = tmp_path / "work"
    shutil.copytree(example_template, work, symlinks=True)
    if SHARED.exists():
        os.symlink(SHARED, tmp_path / "shared")
    return work
