"""Class names and targets: the one resolver of every run (a class index, or a class name matched against the
model's names)."""
from __future__ import annotations

import difflib

from ..errors import InputError


def option_error(message: str, option: str) -> InputError:
    """An :class:`InputError` about the value of one option (``option``: its flag, e.g. ``--target``), which the
    command line reports as a usage error of that flag (exit code 2)."""
    exc = InputError(message)
    exc.option = option
    return exc


def check_top_k(top_k, num_classes: int, hint: str = "--top-k"):
    """``top_k`` checked against the model's ``num_classes``: None stays None; anything but an int in
    [1, num_classes] is an :class:`InputError` about option ``hint`` (the library's ``top_k`` refuses the same
    values), since explaining fewer classes than asked would be a silent wrong answer."""
    from ..methods.top_k import check_k

    if top_k is None:
        return None
    try:
        return check_k(top_k, num_classes, hint)
    except InputError as exc:
        raise option_error(str(exc), hint) from None


def resolve_labels(m, labels_path):
    """The class names: the labels file ``labels_path`` when given, else the model's metadata (None when neither
    names them); checked against the model's class count."""
    from .. import report

    if labels_path:
        return report.check_labels(report.read_labels(labels_path), m.num_classes, f"labels file '{labels_path}'")
    return report.check_labels(report.labels_from_metadata(m.metadata), m.num_classes, "the model's label metadata")


def resolve_target(value, labels, hint: str = "--target"):
    """The class index of a --target value: an index as given, or a class name matched case-insensitively against
    ``labels`` (a whole name, or one of its comma-separated synonyms). An unknown or ambiguous name, or a name when
    no class names are known, is an :class:`InputError` about option ``hint`` (:func:`option_error`) listing
    the close matches."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    if not labels:
        raise option_error(f"{text!r} is a class name but the model's class names are not known; give the "
                                 "class index, or the class names with --labels FILE.", hint)
    key = text.casefold()
    found = [i for i, name in enumerate(labels) if name.casefold() == key]
    if not found:
        found = [i for i, name in enumerate(labels)
                 if key in (part.strip().casefold() for part in name.split(","))]
    if len(found) == 1:
        return found[0]
    if found:
        listed = "; ".join(f"{i} ({labels[i]})" for i in found)
        raise option_error(f"{text!r} names {len(found)} classes: {listed}; give the index.", hint)
    folded = [name.casefold() for name in labels]
    close = difflib.get_close_matches(key, folded, n=5, cutoff=0.6)
    near = [i for i, name in enumerate(folded) if name in close]
    near += [i for i, name in enumerate(folded) if key in name and i not in near]
    near = near[:8]
    hint_text = ("; close matches: " + "; ".join(f"{i} ({labels[i]})" for i in near)) if near else ""
    raise option_error(f"no class is named {text!r}{hint_text}. `cnnviz inspect MODEL --classes` lists the "
                             "class names.", hint)
