"""The HTML report of a detector or a segmenter: per image, the picture with its detections (or regions) drawn, the
table of them (number, class, score, box) and, per detection, every requested method's map.

:func:`make_task_report` finds each image's targets (:func:`onnx_cnnviz.runs.detections.find_targets`), explains all
of them in one batched run per method (one cotangent row per detection, as :func:`onnx_cnnviz.tasks.explain`) and
:func:`render_task_report` builds the page, self-contained like :func:`onnx_cnnviz.report.render_report`'s (pictures
as base64 data URIs, inline styles, no network).
"""
from __future__ import annotations

import datetime
import html
from dataclasses import dataclass, field

import cv2
import numpy as np

from .. import jsonio
from ..errors import InputError
from ..html_page import _colour_bar, data_uri, format_params, page_head
from ..image import Preprocessing, deprocess
from ..methods import registry

__all__ = ["targets_picture", "TaskEntry", "make_task_report", "render_task_report"]


def targets_picture(view: np.ndarray, targets, labels=None) -> np.ndarray:
    """``view`` (uint8 RGB, the model's input) with each detection's (or region's) box drawn: its number (1: the
    best), class (its name when ``labels`` give it) and score; a region's mask outline too."""
    from ..methods.localise import draw_boxes

    canvas = np.ascontiguousarray(view, dtype=np.uint8).copy()
    palette = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 160, 0), (200, 0, 200), (0, 200, 200)]
    colors = [palette[k % len(palette)] for k in range(len(targets))]
    h, w = canvas.shape[:2]
    for target, color in zip(targets, colors):
        mask = getattr(target, "mask", None)
        if mask is not None:
            mask = cv2.resize(np.asarray(mask, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, color, 1)
    from .detections import target_record

    texts = []
    for k, target in enumerate(targets):
        name = target_record(target, labels)["class_name"] or str(int(target.cls))
        texts.append(f"{k + 1} {name} {float(target.score):.2f}")
    boxes = [tuple(float(np.clip(v, 0, side)) for v, side in zip(target.box, (w, h, w, h))) for target in targets]
    canvas = draw_boxes(canvas, boxes, colors=colors)
    for (x0, y0, _, _), text, color in zip(boxes, texts, colors):
        # white text on the box's colour above its top-left corner (inside the picture), readable on any image
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        left = int(min(max(0, x0), max(0, w - tw - 4)))
        top = int(y0 - th - base - 2 if y0 - th - base - 2 >= 0 else min(y0, max(0, h - th - base - 2)))
        cv2.rectangle(canvas, (left, top), (left + tw + 4, top + th + base + 2), color, -1)
        cv2.putText(canvas, text, (left + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


@dataclass
class TaskEntry:
    """What the report shows for one image: its model view, the picture with the targets drawn, the targets as
    (number, class, name or None, score, box) rows, and per target the panels (method, picture, parameters, colour
    scale of a signed result or None)."""
    path: str
    view: np.ndarray
    drawn: np.ndarray | None = None
    targets: list = field(default_factory=list)
    panels: dict = field(default_factory=dict)  # target number -> [(method, picture, params, scale)]
    error: str | None = None


def make_task_report(m, images, methods, preprocessing: Preprocessing, options, labels=None, layer=None,
                     params: dict | None = None, batch_size: int | None = None, progress=None, title=None,
                     model_name: str | None = None, errors: list | None = None) -> str:
    """Run ``methods`` on every detection (or region) of every image and return the HTML page.

    Args:
        m: a model loaded as a detector or a segmenter.
        images: picture paths (or anything :func:`~onnx_cnnviz.image.read_image` takes).
        methods: method registry names.
        preprocessing: how pictures become the model's input.
        options: the :class:`onnx_cnnviz.runs.detections.TaskOptions` (--conf, --iou, --max-det, --region-class).
        labels: class names, or None.
        layer: the CAM family's feature map (default: the model's; a detector's last pyramid level).
        params: the methods' parameters, one dict for all (``KEY`` or ``METHOD.KEY``).
        batch_size: rows per onnxruntime run.
        progress: called with 1 after each image.
        title: the page title.
        model_name: the model's file name, for the header.
        errors: a list that gets (image, message) for each image that cannot be read.

    Returns:
        The HTML text.

    Raises:
        InputError: a bad method parameter or layer, a method that cannot explain this model's targets (CAM on a
            detector: :func:`onnx_cnnviz.runs.detection_run.check_task_methods`), or a classifier (whose report is
            :func:`onnx_cnnviz.report.make_report`).
    """
    from ..image import preprocess
    from ..report import fit_preprocessing, picture, preprocessing_info
    from .detections import find_targets, run_task, target_record

    if m.task == "classifier":
        raise InputError("make_task_report shows a detector's or a segmenter's targets; a classifier's report is "
                         "onnx_cnnviz.report.make_report.")
    names = [registry.get(n).name for n in methods]
    from .detection_run import check_task_methods

    check_task_methods(m, names, layer, run_task(m, options))
    pre = fit_preprocessing(m, preprocessing)
    registry.check_parameters(names, params)
    for n in names:
        registry.resolved_layer(m, n, layer)
    entries = []
    for source in images:
        label = str(source)
        try:
            x = preprocess([source], preset=pre)
        except InputError as exc:
            entries.append(TaskEntry(label, np.zeros((8, 8, 3), np.uint8), error=str(exc)))
            if errors is not None:
                errors.append((label, str(exc)))
            if progress:
                progress(1)
            continue
        view = deprocess(x[0], preset=pre)
        targets = find_targets(m, x, options, batch_size, labels)[0]
        entry = TaskEntry(label, view, targets_picture(view, targets, labels))
        for d, target in enumerate(targets):
            r = target_record(target, labels)
            entry.targets.append((d + 1, r["class"], r["class_name"], r["score"], r["box"]))
        if targets:
            rows = np.repeat(x, len(targets), axis=0)
            for n in names:
                meth = registry.get(n)
                out = registry.explain(m, n, rows, targets, layer=layer, params=params, batch_size=batch_size,
                                       shared=True)
                used = registry.parameters(meth, params, shared=True)
                if meth.uses_layer:
                    used["layer"] = registry.resolved_layer(m, meth, layer)
                for d, result in enumerate(out):
                    entry.panels.setdefault(d + 1, []).append(
                        (n, picture(n, result, view, pre.order), used, _scale(n, result)))
        entries.append(entry)
        if progress:
            progress(1)
    task = run_task(m, options)
    info = {"model": model_name, "task": task, "input": f"{m.input_name} {tuple(m.input_shape)}",
            "output": m.score_name, "classes": m.num_classes, "device": m.device,
            "preprocessing": preprocessing_info(pre), "targets": options.settings(task)}
    return render_task_report(entries, info, title=title)


def _scale(name: str, result) -> float | None:
    from ..report import color_scale

    return color_scale(name, result)


def _classes(count) -> str:
    """The header's class count: a detector whose NMS is in the graph (torchvision's exports) gives labels, not
    its class count."""
    return f"{count} classes" if count is not None else "class count not in the output (labels only)"


def render_task_report(entries: list, info: dict, title: str | None = None) -> str:
    """The HTML page for ``entries`` (:class:`TaskEntry`): one section per image with its input, the targets drawn,
    the table of targets and one row of method figures per target."""
    from ..report import image_opening

    esc = html.escape
    what = "detections" if info.get("task") in ("detector", "text") else "regions"
    title = title or f"cnnviz report ({info.get('task')})" + (f" — {info['model']}" if info.get("model") else "")
    out = page_head(title) + [f"<h1>{esc(title)}</h1>"]
    pre = info.get("preprocessing") or {}
    meta = [f"task <b>{esc(str(info.get('task')))}</b>", f"input <code>{esc(str(info.get('input', '')))}</code>",
            f"output <code>{esc(str(info.get('output', '')))}</code>", _classes(info.get("classes")),
            f"device {esc(str(info.get('device', '')))}",
            f"{what} <code>" + esc(format_params({k: v for k, v in (info.get('targets') or {}).items()
                                                   if k != 'task' and v is not None})) + "</code>",
            "preprocessing <code>" + esc(format_params({k: v for k, v in pre.items() if v is not None})) + "</code>"]
    out.append('<div class="meta">' + " · ".join(meta) + "</div>")
    for entry in entries:
        out.extend(image_opening(entry))
        if entry.error:
            continue
        out.append(f'<figure><img alt="{what}" src="{data_uri(entry.drawn)}"><figcaption><b>{len(entry.targets)} '
                   f"{what}</b></figcaption></figure>")
        rows = ["<table class=\"top\"><tr><th>#</th><th>class</th><th>score</th><th>box</th></tr>"]
        for number, c, name, score, box in entry.targets:
            label = f"{c} {name}" if name else f"class {c}"
            rows.append(f"<tr><td>{number}</td><td>{esc(label)}</td><td class=\"num\">{score:.3f}</td>"
                        f"<td class=\"num\">{', '.join(f'{v:.0f}' for v in box)}</td></tr>")
        rows.append("</table>")
        out.append(f"<div><b style=\"font-size:13px\">{what.capitalize()}</b>" + "".join(rows) + "</div></div>")
        if not entry.targets:
            out.append(f'<div class="note">Nothing found: no {what[:-1]} passes the thresholds.</div>')
        for number, c, name, score, box in entry.targets:
            label = f"{c} {name}" if name else f"class {c}"
            out.append(f'<div class="rowhead"><b>#{number}</b> {esc(label)} · score {score:.3f}</div>')
            out.append("<div class=\"row\" style=\"margin-top:12px\">")
            for method, pic, params, scale in entry.panels.get(number, []):
                meth = registry.METHODS.get(method)
                caption = f"<b>{esc(meth.title if meth else method)}</b> · #{number}"
                if params:
                    caption += f'<div class="params">{esc(format_params(params))}</div>'
                if scale is not None:
                    caption += _colour_bar(scale)
                out.append(f'<figure><img alt="{esc(method)} #{number}" src="{data_uri(pic)}">'
                           f"<figcaption>{caption}</figcaption></figure>")
            out.append("</div>")
        out.append("</section>")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from .. import __version__
    out.append(f"<footer>onnx_cnnviz {esc(__version__)} · {stamp} · each map explains one {what[:-1]}: its score "
               "(a region: its class summed over the pixels predicted as it); unsigned maps: jet colormap over the "
               "input, min-max scaled per picture.</footer>")
    out.append(f'<script type="application/json" id="cnnviz-data">{jsonio.dumps_for_html(info)}</script>')
    out.append("</body></html>")
    return "\n".join(out)
