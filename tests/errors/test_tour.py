"""A fast fifth of the bad-input tour (benchmarks/bad_input_tour.py, issue 24): each case a ``cnnviz`` subprocess on
small models made on the spot, under the tour's memory watchdog (2 GB, the whole process group) and timeout. None
may lose a user's file, print a traceback, hang, pass the memory limit or answer wrong input with exit 0.

The whole tour (171 cases, docs/validation/bad-input-tour.md) is a benchmark: ``benchmarks/bad_input_tour.py
--write``.
"""
from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("bad_input_tour", REPO / "benchmarks" / "bad_input_tour.py")
tour = importlib.util.module_from_spec(_spec)
sys.modules["bad_input_tour"] = tour
_spec.loader.exec_module(tour)

CASES = {case.name: case for case in tour.cases()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The tour's fixtures (tiny models, three pictures), made once for the module's cases."""
    folder = tmp_path_factory.mktemp("tour")
    tour.prepare(folder)
    yield folder
    for p in folder.rglob("*"):  # out-readonly's folder, were it run here
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


@pytest.mark.parametrize("name", tour.QUICK)
def test_tour_case_is_safe(root, name):
    row = tour.run_case(CASES[name], root)
    assert row["outcome"] not in (*tour.FAILURES, "silent wrong", "setup failed"), row
    if CASES[name].expect == "error":
        assert row["outcome"] == "typed error", row


def test_the_quick_cases_are_cases_and_cover_every_kind_of_harm():
    assert set(tour.QUICK) <= set(CASES)
    kinds = {CASES[name].kind for name in tour.QUICK}
    assert {"model", "image", "option", "size", "output", "resume", "json", "env"} <= kinds
    assert len(CASES) >= 100


def _result(rc=1, stderr="", killed=None):
    return {"rc": rc, "stdout": "", "stderr": stderr, "peak": 0, "seconds": 1.0, "killed": killed}


def test_the_classifier_names_each_harm():
    """The tour can fail: each harm is named from what the run left (no CLI run needed)."""
    bad, good = tour.Case("x", "model", ""), tour.Case("y", "model", "", expect="ok")
    typed = "cnnviz: warning: something\ncnnviz: error: the model is empty; give another.\n"
    assert tour.classify(bad, _result(stderr=typed), [], None)[0] == "typed error"
    assert tour.classify(bad, _result(stderr=typed), ["precious.txt: changed"], None)[0] == "data loss"
    trace = "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: boom\n"
    assert tour.classify(bad, _result(stderr=trace), [], None) == ("traceback", "ValueError: boom")
    assert tour.classify(bad, _result(rc=1, stderr="Killed\n"), [], None)[0] == "traceback"
    assert tour.classify(bad, _result(rc=-9, killed="hang"), [], None)[0] == "hang"
    assert tour.classify(bad, _result(rc=0), [], None)[0] == "silent wrong"
    assert tour.classify(good, _result(rc=0), [], "a.json holds NaN or Infinity")[0] == "silent wrong"
    assert tour.classify(good, _result(rc=0), [], None)[0] == "success"
    assert tour.classify(good, _result(stderr=typed), [], None)[0] == "refused"


def test_the_watchdog_stops_a_run_at_its_timeout(tmp_path):
    result = tour.run_cli(["--version"], tmp_path, {}, timeout=0.0)  # looked at before Python has even started
    assert result["killed"] == "hang" and result["rc"] == -9


def test_finite_outputs_finds_nan_in_json_and_npy(tmp_path):
    import numpy as np

    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text('{"score": 1.5}')
    np.save(out / "a.npy", np.ones(3))
    assert tour.finite_outputs(tmp_path) is None
    (out / "b.json").write_text('{"score": NaN}')
    assert "NaN" in tour.finite_outputs(tmp_path)
    (out / "b.json").unlink()
    np.save(out / "b.npy", np.array([1.0, np.inf]))
    assert "not finite" in tour.finite_outputs(tmp_path)
