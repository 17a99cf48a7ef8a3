"""Explanations for people: pictures of results, model descriptions, and the HTML report.

The methods, their names, titles, papers and how each result is shown come from the one table
:mod:`onnx_cnnviz.methods.registry`; nothing here lists methods.

* :func:`picture` turns one result into a uint8 RGB picture (heat-map overlay, gradient image or gray attribution
  image), as its method's ``kind`` says.
* :func:`describe` summarises a loaded model: inputs, outputs, the score tensor, candidate layers, op types and
  whether every op on the gradient path from the image to the score has a backward rule.
* :func:`make_report` runs methods on images and :func:`render_report` builds one self-contained HTML page (pictures
  embedded as base64 PNG data URIs, inline CSS, no network) with, per image, the top predictions and every method
  side by side with the parameters used; :func:`write_report` saves it atomically.
"""
from __future__ import annotations

import ast
import datetime
import html
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import jsonio
from .files import read_regular
from .files import write_atomic  # noqa: F401 - re-exported for the CLI and the converters
from .errors import CnnvizError, InputError, UnsupportedOpError
from .image import (DIVERGING, Preprocessing, colorize, deprocess, gradient_image, overlay, saliency_image,
                    signed_to_unit)
from .html_page import _colour_bar, data_uri, format_params, page_head, png_bytes  # noqa: F401 - re-exported
from .maps import minmax
from .methods import registry
from .methods.gradients import has_rectifiers, no_rectifier_note
from .methods.top_k import check_k

# ---------------------------------------------------------------------------------------------------------------------
# Pictures of results


def _clip_percentile(a: np.ndarray, q: float = 99.0) -> np.ndarray:
    """|a| scaled so that its ``q``-th percentile is 1, clipped to [0, 1] (a few extreme pixels would otherwise
    leave the rest black)."""
    a = np.abs(np.asarray(a, dtype=np.float32))
    top = float(np.percentile(a, q))
    top = top if top > 0 else float(a.max())
    return np.clip(a / top, 0.0, 1.0) if top > 0 else np.zeros_like(a)


def color_scale(name: str, result: np.ndarray) -> float | None:
    """The value at the two ends of the diverging colour bar for a signed result of method ``name`` (drawn from
    ``-scale`` to ``+scale`` with 0 in the middle), or None when the result is unsigned (or an input gradient, shown
    as an image). Maps use their largest absolute value; attributions (summed over channels) their 99th percentile
    of absolute values, so a few extreme pixels do not leave the rest neutral."""
    meth = registry.get(name)
    if not meth.signed or meth.kind not in ("map", "attribution"):
        return None
    a = np.asarray(result, dtype=np.float32)
    if meth.kind == "map":
        return float(np.abs(a).max())
    a = np.abs(a.sum(axis=0))
    top = float(np.percentile(a, 99.0))
    return top if top > 0 else float(a.max())


def picture(name: str, result: np.ndarray, view: np.ndarray, order: str = "RGB", alpha: float = 0.5,
            colormap: str = "jet") -> np.ndarray:
    """One image's result of method ``name`` as a uint8 RGB picture the size of ``view`` (the model's input view).

    Unsigned heat maps are min-max scaled and laid over ``view`` in ``colormap`` (sequential). Signed results (their
    registry entry says ``signed``: occlusion's score drop, input x gradient, SmoothGrad, Integrated Gradients) use
    the diverging :data:`~onnx_cnnviz.image.DIVERGING` map centred at 0 (see :func:`color_scale`): "no effect" is the
    same neutral colour on every picture, positive red, negative blue; signed maps are laid over ``view``,
    attributions (summed over channels) are shown on their own. Saliency maps are shown in gray, scaled so that the
    99th percentile is white; gradients go through :func:`~onnx_cnnviz.image.gradient_image` (``order``: the
    model's channel order).
    """
    meth = registry.get(name)
    kind = meth.kind
    result = np.asarray(result, dtype=np.float32)
    if not np.isfinite(result).all():
        raise InputError(f"the {name} result has NaN or infinite values; the model may produce NaN on this image.")
    scale = color_scale(name, result)
    if kind == "map":
        if scale is not None:
            return overlay(view, signed_to_unit(result, scale), alpha=alpha, colormap=DIVERGING)
        return overlay(view, minmax(result), alpha=alpha, colormap=colormap)
    if kind == "gray":
        out = saliency_image(_clip_percentile(result), normalize=False)
    elif kind == "gradient":
        out = gradient_image(result, order=order)
    elif scale is not None:
        out = colorize(signed_to_unit(result.sum(axis=0), scale), DIVERGING)
    else:
        out = saliency_image(_clip_percentile(np.abs(result).sum(axis=0)), normalize=False)
    if out.shape[:2] != view.shape[:2]:
        out = cv2.resize(out, (view.shape[1], view.shape[0]), interpolation=cv2.INTER_LINEAR)
    return out


