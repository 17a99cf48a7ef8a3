"""griffe's docstring warnings, which stop the strict site build (mkdocs.yml), hold over the whole package: every
warning comes from a module of docs/hooks/docstring_warnings.py's PENDING list, and every module of that list still
has one (so the list shrinks as modules are converted, and cannot go stale)."""
from __future__ import annotations

import importlib.util
import logging
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

griffe = pytest.importorskip("griffe", reason="the docs tools are not installed")

#: mkdocs.yml's docstring options for the API reference.
OPTIONS = {"warn_unknown_params": True, "warn_missing_types": False, "warnings": True}


def _pending() -> frozenset:
    spec = importlib.util.spec_from_file_location("docstring_warnings", REPO / "docs" / "hooks" /
                                                  "docstring_warnings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PENDING


def docstring_warnings(package: str, search_path: Path) -> list[tuple[str, str]]:
    """(module path, message) of every warning griffe gives while parsing every docstring of ``package`` in Google
    style with mkdocs.yml's options."""
    found = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING and ".py:" in record.getMessage():
                found.append(record.getMessage())

    handler = Collect()
    # griffe logs to "griffe", or, once mkdocstrings has built a site in this process (tests/docs/test_site.py), to
    # "mkdocs.plugins.griffe" with a "griffe: " prefix: listen to both.
    loggers = [logging.getLogger("griffe"), logging.getLogger("mkdocs.plugins.griffe")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        root = griffe.load(package, search_paths=[str(search_path)], docstring_parser="google",
                           docstring_options=OPTIONS)
        stack = [root]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None:
                obj.docstring.parsed  # noqa: B018 (parsing is what warns)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    out = []
    for message in found:
        path = Path(re.search(r"(\S+)\.py:\d+:", message).group(1))
        if path.is_absolute():
            path = path.relative_to(search_path)
        out.append((path.as_posix().removesuffix("/__init__").replace("/", "."), message))
    return out


@pytest.fixture(scope="module")
def warnings_by_module():
    return docstring_warnings("onnx_cnnviz", REPO)


def test_only_pending_modules_warn(warnings_by_module):
    pending = _pending()
    unexpected = [message for module, message in warnings_by_module if module not in pending]
    assert not unexpected, ("griffe warns on docstrings outside docs/hooks/docstring_warnings.py's PENDING (the "
                            "strict site build stops on them): " + "; ".join(unexpected))


def test_every_pending_module_still_warns(warnings_by_module):
    warned = {module for module, _ in warnings_by_module}
    converted = sorted(_pending() - warned)
    assert not converted, f"{converted} no longer warn: remove them from PENDING in docs/hooks/docstring_warnings.py"


def test_a_malformed_docstring_warns(tmp_path):
    """The check can fail: a parameter the signature does not have, in a throwaway package."""
    package = tmp_path / "toy_docs_pkg"
    package.mkdir()
    (package / "__init__.py").write_text('def f(a):\n    """Toy.\n\n    Args:\n        a: one.\n        b, c: two '
                                         'names on one line.\n    """\n')
    try:
        found = docstring_warnings("toy_docs_pkg", tmp_path)
    finally:
        sys.modules.pop("toy_docs_pkg", None)
    assert [module for module, _ in found] == ["toy_docs_pkg"], found
    assert "b, c" in found[0][1]
