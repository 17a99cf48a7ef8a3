"""Griffe extension (mkdocstrings-python's ``extensions`` option): Sphinx cross-reference roles in docstrings
rendered as Markdown code spans.

The docstrings were written for reading in the source, with Sphinx roles (``:func:`onnx_cnnviz.load```,
``:class:`~onnx_cnnviz.Model```); Markdown shows a role as literal text (":class: Model"). Each role becomes a code
span of its target (the last component when the target starts with ``~``, as Sphinx shows it). The source is not
changed; only the text the site renders.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def markdown_roles(text: str) -> str:
    """``:role:`target``` -> `` `target` `` (``~`` keeps the last component)."""
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring griffe loads."""

    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_roles(obj.docstring.value)
