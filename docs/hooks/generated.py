"""MkDocs hook: the reference tables generated from the registries when the site is built.

A page asks for a table with a marker line, ``<!-- cnnviz:methods -->``, ``<!-- cnnviz:metrics -->``,
``<!-- cnnviz:rules -->`` or ``<!-- cnnviz:settings -->``: :func:`on_page_markdown` replaces it with the table read
from :mod:`onnx_cnnviz.methods.registry`, :mod:`onnx_cnnviz.metrics.registry`, :mod:`onnx_cnnviz.graph.autodiff.rules`
or :mod:`onnx_cnnviz.settings` at that moment. The tables are never written by hand, so registering a method (a
plugin's, say) changes the built site and nothing else has to. ``<!-- cnnviz:shadowed PACKAGE -->`` becomes the API
blocks of the package's names that griffe cannot reach (:func:`shadowed_members`), and
``<!-- cnnviz:modules methods -->`` (``metrics``) those of the modules whose functions the registry runs
(:func:`registry_modules`), so that a method's module added to the registry gets its API section too.
:func:`on_page_content` tidies the CLI reference that mkdocs-click renders, and :func:`on_config` makes mkdocs-click
stop a command's description at the form feed where click's ``--help`` stops.
"""
from __future__ import annotations

import copy
import inspect
import re

MARKER = re.compile(r"^<!-- cnnviz:(methods|metrics|rules|settings) -->$", re.MULTILINE)


def _cell(value) -> str:
    """A value as table-cell text: newlines folded; pipes (they would split the cell) and brackets (Markdown would
    read ``x[i]`` as a link) escaped."""
    text = " ".join(str(value).split())
    for char in "|[]":
        text = text.replace(char, "\\" + char)
    return text


def _params(params: dict) -> str:
    """Parameters as code spans (brackets need no escaping there; pipes still split a table cell)."""
    return ", ".join(f"`{k}={v!r}`".replace("|", "\\|") for k, v in params.items()) or "—"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def methods_table() -> str:
    """One row per registered explanation method, in registration order."""
    from onnx_cnnviz.methods import registry

    rows = ["| name | method | result | backward graph | layer | per class | signed | parameters | paper |",
            "|---|---|---|---|---|---|---|---|---|"]
    for meth in registry.METHODS.values():
        rows.append(f"| `{meth.name}` | {_cell(meth.title)} | {meth.kind} | {_yes(meth.gradients)} | "
                    f"{_yes(meth.uses_layer)} | {_yes(meth.class_specific)} | {_yes(meth.signed)} | "
                    f"{_params(meth.params)} | {_cell(meth.paper) or '—'} |")
    return "\n".join(rows)


def metrics_table() -> str:
    """One row per registered metric, in registration order."""
    from onnx_cnnviz.metrics import registry

    rows = ["| name | metric | takes | better | reads | boxes | parameters | paper |",
            "|---|---|---|---|---|---|---|---|"]
    for met in registry.METRICS.values():
        rows.append(f"| `{met.name}` | {_cell(met.title)} | {met.takes} | "
                    f"{'higher' if met.higher_is_better else 'lower'} | {met.output or '—'} | "
                    f"{_yes(met.needs_boxes)} | {_params(met.params)} | {_cell(met.paper) or '—'} |")
    return "\n".join(rows)


def _summary(func) -> str:
    doc = inspect.getdoc(func) or ""
    return _cell(doc.split("\n\n")[0]) or "—"


def rules_table() -> str:
    """One row per op_type with a backward rule: its family module, its rule function in each rule set, and the
    first paragraph of the rule's docstring."""
    from onnx_cnnviz.graph.autodiff import rules

    sets = rules.RULE_SETS
    tables = {name: rules.rule_table(name) for name in sets}
    head = "| op_type | module | " + " | ".join(f"`{s}` rule" for s in sets) + " | what it computes |"
    rows = [head, "|" + "---|" * (3 + len(sets))]
    for op in rules.supported_ops():
        funcs = [tables[s][op] for s in sets]
        module = funcs[0].__module__.rsplit(".", 1)[-1]
        names = [f"`{f.__name__}`" for f in funcs]
        if len({f.__name__ for f in funcs}) == 1:
            names = [names[0]] + ["same"] * (len(sets) - 1)
        rows.append(f"| `{op}` | `{module}.py` | " + " | ".join(names) + f" | {_summary(funcs[0])} |")
    return "\n".join(rows)