def probabilities(scores: np.ndarray, head: str | None) -> np.ndarray:
    """Class probabilities from scores: the sigmoid when the model's own head was a Sigmoid, else the softmax."""
    s = np.asarray(scores, dtype=np.float64)
    if head == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-s))
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


MAX_LABELS_BYTES = 16 * 1024 * 1024  # a labels file larger than this is not a list of class names
MAX_LABELS = 1_000_000  # lines; the largest label sets in use have tens of thousands


def read_labels(path) -> list[str]:
    """Class names from a text file, one per line (line i = class i - 1); a trailing empty line is ignored.

    Only a regular file of at most :data:`MAX_LABELS_BYTES` bytes and :data:`MAX_LABELS` lines is read: a FIFO, a
    device (``/dev/zero``) or a folder is refused (:class:`InputError`) before anything is read from it.
    """
    path = Path(path)
    try:
        data = read_regular(path, "labels file", max_bytes=MAX_LABELS_BYTES)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"labels file '{path}' does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file '{path}' ({exc}); give a UTF-8 text file, one name per line.") \
            from None
    if text.count("\n") > MAX_LABELS:
        raise InputError(f"labels file '{path}' has more than {MAX_LABELS:,} lines; give the class names of the "
                         "model, one per line.")
    return _split_labels(text)


def _split_labels(text: str) -> list[str]:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


LABELS_KEY = "cnnviz.labels"


def labels_from_metadata(metadata: dict) -> list[str] | None:
    """Class names stored under the ``cnnviz.labels`` metadata key (newline-joined), else an ultralytics export's
    ``names`` (``{0: 'person', ...}``), or None."""
    text = metadata.get(LABELS_KEY)
    return _split_labels(text) if text else labels_from_names(metadata)


def labels_from_names(metadata: dict) -> list | None:
    """Class names from an ultralytics export's ``names`` metadata (``{0: 'person', 1: 'bicycle', ...}``), or None
    when the metadata holds no such dict of consecutive indices."""
    text = metadata.get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
        return None
    return [str(names[i]) for i in range(len(names))]


def check_labels(labels: list[str] | None, num_classes: int, source: str = "labels") -> list[str] | None:
    if labels is not None and len(labels) != num_classes:
        raise InputError(f"{source} has {len(labels)} class names but the model has {num_classes} classes; give "
                         f"the names of this model's classes, one per line.")
    return labels


# ---------------------------------------------------------------------------------------------------------------------
# Describing a model


