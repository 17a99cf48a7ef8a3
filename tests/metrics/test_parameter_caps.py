"""Issue 24 point 5: every metric's samples, steps and percentiles are capped by a documented constant, refused with
an InputError before the model runs (``sensitivity-max`` with ``samples=100000000`` reached 15 GB), and the jobs of
the curves are made as they are scored instead of listed up front.

Model: tests/tiny_models.py's gap_classifier (CLASSES = 5); the model's runs are replaced by a function that fails,
so a refusal that came after any work would show as that failure instead of the InputError.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.metrics import curves, imputation, robustness
from onnx_cnnviz.metrics.curves import LazyJobs
from tests.tiny_models import gap_classifier


def idle_model(size: int = 8):
    """The tiny classifier, whose every run fails: the checks must come first."""
    m = cv.load(gap_classifier(size=size))

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the parameters were checked")

    m.scores = m.run = no_work
    return m


def images(size: int = 8, n: int = 2):
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("samples", [robustness.MAX_SAMPLES + 1, 100_000_000, 10 ** 20])
def test_sensitivity_max_samples_are_capped_before_any_work(samples):
    with pytest.raises(InputError, match=f"more than the {robustness.MAX_SAMPLES:,} perturbations per image"):
        robustness.sensitivity_max(idle_model(), images(), "saliency", samples=samples)


@pytest.mark.parametrize("samples", [robustness.MAX_SAMPLES + 1, 100_000_000])
def test_infidelity_samples_are_capped_before_any_work(samples):
    x = images()
    with pytest.raises(InputError, match=f"more than the {robustness.MAX_SAMPLES:,} perturbations per image"):
        robustness.infidelity(idle_model(), x, np.ones_like(x), samples=samples)


def test_samples_at_the_cap_are_accepted():
    assert robustness.check_samples(robustness.MAX_SAMPLES) == robustness.MAX_SAMPLES


@pytest.mark.parametrize("metric", [curves.deletion, curves.insertion])
def test_curve_steps_are_capped_before_any_work(metric):
    # 320x320 = 102,400 pixels: one pixel per step is more steps than MAX_STEPS (100,000); two is fewer.
    x = images(size=320, n=1)
    with pytest.raises(InputError, match="pixels_per_step=1 gives 102,400 steps per curve on 320x320 images, more "
                                         "than the 100,000 allowed .* give pixels_per_step >= 2"):
        metric(idle_model(320), x, np.zeros((1, 320, 320), np.float32), pixels_per_step=1)
    assert curves.check_steps(2, (320, 320)) == 2


@pytest.mark.parametrize("count", [imputation.MAX_PERCENTILES + 1, 10 ** 6])
def test_road_percentiles_are_capped_before_any_work(count):
    x = images()
    percentiles = np.linspace(0, 100, count)
    with pytest.raises(InputError, match=f"percentiles holds {count:,} values, more than the "
                                         f"{imputation.MAX_PERCENTILES:,} allowed"):
        imputation.road(idle_model(), x, np.zeros((2, 8, 8), np.float32), percentiles=percentiles)


def test_lazy_jobs_read_like_the_list_they_replace():
    made = [(i, j) for i in range(3) for j in range(1, 5)]
    jobs = LazyJobs(len(made), lambda k: (k // 4, k % 4 + 1))
    assert len(jobs) == len(made)
    assert [jobs[k] for k in range(len(made))] == made and jobs[-1] == made[-1]
    for start, stop in [(0, 5), (5, 100), (11, 12), (12, 12)]:
        assert jobs[start:stop] == made[start:stop]
    with pytest.raises(IndexError):
        jobs[len(made)]


def test_deletion_scores_as_many_points_as_before():
    # The lazily made jobs cover every (image, step): each point of the curve is scored, none twice.
    m = cv.load(gap_classifier(size=8))
    x = images()
    calls = []
    scores = m.scores

    def counted(batch, batch_size=None):
        calls.append(len(batch))
        return scores(batch, batch_size=batch_size)

    m.scores = counted
    result = curves.deletion(m, x, np.random.default_rng(1).random((2, 8, 8)).astype(np.float32), pixels_per_step=5,
                             batch_size=4)
    steps = -(-64 // 5)
    assert sum(calls) == len(x) + len(x) * steps  # the clean images, then every step of every image once
    assert result.curve.shape == (2, steps + 1) and np.isfinite(result.curve).all()
