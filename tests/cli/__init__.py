"""Tests of the ``cnnviz`` command line, and what its test modules share: :func:`invoke`, the shared SqueezeNet's
flags :data:`SQZ` (the ``images`` fixture is in conftest.py)."""
from __future__ import annotations

from click.testing import CliRunner

from onnx_cnnviz.cli.main import cli
from tests.conftest import SHARED

LABELS = SHARED / "models" / "imagenet_classes.txt"
IMAGES = SHARED / "images"
SQZ_PREPROCESS = ["--preprocess", "caffe"]  # the SqueezeNet's preprocessing (the commands that name no class)
SQZ = [*SQZ_PREPROCESS, "--labels", LABELS]  # the SqueezeNet's preprocessing and class names


def invoke(*args, **kwargs):
    """Run ``cnnviz ARGS`` in-process (click's CliRunner; exceptions not caught, so a bug shows its traceback)."""
    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)


def one_line_error(result) -> str:
    """The last stderr line of a failed command, checked to be one ``cnnviz: error:`` line without a traceback."""
    text = result.stderr
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("cnnviz: error: "), text
    return lines[-1]