def describe(m, source=None) -> dict:
    """A JSON-ready summary of a loaded :class:`~onnx_cnnviz.Model`.

    ``source``: the path or ModelProto it was loaded from, to list the inputs and outputs as stored (dtype included).
    ``gradient_path`` lists the op types on the path from the image to the score, those without a backward rule
    (:func:`onnx_cnnviz.graph.autodiff.rules.supported_ops`), and whether building the backward graph to the image
    succeeds (it also checks the attribute variants each rule covers).
    """
    import onnx

    from .graph import load as graph_load
    from .graph.autodiff.rules import supported_ops
    from .graph.autodiff.engine import differentiable_path

    # The model was already read under the caller's limits (max_nodes, tensor sizes): no second cap here, and its
    # structure is all this needs (a file's external weights are not read again).
    if source is None:
        original = m.spec().model
    elif isinstance(source, onnx.ModelProto):
        original = source  # only read
    else:
        original = graph_load.read_model(source, max_nodes=None, weights=False)
    graph = original.graph
    inits = {t.name for t in graph.initializer}

    def value(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims}

    spec = m.spec()
    # The nodes the backward pass would visit: float paths only (integer Shape arithmetic never needs a rule).
    path_nodes, _ = differentiable_path(spec.model.graph, m.score_name, [m.input_name], spec.info)
    path_ops = Counter(n.op_type for n in path_nodes)
    known = set(supported_ops())
    missing = sorted(op for op in path_ops if op not in known)
    error = None
    try:
        m.build_graph(wrt=(m.input_name,), inline_weights=False)
    except UnsupportedOpError as exc:
        error = str(exc)
    except CnnvizError as exc:
        error = f"{type(exc).__name__}: {exc}"
    pre = Preprocessing.from_metadata(m.metadata)
    labels = labels_from_metadata(m.metadata)
    opset = next((i.version for i in original.opset_import if i.domain in ("", "ai.onnx")), None)
    return {
        "model": str(source) if isinstance(source, (str, os.PathLike)) else None,
        "ir_version": int(original.ir_version),
        "opset": opset,
        "producer": " ".join(p for p in (original.producer_name, original.producer_version) if p) or None,
        "inputs": [value(v) for v in graph.input if v.name not in inits],
        "outputs": [value(v) for v in graph.output],
        "image_input": m.source_input,
        # How the file takes the image; the engine always takes (N, C, H, W) float arrays (``engine_input``).
        "image_layout": m.input_layout,
        "image_dtype": m.input_dtype,
        "engine_input": m.input_name,
        "input_shape": list(m.input_shape),
        "score": {"output": m.output_name, "tensor": m.score_name, "softmax_skipped": m.softmax_skipped},
        "num_classes": m.num_classes,
        "static_batch": m.static_batch,
        "layers": [{"name": layer.name, "shape": list(layer.shape), "op_type": layer.op_type,
                    "view": _view_info(layer.view)} for layer in m.layers],
        "default_layer": m.default_layer,
        "op_types": dict(sorted(Counter(n.op_type for n in graph.node).items())),
        "gradient_path": {"ops": dict(sorted(path_ops.items())), "missing_rules": missing,
                          "ok": not missing and error is None, "error": error,
                          # False: guided backprop, deconvnet and Guided Grad-CAM equal the plain gradient here.
                          "rectifiers": has_rectifiers(m)},
        "preprocessing": preprocessing_info(pre) if pre else None,
        "labels": len(labels) if labels else None,
        "metadata": {k: v for k, v in m.metadata.items() if k != LABELS_KEY},
    }


def _view_info(view) -> dict | None:
    """How a layer the model keeps channels-last or as tokens is seen as (N, C, h, w); None for NCHW layers."""
    if view is None:
        return None
    return {"kind": view.kind, "native_shape": list(view.native),
            **({"prefix_tokens": view.prefix, "grid": list(view.grid)} if view.grid is not None else
               {"perm": list(view.perm)})}


def plain_gradient_notes(m, methods) -> list[str]:
    """Notes for ``methods`` (registry names) that would silently equal the plain gradient on ``m``: those with a
    :attr:`~onnx_cnnviz.methods.registry.Method.rectifier_rule` (guided backprop, deconvnet, Guided Grad-CAM) on a
    model with no rectifier on the gradient path."""
    wanted = [registry.get(name) for name in methods]
    wanted = [meth for meth in wanted if meth.rectifier_rule]
    if not wanted or has_rectifiers(m):
        return []
    return [f"{', '.join(meth.name for meth in wanted)}: {no_rectifier_note(wanted[0].rectifier_rule)}"]


