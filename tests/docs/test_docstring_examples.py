"""The ``>>>`` examples of the library's docstrings run, as the fenced examples of the pages do (an example in the
API reference cannot rot either)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import onnx_cnnviz


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(onnx_cnnviz.__path__, "onnx_cnnviz."):
        spec = importlib.util.find_spec(info.name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as source:
            if ">>> " in source.read():
                names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_some_docstrings_have_examples():
    assert len(MODULES) >= 3, MODULES


@pytest.mark.quick
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} mentions '>>> ' but doctest found no example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
