"""The HTML page of an evaluation (``cnnviz evaluate``'s ``report.html``): which explanation method to trust, and why.

One self-contained page (pictures as base64 PNG data URIs, inline style, no network; the same skeleton, styles and
load check as :mod:`onnx_cnnviz.report`'s page) showing, in reading order:

* the ranking per metric, best first: mean, 95% confidence interval, std and n per method, with the metric's
  direction (higher or lower is better), what it read from the model (the target's probability, its score, or the
  model's own probability output), its parameters and its paper;
* the mean curves of the curve metrics (deletion, insertion, ROAD), every method's curve of a metric overlaid in
  one plot, so that they compare at a glance;
* a few example images with each method's map, so a reader sees what is ranked;
* the model (:func:`onnx_cnnviz.report.describe`: inputs, score tensor, classes, gradient path) and the
  preprocessing.

:func:`render` returns the page as text; it computes nothing, so the caller decides what is shown.
"""
from __future__ import annotations

import datetime
import html
from dataclasses import dataclass, field

import numpy as np

from . import jsonio
from .html_page import data_uri, format_params, page_head

#: The page's styles beside the report's: the ranking tables and the smaller figures of the examples.
_EXTRA_CSS = """
table.rank{border-collapse:collapse;font-size:13px;margin:6px 0 4px}
table.rank th,table.rank td{padding:3px 8px;text-align:left;border-bottom:1px solid #eee}
table.rank td.num{text-align:right;font-variant-numeric:tabular-nums}
table.rank tr.best td{background:#e8f4e8;font-weight:600}
table.kv{border-collapse:collapse;font-size:12px}
table.kv th{text-align:left;padding:2px 10px 2px 0;color:#555;font-weight:normal;vertical-align:top}
table.kv td{padding:2px 0;font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.direction{color:#2a6a2a;font-size:12px}
.reads{color:#555;font-size:12px}
figure.curve{width:360px}
figure.curve img{width:360px}
figure.overlay{width:640px}
figure.overlay img{width:640px}
figure.thumb{width:160px}
figure.thumb img{width:160px}
"""


@dataclass
class ExampleRow:
    """One example image of the evaluation page.

    Attributes:
        path: its file.
        view: the model's view of it, uint8 RGB.
        cls: the class explained.
        name: the class's name, when known.
        probability: the model's probability of it.
        pictures: each method's picture, ``[(method, uint8 RGB)]`` in the run's method order.
        detection: a detector's example: the detection's number in its image (1: the best score); ``probability``
            is then the detection's score, and ``view`` shows its box.
    """
    path: str
    view: np.ndarray
    cls: int
    name: str | None
    probability: float
    pictures: list = field(default_factory=list)
    detection: int | None = None


def render(*, model: dict, preprocessing: dict, summary: list, ranking: dict, metrics: dict, curves: dict,
           examples: list, images: int, failed: list = (), interrupted: bool = False, ci_formula: str = "",
           title: str = "cnnviz evaluate", overlays: dict | None = None, detections: int | None = None,
           skipped: list = ()) -> str:
    """The evaluation page, one self-contained HTML file.

    Args:
        model: :func:`onnx_cnnviz.report.describe` of the model.
        preprocessing: its :func:`~onnx_cnnviz.report.preprocessing_info`.
        summary: the summary rows (method, metric, mean, std, n, ci95_low, ci95_high, higher_is_better, output).
        ranking: per metric, the methods best first.
        metrics: per metric its title, higher_is_better, parameters and paper.
        curves: (method, metric) -> uint8 RGB picture of one method's mean curve.
        examples: the example rows.
        images: how many images the run read.
        failed: the images that could not be read or explained (``{"image", "error"}`` each).
        interrupted: Ctrl-C stopped the run (the numbers cover the rows finished).
        ci_formula: the confidence interval, in words.
        title: the page's title.
        overlays: metric -> uint8 RGB picture of every method's mean curve overlaid; shown first, each method's
            own picture then folded under it.
        detections: a detector's run: how many detections were scored (the rows are per detection).
        skipped: the images with nothing to score (``{"image", "reason"}`` each: a detector's image where no
            detection scored the threshold).

    Returns:
        The HTML text.
    """
    esc = html.escape
    out = [_head(title), f"<h1>{esc(title)}</h1>", _meta(model, summary, images, metrics, detections)]
    if interrupted:
        out.append('<div class="note">Interrupted: the numbers cover the rows finished before Ctrl-C; run again with '
                   "--resume to finish.</div>")
    for item in failed:
        out.append(f'<div class="error">{esc(str(item.get("image")))}: {esc(str(item.get("error")))}</div>')
    for item in skipped:
        out.append(f'<div class="note">{esc(str(item.get("image")))}: {esc(str(item.get("reason")))}</div>')
    out.append(_ranking(summary, ranking, metrics, ci_formula))
    out.append(_curves(curves, ranking, metrics, overlays or {}))
    out.append(_examples(examples))
    out.append(_model(model, preprocessing))
    out.append(_foot(summary, ranking))
    return "\n".join(part for part in out if part)


