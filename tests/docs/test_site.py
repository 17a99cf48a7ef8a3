"""The documentation site: `mkdocs build --strict` passes, the reference pages follow the code (a toy method, a toy
metric and a toy backward rule registered now appear in the built tables, a toy click option in the CLI page), and
the built pages render with their pictures in headless Chromium."""
from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

pytest.importorskip("mkdocs", reason="the docs tools are not installed (mkdocs, mkdocs-material, mkdocstrings, "
                    "mkdocs-click)")


def build_site(site_dir: Path) -> Path:
    """Build the site from mkdocs.yml into ``site_dir`` in this process (so registry changes made by the test are
    seen), strict: a warning fails the build."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(str(REPO / "mkdocs.yml"), site_dir=str(site_dir), strict=True)
    build(config)
    return site_dir


def _toy_map(m, x, targets=None, layer=None, *, upsample=True, normalize=True, batch_size=None, sharpness=2.5):
    """A toy map for the test: uniform."""
    return np.ones((len(x),) + tuple(x.shape[2:]), np.float32)


def _toy_metric(m, x, maps, targets=None, *, batch_size=None, progress=None, reach=7):
    raise AssertionError("never run: the test only registers it")


TOY_OP = "ToyDocsOp"


def toy_docs_rule(ctx, node, dys):
    """The toy rule of the docs test: dx = dy (never run).

    More text that the table leaves out (only the first paragraph is shown).
    """
    raise AssertionError("never run: the test only registers it")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with a toy method, a toy metric and a toy backward rule registered (all removed afterwards)."""
    from onnx_cnnviz.graph.autodiff import rules
    from onnx_cnnviz.methods import registry as methods
    from onnx_cnnviz.metrics import registry as metrics

    assert TOY_OP not in rules.RULES

    methods.register(methods.Method("toy-docs-method", "Toy docs method", _toy_map, kind="map", gradients=False,
                                    params={"sharpness": 2.5}, paper="Nobody et al. 2099"))
    metrics.register(metrics.Metric("toy-docs-metric", "Toy docs metric", _toy_metric, takes="maps",
                                    higher_is_better=True, params={"reach": 7}, paper="Nobody et al. 2099"))
    rules.register(TOY_OP)(toy_docs_rule)
    try:
        yield build_site(tmp_path_factory.mktemp("site"))
    finally:
        methods.unregister("toy-docs-method")
        metrics.unregister("toy-docs-metric")
        rules.RULES.pop(TOY_OP, None)  # the rule registry has no unregister: the test removes its own entry


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8")))