def preprocessing_info(pre: Preprocessing) -> dict:
    """``pre`` as the plain dict the JSON records and the report show, its resize policy included: a centre crop
    hides the picture's edges from the model, so the reader must know which one ran."""
    info = {"size": list(pre.size) if pre.size else None, "mean": list(pre.mean) if pre.mean else None,
            "std": list(pre.std) if pre.std else None, "order": pre.order, "scale": pre.scale,
            "resize": pre.resize}
    if pre.resize == "crop":
        info["crop_fraction"] = pre.crop_fraction
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Writing files


# ---------------------------------------------------------------------------------------------------------------------
# The report


@dataclass
class ImageEntry:
    """What the report shows for one image.

    ``top``: the predictions table's rows, best first. ``target``: the explained class given by the caller (--target)
    as (class, name or None, score, probability, rank): its row is marked in the table, and added below it when the
    class is not among ``top``. ``explained``: the classes explained, one row of panels each, in the same
    (class, name, score, probability, rank) form (empty: the panels' own classes, in order). ``panels``: the method
    results; a class-agnostic panel (class None) is shown in the first row.
    """
    path: str
    view: np.ndarray  # uint8 RGB, the model's input view
    top: list  # [(class, name or None, score, probability)], best first
    # [(method name, class, picture uint8 RGB, parameters dict, colour scale of a signed result or None,
    #   {metric: (value, higher is better)} or None)]
    panels: list = field(default_factory=list)
    error: str | None = None
    target: tuple | None = None  # (class, name or None, score, probability, rank)
    explained: list = field(default_factory=list)  # [(class, name or None, score, probability, rank)]


