"""SmoothGrad's samples and Integrated Gradients' steps are capped (methods.attribution.MAX_SAMPLES / MAX_STEPS):
a value above the cap is a typed error before any run, in the library and through the CLI (the bad-input tour's
``--param smoothgrad.samples=100000000`` ran for hours at constant memory)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.methods.attribution import MAX_SAMPLES, MAX_STEPS, ig_steps

from ..tiny_models import gap_classifier, save, write_png

pytestmark = pytest.mark.quick


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save(gap_classifier(size=16), tmp_path_factory.mktemp("caps") / "tiny.onnx")
    return cv.load(path), path


def test_smoothgrad_samples_above_the_cap_refused_before_any_run(tiny, monkeypatch):
    m, _ = tiny
    x = np.zeros((1, 3, 16, 16), np.float32)
    monkeypatch.setattr(m, "run", lambda *a, **k: pytest.fail("ran the model"), raising=False)
    with pytest.raises(InputError, match=f"between 1 and {MAX_SAMPLES}"):
        cv.smoothgrad(m, x, samples=MAX_SAMPLES + 1)
    with pytest.raises(InputError, match="between 1"):
        cv.smoothgrad(m, x, samples=0)


def test_smoothgrad_at_the_cap_boundary_is_accepted(tiny):
    m, _ = tiny
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    assert cv.smoothgrad(m, x, samples=3).shape == x.shape


@pytest.mark.parametrize("integration", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_steps_above_the_cap_refused(tiny, integration):
    m, _ = tiny
    with pytest.raises(InputError, match=f"at most {MAX_STEPS}"):
        ig_steps(MAX_STEPS + 1, integration)
    with pytest.raises(InputError, match=f"at most {MAX_STEPS}"):
        cv.integrated_gradients(m, np.zeros((1, 3, 16, 16), np.float32), steps=10**20, integration=integration)
    assert len(ig_steps(MAX_STEPS, integration)[0]) == MAX_STEPS


def test_cli_refuses_huge_samples_in_one_line(tiny, tmp_path):
    _, path = tiny
    image = write_png(tmp_path / "im.png", size=16)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "onnx_cnnviz.cli.main", "explain", str(path), str(image), "--out",
                           str(out), "-m", "smoothgrad", "--param", "smoothgrad.samples=100000000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "between 1 and" in done.stderr and "Traceback" not in done.stderr
    assert not any(out.glob("*.png")) if out.exists() else True
