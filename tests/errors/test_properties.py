"""Property-based tests (hypothesis): random shapes, dtypes and values fed to the public API and to the command line
give either a typed :class:`CnnvizError` or a valid result (finite, the right shape, in [0, 1] when normalised);
the CLI only exits 0, 1 or 2 and never prints a traceback without --debug."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import onnx_cnnviz as cv
from onnx_cnnviz.cli.main import cli

from tests.tiny_models import CLASSES, gap_classifier, save, write_png

SIZE = 8
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def m():
    return cv.load(gap_classifier(SIZE), device="cpu")


# --- inputs --------------------------------------------------------------------------------------------------------
SPECIAL = [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, 1e-40]
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_, np.complex64]


@st.composite
def good_arrays(draw):
    """Valid model inputs (N, 3, 8, 8) float32 or float64: finite values, constant images, large magnitudes."""
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64]))
    kind = draw(st.sampled_from(["normal", "normal", "constant", "scaled", "sparse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, 3, SIZE, SIZE))
    if kind == "constant":
        x = np.full_like(x, draw(st.floats(-10, 10)))
    elif kind == "scaled":
        x = x * 10.0 ** draw(st.integers(-30, 30))
    elif kind == "sparse":
        x = x * (rng.random(x.shape) < 0.05)
    return x.astype(dtype)


@st.composite
def bad_arrays(draw):
    """Another rank, size or dtype, or NaN / Inf / overflowing values."""
    if draw(st.booleans()):
        shape = (draw(st.integers(0, 3)), 3, SIZE, SIZE)
    else:
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 8, 9]), min_size=0, max_size=5)))
    dtype = draw(st.sampled_from(DTYPES))
    if np.issubdtype(dtype, np.floating):
        elements = st.one_of(st.floats(-4, 4, width=16), st.sampled_from(SPECIAL))
        fill = draw(st.sampled_from([0.0, 0.5, np.nan, 1e30]))
        base = np.asarray(draw(hnp.arrays(np.float64, shape, elements=elements, fill=st.just(fill))))
        with np.errstate(over="ignore", invalid="ignore"):
            return base.astype(dtype)
    return np.zeros(shape, dtype=dtype)


def values():
    """Three in four valid inputs, else anything."""
    garbage = st.one_of(bad_arrays(), good_arrays().map(lambda a: a.tolist()), good_arrays().map(lambda a: a[0]),
                        st.none(), st.integers(), st.text(max_size=3), st.floats())
    return st.one_of(good_arrays(), good_arrays(), good_arrays(), garbage)


def targets():
    return st.one_of(st.none(), st.none(), st.integers(0, CLASSES - 1), st.integers(-2, CLASSES + 2),
                     st.lists(st.integers(-1, CLASSES), max_size=4), st.floats(), st.text(max_size=2))


def call(fn):
    """Run ``fn``: a typed error is fine (returned as None); any other exception fails the test. The outcomes show
    with ``pytest --hypothesis-show-statistics``."""
    try:
        with np.errstate(all="ignore"):
            result = fn()
    except cv.CnnvizError as exc:
        event(f"{type(exc).__name__}: {str(exc)[:40]}")
        return None
    event("valid")
    return result


def check_map(out, x, shape, normalised):
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (len(x),) + shape, out.shape
    assert np.isfinite(out).all()
    if normalised:
        assert out.min() >= 0.0 and out.max() <= 1.0


# --- the library ---------------------------------------------------------------------------------------------------
@SETTINGS
@given(x=values(), t=targets())
def test_maps_are_typed_errors_or_valid(m, x, t):
    out = call(lambda: m.scores(x))
    if out is not None:
        check_map(out, x, (CLASSES,), normalised=False)
    for fn, shape, normalised in ((cv.gradients, (3, SIZE, SIZE), False), (cv.saliency, (SIZE, SIZE), True),
                                  (cv.grad_cam, (SIZE, SIZE), True), (cv.cam, (SIZE, SIZE), True)):
        out = call(lambda: fn(m, x, targets=t))
        if out is not None:
            check_map(out, x, shape, normalised)


@st.composite
def occlusion_args(draw):
    """Mostly valid arguments (so that real maps get checked), sometimes anything."""
    if draw(st.integers(0, 9)) < 7:
        x = draw(good_arrays())
        return dict(x=x, targets=draw(st.one_of(st.none(), st.integers(0, CLASSES - 1))),
                    window=draw(st.integers(1, 4)), stride=draw(st.integers(1, 4)),
                    baseline=draw(st.one_of(st.floats(-2, 2), st.just("mean"))))
    return dict(x=draw(values()), targets=draw(targets()),
                window=draw(st.one_of(st.integers(-1, 10), st.tuples(st.integers(0, 9), st.integers(1, 3)),
                                      st.none(), st.text(max_size=2))),
                stride=draw(st.one_of(st.integers(-1, 4), st.just((1, 2)))),
                baseline=draw(st.one_of(st.floats(), st.just("x"), st.lists(st.floats(-1, 1), max_size=4))))


@SETTINGS
@given(args=occlusion_args())
def test_occlusion_is_typed_errors_or_valid(m, args):
    x = args.pop("x")
    out = call(lambda: cv.occlusion(m, x, **args))
    if out is not None:
        check_map(out, x, (SIZE, SIZE), normalised=False)


# --- the command line --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model = save(gap_classifier(SIZE), folder / "model.onnx")
    image = write_png(folder / "a.png", size=16)
    (folder / "notes.txt").write_text("not a model")
    return {"MODEL": str(model), "IMAGE": str(image), "TEXT": str(folder / "notes.txt"), "DIR": str(folder),
            "OUT": str(folder / "out")}


COMMANDS = ["explain", "explain", "occlusion", "inspect", "report", "filters", "activations", "nope"]
TOKENS = ["MODEL", "IMAGE", "TEXT", "DIR", "--out", "OUT", "--target", "3", "99", "-1", "--top-k", "0", "2",
          "--method", "gradcam", "saliency,cam", "bogus", "--layer", "relu1", "relu", "--size", "4x4", "abc",
          "--window", "2", "--stride", "1", "--overwrite", "--resume", "--json", "--quiet", "--batch-size",
          "--preprocess", "none", "--mean", "1,2", "--input", "x", "--output", "y", "--device", "cpu", "--alpha",
          "2.5", "--colormap", "viridis", "--", "", "-", "é"]


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(COMMANDS), well_formed=st.sampled_from([True, True, False]),
       args=st.lists(st.sampled_from(TOKENS), max_size=4))
def test_cli_exit_codes_and_no_traceback(files, command, well_formed, args):
    start = ["MODEL", "IMAGE", "--out", "OUT", "--overwrite"] if well_formed and command != "inspect" else []
    if well_formed and command == "inspect":
        start = ["MODEL"]
    argv = [command] + [files.get(a, a) for a in start + args]
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    event(f"exit {result.exit_code}")
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output)
    assert "Traceback" not in result.output, (argv, result.output)
    if result.exit_code == 1:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert lines and lines[-1].startswith("cnnviz: error: "), (argv, result.stderr)
