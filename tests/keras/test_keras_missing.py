"""Without the keras extra (the main venv), ``cnnviz convert keras`` fails with one line naming the extra."""
from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed here")
def test_convert_keras_without_the_extra(tmp_path):
    from onnx_cnnviz.cli.main import cli

    (tmp_path / "m.keras").write_bytes(b"")
    result = CliRunner().invoke(cli, ["convert", "keras", str(tmp_path / "m.keras"), "--out",
                                      str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'onnx-cnnviz[keras]'" in lines[0], result.output