# ---------------------------------------------------------------------------------------------------------------------
# Parts of the page


def _head(title: str) -> str:
    """The document's head, as the report's (:func:`onnx_cnnviz.report.page_head`) with this page's styles."""
    return "\n".join(page_head(title, _EXTRA_CSS))


def _meta(model: dict, summary: list, images: int, metrics: dict, detections: int | None = None) -> str:
    esc = html.escape
    methods = list(dict.fromkeys(r["method"] for r in summary))
    counted = f"{images} image(s)" if detections is None else f"{images} image(s), {detections} detection(s) scored"
    parts = [f"model <code>{esc(str(model.get('model') or ''))}</code>", counted,
             f"methods <code>{esc(', '.join(methods))}</code>",
             f"metrics <code>{esc(', '.join(metrics))}</code>"]
    return '<div class="meta">' + " · ".join(parts) + "</div>"


def _direction(better: bool) -> str:
    return "higher is better" if better else "lower is better"


def _ranking(summary: list, ranking: dict, metrics: dict, ci_formula: str) -> str:
    """Per metric one table, best first; the best row marked."""
    esc = html.escape
    out = ['<section class="image" id="ranking"><h2>Ranking per metric</h2>']
    if ci_formula:
        out.append(f'<div class="meta">95% interval: {esc(ci_formula)}</div>')
    for metric, order in ranking.items():
        info = metrics.get(metric, {})
        rows = {r["method"]: r for r in summary if r["metric"] == metric}
        reads = rows[order[0]].get("output") if order else None
        out.append(f'<h3 style="font-size:14px;margin:14px 0 2px">{esc(info.get("title", metric))} '
                   f'<code>{esc(metric)}</code> <span class="direction">{_direction(info.get("higher_is_better"))}'
                   "</span></h3>")
        if reads:
            out.append(f'<div class="reads">reads: {esc(reads)}</div>')
        params = info.get("parameters") or {}
        if params or info.get("paper"):
            text = esc(format_params({k: v for k, v in params.items() if v is not None}))
            paper = f' · {esc(info["paper"])}' if info.get("paper") else ""
            out.append(f'<div class="params">{text}{paper}</div>')
        out.append(f'<table class="rank" data-metric="{esc(metric)}"><tr><th>#</th><th>method</th><th>mean</th>'
                   "<th>95% interval</th><th>std</th><th>n</th></tr>")
        for rank, method in enumerate(order, 1):
            r = rows[method]
            attr = ' class="best"' if rank == 1 and len(order) > 1 else ""
            # Rows where the metric is undefined are left out of the mean: the page says how many, as the tables do.
            undefined = f' (+{r["undefined"]} undefined)' if r.get("undefined") else ""
            out.append(f'<tr{attr} data-method="{esc(method)}"><td>{rank}</td><td>{esc(method)}</td>'
                       f'<td class="num">{r["mean"]:.4f}</td>'
                       f'<td class="num">[{r["ci95_low"]:.4f}, {r["ci95_high"]:.4f}]'
                       + (' <span title="clipped to the metric\'s range">(clipped)</span>' if r.get("ci95_clipped")
                          else "") + '</td>'
                       f'<td class="num">{r["std"]:.4f}</td><td class="num">{r["n"]}{undefined}</td></tr>')
        out.append("</table>")
    out.append("</section>")
    return "\n".join(out)