def _rows(page: Path) -> list[str]:
    """The text of each table row of a built page."""
    rows = re.findall(r"<tr>(.*?)</tr>", page.read_text(encoding="utf-8"), flags=re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", r)).split()) for r in rows]


def test_every_registered_method_is_in_the_built_table(site):
    from onnx_cnnviz.methods import registry

    rows = _rows(site / "reference" / "methods" / "index.html")
    toy = [r for r in rows if r.startswith("toy-docs-method ")]
    assert toy == ["toy-docs-method Toy docs method map no no yes no sharpness=2.5 Nobody et al. 2099"]
    for name in registry.names():
        assert any(r.startswith(f"{name} ") for r in rows), name
    occlusion = next(r for r in rows if r.startswith("occlusion "))
    assert "window=(16, 16)" in occlusion and "Zeiler & Fergus 2014" in occlusion


def test_every_registered_metric_is_in_the_built_table(site):
    from onnx_cnnviz.metrics import registry

    rows = _rows(site / "reference" / "metrics" / "index.html")
    assert "toy-docs-metric Toy docs metric maps higher probability no reach=7 Nobody et al. 2099" in rows
    for name in registry.names():
        assert any(r.startswith(f"{name} ") for r in rows), name


def test_every_backward_rule_is_in_the_built_table(site):
    from onnx_cnnviz.graph.autodiff import rules

    rows = _rows(site / "reference" / "rules" / "index.html")
    for op in rules.supported_ops():
        assert any(r.startswith(f"{op} ") for r in rows), op
    relu = next(r for r in rows if r.startswith("Relu "))
    assert "relu_vanilla relu_guided relu_deconvnet" in relu
    conv = next(r for r in rows if r.startswith("Conv "))
    assert "conv.py conv same same" in conv
    toy = [r for r in rows if r.startswith(f"{TOY_OP} ")]
    assert toy == [f"{TOY_OP} test_site.py toy_docs_rule same same The toy rule of the docs test: dx = dy (never "
                   "run)."]


def test_every_environment_setting_is_in_the_built_table(site):
    from onnx_cnnviz.settings import SETTINGS

    rows = _rows(site / "reference" / "settings" / "index.html")
    assert len(rows) == len(SETTINGS) + 1  # the header
    for name, setting in SETTINGS.items():
        assert any(r.startswith(f"{name} {setting.kind} ") for r in rows), name
    assert "CNNVIZ_SHARE_WEIGHTS flag 1 the sessions of one model share its weights" in " ".join(rows)


def test_the_cli_reference_lists_every_command_and_option(site):
    from onnx_cnnviz.cli.main import cli

    text = _text(site / "reference" / "cli" / "index.html")
    assert "Sentinel" not in text  # click's marker of "no default" (docs/hooks/generated.py shows a dash)
    for name, command in cli.commands.items():
        if command.hidden:
            continue
        assert f"cnnviz {name}" in text, name
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and not getattr(param, "hidden", False):
                    assert opt in text, (name, opt)


def test_the_cli_reference_shows_each_description_as_help_does(site):
    """A command's docstring goes on after a form feed with its Args for the API reader; the CLI page stops there,
    as ``--help`` does (docs/hooks/generated.py)."""
    import click

    from onnx_cnnviz.cli.main import cli

    page = _text(site / "reference" / "cli" / "index.html")
    assert "\f" not in page and "Args:" not in page and "click stops at the form" not in page
    cut = [name for name, command in cli.commands.items() if "\f" in (command.help or "")]
    assert {"inspect", "export-graph", "filters", "convert"} <= set(cut), cut

    def words(text: str) -> str:  # markup and punctuation aside (code spans become tags on the page)
        return " ".join(re.findall(r"\w+", text))

    for name in cut:
        description = words(cli.commands[name].help.partition("\f")[0])
        assert description in words(click.Context(cli.commands[name], info_name=name).get_help()), name
        assert description in words(page), name


def test_a_new_cli_option_reaches_the_built_reference(site, tmp_path):
    """Add an option to a command, rebuild: it is in the CLI page (the site built without it does not have it)."""
    import click

    from onnx_cnnviz.cli.main import cli

    command = cli.commands["inspect"]
    option = click.Option(["--toy-docs-flag"], is_flag=True, help="A flag the docs test adds.")
    command.params.append(option)
    try:
        site_with_flag = build_site(tmp_path / "site")
    finally:
        command.params.remove(option)
    assert "--toy-docs-flag" in _text(site_with_flag / "reference" / "cli" / "index.html")
    assert "A flag the docs test adds." in _text(site_with_flag / "reference" / "cli" / "index.html")
    assert "--toy-docs-flag" not in _text(site / "reference" / "cli" / "index.html")


def test_the_api_reference_documents_the_public_functions(site):
    text = _text(site / "reference" / "api" / "methods" / "index.html")
    for name in ("grad_cam", "grad_cam_pp", "saliency", "integrated_gradients", "occlusion", "register"):
        assert name in text, name
    model_page = _text(site / "reference" / "api" / "model" / "index.html")
    assert "load" in model_page
    # Sphinx roles of the docstrings are rendered as code, not as literal ":class:" text (docs/hooks/sphinx_roles.py)
    assert ":class:" not in model_page and ":func:" not in model_page and ":mod:" not in model_page


@pytest.mark.parametrize("kind", ["methods", "metrics"])
def test_every_registered_entrys_module_has_its_api_section(site, kind):
    """The API page of methods (metrics) documents the module of every library function the registry runs, Recipro-CAM's
    included (the modules are read from the registry at build time; a test's toy entry has none)."""
    from onnx_cnnviz.methods.registry import METHODS
    from onnx_cnnviz.metrics.registry import METRICS

    page = (site / "reference" / "api" / kind / "index.html").read_text(encoding="utf-8")
    entries = METHODS if kind == "methods" else METRICS
    modules = {entry.func.__module__ for entry in entries.values()}
    assert "tests.docs.test_site" in modules and 'id="tests.docs.test_site"' not in page
    library = sorted(m for m in modules if m.startswith("onnx_cnnviz."))
    assert len(library) >= 5, library
    for module in library:
        assert page.count(f'id="{module}"') == 1, module
    if kind == "methods":
        assert 'id="onnx_cnnviz.methods.reciprocam"' in page


def test_every_public_name_of_the_tasks_package_is_documented(site):
    """Each function and class of ``onnx_cnnviz.tasks.__all__`` has its block on the targets and tasks page, those that
    share their name with a submodule (``drise``, ``nms``: griffe documents the module under that name) included."""
    import inspect

    from onnx_cnnviz import tasks

    page = (site / "reference" / "api" / "targets" / "index.html").read_text(encoding="utf-8")
    missing = []
    for name in tasks.__all__:
        obj = getattr(tasks, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if f'id="onnx_cnnviz.tasks.{name}"' not in page and f'id="{obj.__module__}.{name}"' not in page:
                missing.append(name)
    assert not missing, missing
    assert 'id="onnx_cnnviz.tasks.drise.drise"' in page and 'id="onnx_cnnviz.tasks.nms.nms"' in page


def test_the_validation_pages_are_in_the_site(site):
    for page in ("what_loads", "dynamo_sweep", "faithfulness", "pointing_game", "sanity_check", "ray"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "img" / "report.png").is_file() and (site / "sanity_check.png").is_file()


# --- the built pages in headless Chromium -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    from tests.cli import chromium

    path, reason = chromium.find_or_install()
    if path is None:
        pytest.skip(reason)
    return path


class _Url:
    """An http URL where ``chromium.open_page`` expects a file path (it navigates to ``page.resolve().as_uri()``)."""

    def __init__(self, url: str):
        self.url = url

    def resolve(self):
        return self

    def as_uri(self) -> str:
        return self.url


@pytest.fixture(scope="module")
def served(site):
    """The built site over HTTP on a free local port, as `mkdocs serve` shows it: from file:// the theme's search
    worker cannot load its index (a script error that no reader sees)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # no request lines in the test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("page, pictures", [
    ("index.html", {"img/report.png"}),
    ("guides/inside-the-network/index.html", {"img/class_model_tabby.png", "img/class_model_king_penguin.png",
                                              "img/class_model_tabby_before.png", "img/inversion_cat.png",
                                              "img/patches.png"}),
    ("guides/detectors/index.html", {"img/detector_layout.png", "img/detector_text.png"}),
])
def test_pages_render_with_their_pictures_in_chromium(site, served, browser, page, pictures, tmp_path,
                                                      record_property):
    """The page loads over HTTP, every picture it names is decoded (complete, non-zero width), no script throws;
    the full-page screenshot is kept in the test's folder, named in the test's report (the ``screenshot`` property of
    the JUnit XML, and the captured output), and copied to $CNNVIZ_KEEP_SCREENSHOT_DIR when set."""
    import os
    import shutil

    from tests.cli import chromium

    path = site / page
    html_text = path.read_text(encoding="utf-8")
    for picture in pictures:
        assert Path(picture).name in html_text, picture
    shot = tmp_path / (page.replace("/", "_").replace(".html", "") + ".png")
    seen = chromium.open_page(browser, _Url(served + page), shot)
    assert len(seen["images"]) >= len(pictures), seen["images"]
    assert all(complete and width > 0 for complete, width, _ in seen["images"]), seen["images"]
    assert seen["exceptions"] == [] and seen["log"] == [], (seen["exceptions"], seen["log"])
    assert shot.stat().st_size > 30_000
    print(f"screenshot of {page}: {shot}")
    record_property("screenshot", str(shot))
    if os.environ.get("CNNVIZ_KEEP_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["CNNVIZ_KEEP_SCREENSHOT_DIR"]) / shot.name)