def settings_table() -> str:
    """One row per environment setting of :data:`onnx_cnnviz.settings.SETTINGS`: variable, kind, default, meaning."""
    from onnx_cnnviz.settings import SETTINGS

    rows = ["| variable | kind | default | what it does |", "|---|---|---|---|"]
    for setting in SETTINGS.values():
        default = int(setting.default) if setting.kind == "flag" else setting.default
        rows.append(f"| `{setting.name}` | {setting.kind} | `{default}` | {_cell(setting.meaning)} |")
    return "\n".join(rows)


TABLES = {"methods": methods_table, "metrics": metrics_table, "rules": rules_table, "settings": settings_table}

#: ``<!-- cnnviz:shadowed PACKAGE -->``: the API blocks of the package's public names that griffe cannot reach.
SHADOWED = re.compile(r"^<!-- cnnviz:shadowed ([\w.]+) -->$", re.MULTILINE)


def shadowed_members(package: str) -> list[str]:
    """The full paths of the public functions and classes of ``package`` that share their name with one of its
    submodules (``onnx_cnnviz.tasks.drise`` is a function and the module it lives in): griffe documents the submodule
    under that name, so the package's block leaves the function out and the page names it itself."""
    import importlib
    import pkgutil

    module = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    paths = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if name in submodules and (inspect.isfunction(obj) or inspect.isclass(obj)):
            paths.append(f"{obj.__module__}.{obj.__qualname__}")
    return paths


#: ``<!-- cnnviz:modules methods -->`` (or ``metrics``): the API blocks of the modules holding the registered entries.
MODULES = re.compile(r"^<!-- cnnviz:modules (methods|metrics) -->$", re.MULTILINE)
BLOCK = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)


def registry_modules(kind: str) -> list[str]:
    """The library modules whose functions the registered methods (``kind="methods"``) or metrics run, in
    registration order; an entry registered from outside the library (a plugin's, a test's) has no page here."""
    if kind == "methods":
        from onnx_cnnviz.methods.registry import METHODS as entries
    else:
        from onnx_cnnviz.metrics.registry import METRICS as entries
    modules = []
    for entry in entries.values():
        module = entry.func.__module__
        if module.startswith("onnx_cnnviz.") and module not in modules:
            modules.append(module)
    return modules


def _module_blocks(match: re.Match, markdown: str) -> str:
    """The blocks of a registry's modules that the page does not already document by hand."""
    written = set(BLOCK.findall(markdown))
    return "\n\n".join(f"::: {module}" for module in registry_modules(match.group(1)) if module not in written)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each table marker of the page with the table as the registries hold it now, each modules marker with
    the API blocks of the registries' modules, and each shadowed-names marker with the blocks of those names."""
    markdown = MARKER.sub(lambda match: TABLES[match.group(1)](), markdown)
    markdown = MODULES.sub(lambda match: _module_blocks(match, markdown), markdown)
    return SHADOWED.sub(lambda match: "\n\n".join(f"::: {path}" for path in shadowed_members(match.group(1))),
                        markdown)


# click 8.3 marks an option without a default with its UNSET sentinel, which mkdocs-click 0.9 prints as it is.
UNSET_DEFAULT = re.compile(r"<code>Sentinel\.UNSET</code>")


def on_page_content(html: str, page, config, files) -> str:
    """The CLI reference: an option without a default shows a dash, not click's internal sentinel."""
    return UNSET_DEFAULT.sub("—", html)


# A command function's docstring is its --help text, then a form feed and the Google-style Args/Raises for the API
# reader; click's --help stops at the form feed, mkdocs-click 0.9 shows the whole docstring.
FORM_FEED = "\f"


def description_before_form_feed(make_description):
    """Wrap mkdocs-click's description generator so that it shows a command's help up to its first form feed (the
    help is cut before the generator splits it into lines: ``str.splitlines`` takes a form feed for a line end)."""
    def cut(ctx, *args, **kwargs):
        help_text = ctx.command.help or ""
        if FORM_FEED in help_text:
            command = copy.copy(ctx.command)
            command.help = help_text.partition(FORM_FEED)[0]
            ctx = copy.copy(ctx)
            ctx.command = command
        yield from make_description(ctx, *args, **kwargs)
    cut.cuts_at_form_feed = True
    return cut


def on_config(config):
    """Make the CLI reference show a command's description as ``--help`` does (once per process)."""
    from mkdocs_click import _docs

    if not getattr(_docs._make_description, "cuts_at_form_feed", False):
        _docs._make_description = description_before_form_feed(_docs._make_description)
    return config