def _curves(curves: dict, ranking: dict, metrics: dict, overlays: dict) -> str:
    """The mean curves, per metric: the methods overlaid in one plot (``overlays``), then each method's own picture
    in ranking order (folded under the plot when there is one)."""
    if not curves and not overlays:
        return ""
    esc = html.escape
    out = ['<section class="image" id="curves"><h2>Mean curves</h2>']
    for metric, order in ranking.items():
        folded = metric in overlays
        if folded:
            title = metrics.get(metric, {}).get("title", metric)
            out.append(f'<figure class="overlay"><img alt="curves {esc(metric)}" src="{data_uri(overlays[metric])}">'
                       f"<figcaption><b>{esc(title)}</b> <code>{esc(metric)}</code>: every method's mean curve, "
                       "legend in ranking order (best first)</figcaption></figure>")
        shown = [(method, curves[(method, metric)]) for method in order if (method, metric) in curves]
        if not shown:
            continue
        title = metrics.get(metric, {}).get("title", metric)
        if folded:
            out.append(f"<details><summary>each method's {esc(metric)} curve alone</summary>")
        else:
            out.append(f'<div class="rowhead"><b>{esc(title)}</b> <code>{esc(metric)}</code></div>')
        out.append('<div class="row" style="margin-top:12px">')
        for method, pic in shown:
            out.append(f'<figure class="curve"><img alt="curve {esc(method)} {esc(metric)}" src="{data_uri(pic)}">'
                       f"<figcaption><b>{esc(method)}</b></figcaption></figure>")
        out.append("</div>")
        if folded:
            out.append("</details>")
    out.append("</section>")
    return "\n".join(out)


def _examples(examples: list) -> str:
    """Each example image beside every method's map of it."""
    if not examples:
        return ""
    esc = html.escape
    out = ['<section class="image" id="examples"><h2>Examples: what is ranked</h2>']
    for ex in examples:
        label = f"{ex.cls} {ex.name}" if ex.name else f"class {ex.cls}"
        if ex.detection is None:
            label, value = label, f"p={ex.probability:.3f}"
        else:
            label, value = f"detection #{ex.detection} · {label}", f"score={ex.probability:.3f}"
        out.append(f'<div class="rowhead" style="word-break:break-all">{esc(ex.path)} · {esc(label)} · '
                   f"{value}</div>")
        out.append('<div class="row" style="margin-top:12px">')
        out.append(f'<figure class="thumb"><img alt="input" src="{data_uri(ex.view)}"><figcaption><b>Input</b>'
                   "</figcaption></figure>")
        for method, pic in ex.pictures:
            out.append(f'<figure class="thumb"><img alt="{esc(method)}" src="{data_uri(pic)}">'
                       f"<figcaption><b>{esc(method)}</b></figcaption></figure>")
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


def _model(model: dict, preprocessing: dict) -> str:
    """The model as :func:`onnx_cnnviz.report.describe` sees it, and the preprocessing."""
    esc = html.escape

    def tensors(values):
        return "; ".join(f"{v['name']} {v['dtype']} {v['shape']}" for v in values or ())

    score = model.get("score") or {}
    path = model.get("gradient_path") or {}
    rows = [("file", model.get("model")), ("producer", model.get("producer")),
            ("IR / opset", f"{model.get('ir_version')} / {model.get('opset')}"),
            ("inputs", tensors(model.get("inputs"))), ("outputs", tensors(model.get("outputs"))),
            ("image input", f"{model.get('image_input')} ({model.get('image_layout')}, {model.get('image_dtype')})"),
            ("score", f"{score.get('tensor')}" + (f" (before {score['softmax_skipped']})"
                                                   if score.get("softmax_skipped") else " (the model's output)")),
            ("classes", model.get("num_classes")), ("default layer", model.get("default_layer")),
            ("layers", len(model.get("layers") or ())),
            ("gradient path", "every op has a backward rule" if path.get("ok") else
             f"missing rules: {', '.join(path.get('missing_rules') or ())} {path.get('error') or ''}"),
            ("preprocessing", format_params({k: v for k, v in (preprocessing or {}).items() if v is not None}))]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows if v not in (None, ""))
    return (f'<section class="image" id="model"><h2>Model and preprocessing</h2><table class="kv">{body}</table>'
            "</section>")


def _foot(summary: list, ranking: dict) -> str:
    from . import __version__

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data = jsonio.dumps_for_html({"summary": summary, "ranking": ranking})
    return (f"<footer>onnx_cnnviz {html.escape(__version__)} · {stamp} · maps as in cnnviz report: unsigned maps in "
            "jet over the input, signed ones blue - neutral - red centred at 0.</footer>"
            f'<script type="application/json" id="cnnviz-data">{data}</script></body></html>')


__all__ = ["render", "ExampleRow"]
