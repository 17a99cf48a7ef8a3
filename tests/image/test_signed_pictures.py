"""Signed results are drawn with a diverging colour map centred at 0; unsigned ones keep the sequential one."""
import numpy as np
import pytest

from onnx_cnnviz import report
from onnx_cnnviz.image import DIVERGING, colorize, overlay, signed_to_unit
from onnx_cnnviz.methods import registry


def _view():
    return np.full((16, 16, 3), 128, np.uint8)


def test_zero_has_one_colour_whatever_the_range():
    """Two occlusion maps of different ranges (one mostly positive, one mostly negative): their zero pixels are the
    same colour. With min-max scaling (the old pictures) zero was cyan on one map and yellow on the other."""
    a = np.zeros((16, 16), np.float32)
    b = np.zeros((16, 16), np.float32)
    a[:8] = 5.0
    a[8:12] = -0.1
    b[:8] = -3.0
    b[8:12] = 0.2
    pa, pb = report.picture("occlusion", a, _view()), report.picture("occlusion", b, _view())
    np.testing.assert_array_equal(pa[14, 3], pb[14, 3])  # both 0 there
    neutral = overlay(_view(), np.full((16, 16), 0.5, np.float32), colormap=DIVERGING)[0, 0]
    np.testing.assert_array_equal(pa[14, 3], neutral)
    # Positive is red (R > B), negative blue (B > R).
    assert pa[0, 0, 0] > pa[0, 0, 2] and pb[0, 0, 2] > pb[0, 0, 0]


def test_signed_attribution_keeps_its_sign():
    attr = np.zeros((3, 16, 16), np.float32)
    attr[:, :8] = 1.0
    attr[:, 8:] = -1.0
    pic = report.picture("ig", attr, _view())
    assert pic[0, 0, 0] > pic[0, 0, 2]  # positive half red
    assert pic[15, 0, 2] > pic[15, 0, 0]  # negative half blue


def test_unsigned_maps_keep_the_sequential_map():
    cam = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    assert report.color_scale("gradcam", cam) is None
    np.testing.assert_array_equal(report.picture("gradcam", cam, _view(), colormap="jet"),
                                  overlay(_view(), cam, colormap="jet"))


@pytest.mark.parametrize("name", registry.names())
def test_every_signed_method_has_a_scale(name):
    meth = registry.get(name)
    shape = (16, 16) if meth.kind in ("map", "gray") else (3, 16, 16)
    value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if not meth.signed:
        value = np.abs(value)
    scale = report.color_scale(name, value)
    assert (scale is not None) == (meth.signed and meth.kind in ("map", "attribution"))


def test_signed_to_unit():
    m = np.array([[-2.0, 0.0, 1.0]], np.float32)
    np.testing.assert_allclose(signed_to_unit(m), [[0.0, 0.5, 0.75]])
    np.testing.assert_allclose(signed_to_unit(m, scale=1.0), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(signed_to_unit(np.zeros((2, 2))), 0.5)
    table = colorize(np.array([[0.0, 0.5, 1.0]], np.float32), DIVERGING)[0]
    assert table[0, 2] > table[0, 0] and table[2, 0] > table[2, 2] and abs(int(table[1, 0]) - int(table[1, 2])) < 5


def test_report_draws_a_colour_bar_for_signed_panels_only():
    view = _view()
    occ = np.linspace(-1, 3, 256, dtype=np.float32).reshape(16, 16)
    cam = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    entry = report.ImageEntry("a.png", view, [(0, "a", 1.0, 0.9)])
    entry.panels.append(("occlusion", 0, report.picture("occlusion", occ, view), {}, report.color_scale("occlusion",
                                                                                                       occ)))
    entry.panels.append(("gradcam", 0, report.picture("gradcam", cam, view), {}, report.color_scale("gradcam", cam)))
    html = report.render_report([entry], {"model": "m"})
    assert html.count('class="cbar"') == 1
    assert "<span>-3</span><span>0</span><span>+3</span>" in html
