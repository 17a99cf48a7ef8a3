"""Environment settings are read in one place (onnx_cnnviz/settings.py), when used: a malformed value is an
InputError with one line of cause, and the command line prints that line, not a traceback."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from onnx_cnnviz import settings
from onnx_cnnviz.errors import InputError

GAP_CNN = Path(__file__).resolve().parents[2] / "models" / "gap_cnn.onnx"


@pytest.mark.parametrize("value, expected", [("", 2 ** 28), ("  ", 2 ** 28), ("0", 0), ("4096", 4096)])
def test_bytes_setting_reads_whole_numbers(monkeypatch, value, expected):
    monkeypatch.setenv("CNNVIZ_HOLD_ABOVE_BYTES", value)
    assert settings.HOLD_ABOVE_BYTES.read() == expected


@pytest.mark.parametrize("value", ["1GB", "-5", "1e9", "٣", "0x10", "2.5"])
def test_bytes_setting_refuses_anything_else(monkeypatch, value):
    monkeypatch.setenv("CNNVIZ_HOLD_MIN_BYTES", value)
    with pytest.raises(InputError, match="CNNVIZ_HOLD_MIN_BYTES must be a whole number of bytes"):
        settings.HOLD_MIN_BYTES.read()


@pytest.mark.parametrize("value, expected", [("1", True), ("YES", True), ("on", True), ("0", False), ("false", False),
                                             ("Off", False), ("", True)])
def test_flag_setting(monkeypatch, value, expected):
    monkeypatch.setenv("CNNVIZ_SHARE_WEIGHTS", value)
    assert settings.SHARE_WEIGHTS.read() is expected


def test_flag_setting_refuses_a_word_it_does_not_know(monkeypatch):
    monkeypatch.setenv("CNNVIZ_SHARE_WEIGHTS", "maybe")
    with pytest.raises(InputError, match="CNNVIZ_SHARE_WEIGHTS must be 1 or 0"):
        settings.SHARE_WEIGHTS.read()


def test_check_all_names_the_malformed_variable(monkeypatch):
    for name in settings.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    settings.check_all()
    monkeypatch.setenv("CNNVIZ_DEBUG", "verbose")
    with pytest.raises(InputError, match="CNNVIZ_DEBUG"):
        settings.check_all()


def test_every_setting_the_library_reads_is_in_the_table():
    """No module but settings.py reads a CNNVIZ_ variable from the environment, and every CNNVIZ_ name the library
    mentions is a Setting of the table."""
    root = Path(settings.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "settings.py":
            continue
        text = path.read_text()
        if "os.environ" in text or "getenv(" in text:
            assert "CNNVIZ_" not in text, f"{path} reads the environment and names a CNNVIZ_ variable"
        for name in re.findall(r"CNNVIZ_[A-Z_]+", text):
            assert name in settings.SETTINGS, f"{path} names {name}, which is no Setting"


@pytest.mark.parametrize("name, value", [("CNNVIZ_HOLD_ABOVE_BYTES", "1GB"), ("CNNVIZ_SHARE_WEIGHTS", "maybe")])
def test_the_cli_prints_one_line_not_a_traceback(name, value):
    env = {**os.environ, name: value}
    env.pop("CNNVIZ_DEBUG", None)
    run = subprocess.run([sys.executable, "-m", "onnx_cnnviz.cli.main", "inspect", str(GAP_CNN)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert f"cnnviz: error: the environment variable {name} must be" in run.stderr