def make_report(m, images, methods=("gradcam", "saliency", "guided"), preprocessing: Preprocessing | None = None,
                labels: list[str] | None = None, target: int | None = None, layer: str | None = None,
                params: dict | None = None, top: int | None = None, batch_size: int | None = None, progress=None,
                title: str | None = None, model_name: str | None = None, errors: list | None = None, *,
                predictions: int | None = None, top_k: int | None = None, step_progress=None,
                metrics=(), metric_params: dict | None = None) -> str:
    """Run ``methods`` on every image and return the HTML report (see :func:`render_report`).

    ``images``: paths (or anything :func:`~onnx_cnnviz.image.read_image` takes). ``preprocessing``: how to make the
    model input (default: the model's metadata, else the ImageNet preset). ``target``: explain this class for every
    image (default: each image's top-1); its row in the predictions table is marked, and shown even when the class is
    not among the predictions listed. ``top_k``: explain each image's K best classes instead, one row of method
    panels per class. ``predictions``: the rows of the predictions table (``top``: its older name; default 5).
    ``batch_size``: rows per onnxruntime run (default: the library's). ``progress``: a callable called with 1 after
    each image. ``step_progress``: a callable ``step_progress(method, done, total)`` told the units of work of the
    long-running methods inside an image (see :func:`registry.explain`). An image that cannot be read gets an error
    line in the report instead of pictures. ``metrics``: faithfulness metrics (:mod:`onnx_cnnviz.metrics` registry
    names, e.g. deletion, insertion) computed for every panel's map and shown under it, with their direction;
    ``metric_params``: ``{metric: {parameter: value}}``.
    """
    from .image import PRESETS, preprocess

    if target is not None and top_k is not None:
        raise InputError("target and top_k exclude each other; give one.")
    names = [registry.get(n).name for n in methods]
    pre = preprocessing or Preprocessing.from_metadata(m.metadata) or PRESETS["imagenet"]
    pre = fit_preprocessing(m, pre)
    if labels is None:
        labels = labels_from_metadata(m.metadata)
    check_labels(labels, m.num_classes)
    registry.check_parameters(names, params)
    for n in names:
        registry.resolved_layer(m, n, layer)  # fail before any work on a bad layer
    metrics = _check_report_metrics(metrics, metric_params)
    if target is not None:
        m.targets_for(target, 1)
    shown = predictions if predictions is not None else (top if top is not None else 5)
    k = max(1, min(int(shown), m.num_classes))
    if top_k is not None:
        check_k(top_k, m.num_classes, "top_k")
    rows = top_k if top_k else 1
    entries = []
    for source in images:
        label = str(source)
        try:
            x = preprocess([source], preset=pre)
        except InputError as exc:
            entries.append(ImageEntry(label, np.zeros((8, 8, 3), np.uint8), [], error=str(exc)))
            if errors is not None:
                errors.append((label, str(exc)))
            if progress:
                progress(1)
            continue
        view = deprocess(x[0], preset=pre)
        scores = m.scores(x, batch_size=batch_size)[0]
        probs = probabilities(scores, m.softmax_skipped)
        ranking = np.argsort(-scores, kind="stable")
        rank_of = np.empty(len(ranking), dtype=np.int64)
        rank_of[ranking] = np.arange(1, len(ranking) + 1)

        def row(c):
            c = int(c)
            return (c, labels[c] if labels else None, float(scores[c]), float(probs[c]), int(rank_of[c]))

        entry = ImageEntry(label, view, [row(c)[:4] for c in ranking[:k]])
        classes = [int(target)] if target is not None else [int(c) for c in ranking[:rows]]
        if target is not None:
            entry.target = row(target)
        entry.explained = [row(c) for c in classes]
        results = {}
        for n in names:
            meth = registry.get(n)
            report_step = (lambda d, t, n=n: step_progress(n, d, t)) if step_progress else None
            if meth.class_specific:
                out = registry.explain(m, n, np.repeat(x, len(classes), axis=0), np.array(classes), layer=layer,
                                       params=params, batch_size=batch_size, progress=report_step, shared=True)
            else:
                out = registry.explain(m, n, x, np.array(classes[:1]), layer=layer, params=params,
                                       batch_size=batch_size, progress=report_step, shared=True)
            used = registry.parameters(meth, params, shared=True)
            if meth.uses_layer:
                used["layer"] = registry.resolved_layer(m, meth, layer)
            results[n] = (out, used)
        for r, c in enumerate(classes):
            for n in names:
                meth = registry.get(n)
                out, used = results[n]
                if not meth.class_specific and r > 0:
                    continue  # one map for every class: shown once, in the first row
                result = out[r] if meth.class_specific else out[0]
                values = _panel_metrics(m, x, result, n, c, metrics, metric_params, batch_size)
                entry.panels.append((n, c if meth.class_specific else None, picture(n, result, view, pre.order),
                                     used, color_scale(n, result), values))
        entries.append(entry)
        if progress:
            progress(1)
    info = {"model": model_name, "input": f"{m.input_name} {tuple(m.input_shape)}",
            "score": m.score_name + (f" (before {m.softmax_skipped})" if m.softmax_skipped else ""),
            "classes": m.num_classes, "device": m.device, "preprocessing": preprocessing_info(pre),
            "target": None if target is None else int(target), "top_k": top_k if top_k else None,
            "predictions": k, "notes": plain_gradient_notes(m, names)}
    return render_report(entries, info, labels, title=title)


def _check_report_metrics(metrics, metric_params: dict | None) -> list:
    """The metric names, checked before any work: known, their parameters known, none that needs ground-truth boxes
    (the report has none)."""
    from .metrics import registry as metric_registry

    names = [metric_registry.get(name).name for name in metrics or ()]
    for name in names:
        if metric_registry.get(name).needs_boxes:
            raise InputError(f"metric {name!r} needs ground-truth boxes, which a report has none of; use "
                             "cnnviz evaluate --boxes.")
        metric_registry.parameters(name, (metric_params or {}).get(name))
    unknown = sorted(set(metric_params or {}) - set(names))
    if unknown:
        raise InputError(f"parameters given for metric {unknown[0]!r}, which is not among the report's metrics "
                         f"({', '.join(names) or 'none'}).")
    return names


