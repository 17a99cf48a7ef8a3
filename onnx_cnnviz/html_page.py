"""What every HTML page this package writes shares (the report of ``cnnviz report``, the evaluation page of ``cnnviz
evaluate``): the head (no network: a Content-Security-Policy that forbids every external fetch), the styles, the
check that its pictures loaded, pictures as ``data:`` URIs, parameters in one line, the diverging colour bar."""
from __future__ import annotations

import base64
import html

import cv2
import numpy as np

from .errors import InputError
from .image import DIVERGING, colorize


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 RGB picture encoded as PNG.

    Args:
        image: uint8 (H, W, 3) RGB.

    Returns:
        The PNG file's bytes.
    """
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(np.asarray(image)[..., ::-1]))
    if not ok:
        raise InputError("could not encode a picture as PNG.")
    return encoded.tobytes()


def data_uri(image: np.ndarray) -> str:
    """A uint8 RGB picture as a ``data:image/png;base64,...`` URI (pages embed their pictures: no network).

    Args:
        image: uint8 (H, W, 3) RGB.

    Returns:
        The URI.
    """
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}
.meta{color:#555;font-size:13px;margin-bottom:18px}
.meta code{background:#eee;padding:1px 4px;border-radius:3px}
section.image{background:#fff;border:1px solid #ddd;border-radius:8px;padding:14px 16px;margin-bottom:18px}
section.image h2{font-size:15px;margin:0 0 10px;word-break:break-all}
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0;width:224px}
figure img{width:224px;height:auto;display:block;border-radius:4px;image-rendering:auto}
figcaption{font-size:12px;margin-top:4px;line-height:1.35}
figcaption b{font-size:13px}
.params{color:#666;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;word-break:break-all}
table.top{border-collapse:collapse;font-size:12px;min-width:220px}
table.top th,table.top td{padding:2px 6px;text-align:left;border-bottom:1px solid #eee}
table.top td.num{text-align:right;font-variant-numeric:tabular-nums}
table.top tr.target td{background:#fff3c4;font-weight:600}
table.top tr.gap td{color:#999;text-align:center;border-bottom:none}
.mark{color:#a15c00;font-size:11px;margin-left:4px}
.rowhead{font-size:13px;margin:12px 0 -4px;color:#333}
.bar{display:inline-block;vertical-align:middle;background:#4a7bd0;height:8px;border-radius:2px;margin-right:6px}
.error{color:#b00020;font-size:13px}
.note{background:#fff8e1;border:1px solid #f0d890;border-radius:4px;padding:6px 10px;font-size:13px;margin-bottom:12px}
.cbar{height:8px;border-radius:2px;margin-top:4px}
.metrics{font-size:11px;color:#333;margin-top:3px}
.cbar-labels{display:flex;justify-content:space-between;color:#666;font-size:10px}
footer{color:#888;font-size:11px;margin-top:24px}
"""


# Marks <body data-images="loaded/total"> once the page has loaded, so a headless browser can check the pictures.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def _colour_bar(scale: float) -> str:
    """A diverging colour bar (the picture's own colour map, blue -> neutral -> red) labelled -scale, 0, +scale."""
    colours = (colorize(np.array([[t]], np.float32), DIVERGING)[0, 0] for t in np.linspace(0.0, 1.0, 9))
    stops = ",".join("#" + "".join(f"{int(v):02x}" for v in rgb) for rgb in colours)
    return (f'<div class="cbar" style="background:linear-gradient(to right,{stops})"></div>'
            f'<div class="cbar-labels"><span>{-scale:.3g}</span><span>0</span><span>+{scale:.3g}</span></div>')


def page_head(title: str, extra_css: str = "") -> list[str]:
    """The opening of every page this package writes, up to ``<body>``.

    No network: the Content-Security-Policy forbids every external fetch (inline style and script and data: images
    only). The shared styles plus ``extra_css``, and the load check of its pictures (:data:`_SCRIPT`).

    Args:
        title: the page's title (escaped here).
        extra_css: more CSS for this page.

    Returns:
        The lines.
    """
    return ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
            f"<title>{html.escape(title)}</title><style>{_CSS}{extra_css}</style><script>{_SCRIPT}</script></head>"
            "<body>"]


def format_params(params: dict) -> str:
    """Parameters as ``key=value, ...``, with sizes written ``AxB``.

    Args:
        params: name -> value.

    Returns:
        The text.

    Example:
        >>> format_params({"window": (16, 16), "stride": 8})
        'window=16x16, stride=8'
    """
    parts = []
    for k, v in params.items():
        if isinstance(v, (tuple, list)):
            v = ("x" if k in ("size", "window", "stride") else ",").join(str(i) for i in v)
        parts.append(f"{k}={v}")
    return ", ".join(parts)