def _panel_metrics(m, x: np.ndarray, result: np.ndarray, method: str, target: int, metrics: list,
                   metric_params: dict | None, batch_size: int | None) -> dict:
    """{metric: (value, higher_is_better)} of one panel's map for its class (the first explained class for a
    class-agnostic map), as ``cnnviz evaluate`` scores it (:func:`onnx_cnnviz.metrics.inputs.explanation_for`)."""
    from .metrics import registry as metric_registry
    from .metrics.inputs import explanation_for

    values = {}
    for name in metrics:
        params = (metric_params or {}).get(name)
        explanation = explanation_for(name, result[None], method, params)
        got = metric_registry.evaluate(name, m, x, explanation, np.array([int(target)]), params=params,
                                       batch_size=batch_size)
        values[name] = (float(got.values[0]), bool(got.higher_is_better))
    return values


def fit_preprocessing(m, pre: Preprocessing) -> Preprocessing:
    """``pre`` with its size set to the model's input size when the model fixes one. Pictures are read as 3-channel
    RGB (or BGR): a model that takes another channel count is refused here, before any image is read."""
    import dataclasses

    if m.channels != 3:
        raise InputError(f"the model takes {m.channels}-channel images but pictures are preprocessed to 3 channels "
                         "(RGB/BGR); prepare the (N, C, H, W) input yourself and call the library "
                         "(onnx_cnnviz.grad_cam(m, x), ...).")
    static = m.input_shape[1:]
    if all(d is not None for d in static) and pre.size != tuple(static):
        return dataclasses.replace(pre, size=tuple(static))
    return pre


def render_report(entries: list[ImageEntry], info: dict, labels: list[str] | None = None,
                  title: str | None = None) -> str:
    """The HTML page for ``entries``: one section per image with its input view, the top predictions (class, name,
    probability, score; the row of the entry's ``target`` marked, and added below the others with its rank when the
    class is not among them) and one figure per method with its class and parameters, one row of figures per
    explained class (headed by its rank, class and probability when there are several). Self-contained: pictures
    are base64 PNG data URIs, styles inline, no external resource."""
    esc = html.escape
    title = title or "cnnviz report" + (f" — {info['model']}" if info.get("model") else "")
    out = page_head(title) + [f"<h1>{esc(title)}</h1>"]
    pre = info.get("preprocessing") or {}
    meta = [f"input <code>{esc(str(info.get('input', '')))}</code>",
            f"score <code>{esc(str(info.get('score', '')))}</code>",
            f"{info.get('classes')} classes", f"device {esc(str(info.get('device', '')))}",
            "preprocessing <code>" + esc(format_params({k: v for k, v in pre.items() if v is not None})) + "</code>"]
    out.append('<div class="meta">' + " · ".join(meta) + "</div>")
    for note in info.get("notes") or ():
        out.append(f'<div class="note">Note: {esc(note)}</div>')

    def class_label(c):
        if c is None:
            return "class-agnostic"
        name = labels[c] if labels and 0 <= c < len(labels) else None
        return f"{c} {name}" if name else f"class {c}"

    for entry in entries:
        out.extend(image_opening(entry))
        if entry.error:
            continue
        target = entry.target[0] if entry.target else None

        def prediction_row(rank, c, score, prob):
            bar = f'<span class="bar" style="width:{max(1, round(60 * prob))}px"></span>'
            marked = c == target
            mark = '<span class="mark">&#9664; target</span>' if marked else ""
            attr = ' class="target"' if marked else ""
            return (f"<tr{attr}><td>{rank}</td><td>{esc(class_label(c))}{mark}</td>"
                    f"<td class=\"num\">{bar}{prob:.3f}</td><td class=\"num\">{score:.2f}</td></tr>")

        rows = ["<table class=\"top\"><tr><th>#</th><th>class</th><th>p</th><th>score</th></tr>"]
        for rank, (c, name, score, prob) in enumerate(entry.top, 1):
            rows.append(prediction_row(rank, c, score, prob))
        if entry.target and target not in [c for c, *_ in entry.top]:
            c, name, score, prob, rank = entry.target
            rows.append('<tr class="gap"><td colspan="4">&#8942;</td></tr>')
            rows.append(prediction_row(rank, c, score, prob))
        rows.append("</table>")
        out.append("<div><b style=\"font-size:13px\">Top predictions</b>" + "".join(rows) + "</div>")
        out.append("</div>")
        groups = _panel_rows(entry)
        for explained, panels in groups:
            if len(groups) > 1 and explained is not None:
                c, name, score, prob, rank = explained
                out.append(f'<div class="rowhead"><b>#{rank}</b> {esc(class_label(c))} · p={prob:.3f}</div>')
            out.append("<div class=\"row\" style=\"margin-top:12px\">")
            for name, c, pic, params, *extra in panels:
                scale, scores = (extra + [None, None])[:2]
                meth = registry.METHODS.get(name)
                caption = f"<b>{esc(meth.title if meth else name)}</b> · {esc(class_label(c))}"
                if meth and meth.paper:
                    caption += f'<div style="color:#888">{esc(meth.paper)}</div>'
                if params:
                    caption += f'<div class="params">{esc(format_params(params))}</div>'
                if scale is not None:
                    caption += _colour_bar(scale)
                if scores:
                    caption += '<div class="metrics">' + " · ".join(
                        f"{esc(metric)} <b>{value:.3g}</b>{'&#8593;' if up else '&#8595;'}"
                        for metric, (value, up) in scores.items()) + "</div>"
                out.append(f'<figure><img alt="{esc(name)}" src="{data_uri(pic)}"><figcaption>{caption}</figcaption>'
                           "</figure>")
            out.append("</div>")
        out.append("</section>")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from . import __version__
    out.append(f"<footer>onnx_cnnviz {esc(__version__)} · {stamp} · unsigned maps: jet colormap over the input, "
               "min-max scaled per picture; signed maps and attributions (sum over channels): blue - neutral - red, "
               "centred at 0, with their colour bar; saliency: gray, 99th percentile = white; gradients: mean at "
               "mid-gray, ±5 std to black/white.</footer>")
    out.append(f'<script type="application/json" id="cnnviz-data">{jsonio.dumps_for_html(info)}</script>')
    out.append("</body></html>")
    return "\n".join(out)


def _panel_rows(entry: ImageEntry) -> list:
    """[(explained class row or None, panels)]: one row of panels per explained class, in order; class-agnostic
    panels (class None) in the first row. Without ``entry.explained``, the classes of the panels in order."""
    classes = [row[0] for row in entry.explained]
    if not classes:
        classes = list(dict.fromkeys(c for _, c, *_ in entry.panels if c is not None)) or [None]
    groups = {c: [] for c in classes}
    for panel in entry.panels:
        c = panel[1]
        groups[c if c in groups else classes[0]].append(panel)
    explained = {row[0]: row for row in entry.explained}
    return [(explained.get(c), groups[c]) for c in classes]


def write_report(path, html_text: str, overwrite: bool = False) -> Path:
    """Save the report atomically (no overwrite unless asked)."""
    return write_atomic(path, html_text, overwrite=overwrite)


__all__ = ["picture", "probabilities", "describe", "make_report",
           "render_report", "write_report", "write_atomic", "read_labels", "labels_from_metadata", "ImageEntry",
           "fit_preprocessing", "LABELS_KEY", "preprocessing_info"]

def image_opening(entry) -> list:
    """The HTML that opens an image's section of a report: its heading, then its error (the section closed there) or
    the row's first figure, the picture as the model saw it.

    Args:
        entry: a report entry (``path``, ``error``, ``view``).

    Returns:
        The HTML pieces, in order.
    """
    head = f'<section class="image"><h2>{html.escape(entry.path)}</h2>'
    if entry.error:
        return [head, f'<div class="error">{html.escape(entry.error)}</div></section>']
    return [head, '<div class="row">',
            f'<figure><img alt="input" src="{data_uri(entry.view)}"><figcaption><b>Input</b>'
            f'<div class="params">{entry.view.shape[1]}x{entry.view.shape[0]} model view</div>'
            "</figcaption></figure>"]
