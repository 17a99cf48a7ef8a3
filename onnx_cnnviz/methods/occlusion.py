"""Occlusion maps (Zeiler & Fergus 2014, Sec. 4.2 and Fig. 7), with the occluded images made inside the graph.

A window of baseline values slides over the image; for every pixel the map averages, over all windows that cover it,

* ``mode="score"``: the drop of the target class score, ``S_c(x) - S_c(x with the window occluded)`` — the same
  number as captum's ``Occlusion.attribute(x, sliding_window_shapes=(C, wh, ww), strides=(C, sh, sw),
  baselines=b, target=c)`` (window placement and normalisation included; captum's map is equal across channels);
* ``mode="probability"``: the probability (softmax of the scores) of the target class with the window occluded, as in
  Zeiler & Fergus Fig. 7(d): low where the object is.

The graph built by :func:`onnx_cnnviz.graph.occlusion.occlusion_graph` takes the image once plus a (P, 2) tensor of
window positions and makes the P occluded images itself, so only those two travel to the runtime per run. The
unoccluded image is evaluated in the same run as one extra "position" outside the image; its scores give the
reference score and, when ``targets`` is None, the top-1 class.

Where it saves work, the incremental graph (:mod:`onnx_cnnviz.graph.occlusion_incremental`) is used instead: one run
of the model on the unoccluded image gives the reference scores and the feature maps that graph reads, and per window
only the feature-map boxes the window can change are recomputed. Same scores, up to float summation order.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import InputError, RuntimeFailure
from ..graph import occlusion_incremental
from ..graph.occlusion import (BASELINE, IMAGE, MODES, OUTPUT, POSITIONS, WINDOW, occlusion_graph,
                               window_positions)
from ..maps import normalize_maps, normalize_signed
from ..model import Model, check_finite
from ..targets import resolve
from .arguments import baseline_values, flag, input_only, pair
from .arguments import batch_size as check_batch_size
from .attribution import Progress, auto_batch_size


def occlusion_session(m: Model, hw, mode: str = "score"):
    """The cached session of the occlusion graph for input size ``hw``."""
    hw = tuple(int(v) for v in hw)
    return m.cached_session(("occlusion", hw, mode), lambda: occlusion_graph(
        m.spec(hw).model, m.input_name, m.score_name, mode=mode))


def incremental_plan(m: Model, hw, window, stride) -> occlusion_incremental.Plan:
    """Which nodes the incremental occlusion graph recomputes on boxes, and its estimated cost per window relative
    to a full forward pass (see :mod:`onnx_cnnviz.graph.occlusion_incremental`)."""
    hw, window, stride = (tuple(int(v) for v in t) for t in (hw, window, stride))
    spec = m.spec(hw)
    return m.cached(("occlusion-plan", hw, window, stride), lambda: occlusion_incremental.plan(
        spec.model, spec.info, m.input_name, m.score_name, window, stride))


def incremental_session(m: Model, hw, window, stride, mode: str = "score"):
    """The cached session of the incremental occlusion graph; its inputs besides the positions and the baseline are
    the original maps it reads (``session.input_names``). None, with a warning, if the graph cannot be built or
    loaded (the caller then runs the full graph: slower, same result)."""
    hw, window, stride = (tuple(int(v) for v in t) for t in (hw, window, stride))

    def build():
        spec = m.spec(hw)
        try:
            graph = occlusion_incremental.incremental_occlusion_graph(
                spec.model, spec.info, m.input_name, m.score_name, window, stride, mode=mode,
                the_plan=incremental_plan(m, hw, window, stride)).model
            return m.new_session(graph)
        except (ValueError, KeyError, RuntimeFailure) as exc:
            warnings.warn(f"incremental occlusion is not available for this model ({str(exc)[:300]}); every "
                          "occluded image runs through the whole network instead (same result, slower). Please "
                          "report this with the model.", RuntimeWarning, stacklevel=5)
            return None
    return m.cached(("occlusion-incremental", hw, window, stride, mode), build)


def stride_note(stride, hw) -> str | None:
    """The warning about ``stride`` on an ``hw`` image, or None: a stride not smaller than the image along an axis
    places only one window along it, at the top or left edge, so the map is empty beyond that window. The command
    line gives the same text before any work (with it as the ``once`` key, the warning is shown once)."""
    axes = [axis for axis, s, size in (("height", stride[0], hw[0]), ("width", stride[1], hw[1])) if s >= size]
    if not axes:
        return None
    shown = "a single window" if len(axes) == 2 else ("one row of windows" if axes == ["height"] else
                                                       "one column of windows")
    return (f"the occlusion stride {stride[0]}x{stride[1]} is not smaller than the {hw[0]}x{hw[1]} image in "
            f"{' and '.join(axes)}: {shown} is placed (at the top-left), so the map is empty outside it; give a "
            "smaller stride (--stride).")


def warn_stride(stride, hw) -> None:
    """:func:`stride_note` as a :class:`UserWarning`, when there is one."""
    note = stride_note(stride, hw)
    if note:
        warnings.warn(note, UserWarning, stacklevel=3)


def occlusion(m: Model, x, targets=None, layer=None, *, window=(16, 16), stride=(8, 8), baseline=0.0,
              mode: str = "score", upsample: bool = True, normalize: bool = False, batch_size: int | None = None,
              incremental: bool = True, progress: Progress | None = None) -> np.ndarray:
    """(N, H, W) float32 occlusion map, at the input's size (``upsample`` has nothing to do; ``layer`` must be None).

    ``window``/``stride``: (height, width) or one int. Windows start at 0, stride, 2*stride, ... along each axis,
    ``ceil((H - wh) / sh) + 1`` of them (captum's placement): the last one may reach past the border and is clipped.
    ``baseline``: the fill value: a float, per-channel values (C,), (N, C) values, or ``"mean"`` (each image's channel
    means). ``normalize``: divide each map by its largest absolute value (``mode="score"``: the drop is signed, and
    zero stays "no change") or, for ``mode="probability"``, min-max scale it; off by default (the raw numbers).
    ``mode``: ``"score"`` (score drop, as captum) or ``"probability"`` (softmax probability of the target with the
    pixel occluded, averaged over the windows covering it). ``targets``: None = top-1 of the unoccluded image.
    ``batch_size``: occluded images per run (default: as many as a memory budget allows, at most 64).
    ``incremental``: recompute, per window, only the feature-map boxes the window can change, wherever the model's
    early layers allow it and that saves at least 15% of the work (exact; ResNet-50 at 224 px, window 32, stride
    16: about 1.5x faster). ``False`` always runs every occluded image through the whole network.

    The window scores are streamed: each run's scores are reduced to the target's as they come and the map is made
    from one value per window, so memory stays that of ``batch_size`` occluded images whatever the number of
    windows (stride 1 included). ``progress``: a callable ``progress(done, total)`` called after each run with the
    windows done so far and their total, ``N * windows per image``.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    input_only("occlusion", layer)
    flag(upsample, "upsample")
    normalize = flag(normalize, "normalize")
    batch_size = check_batch_size(batch_size)
    x = m.check_input(x)
    n, c, h, w = x.shape
    window, stride = pair(window, "window"), pair(stride, "stride")
    if window[0] > h or window[1] > w:
        raise InputError(f"window {window} is larger than the image ({h}x{w}).")
    warn_stride(stride, (h, w))  # as the command line does, before any work
    seeds = resolve(m, targets, n) if targets is not None else None
    if seeds is not None and seeds.objects:
        # A target object's value is sum(cotangent * head output): read from the occluded images' head output.
        if seeds.tensor != m.score_name:
            raise InputError(f"occlusion reads the model's head output '{m.score_name}'; a target on '{seeds.tensor}' "
                             "is explained by the gradient and CAM methods.")
        if mode != "score":
            raise InputError("a target object is occluded in mode='score' (its value's drop); mode='probability' is "
                             "the softmax of class scores.")
    elif m.task != "classifier":
        raise InputError(f"occlusion of a {m.task} needs target objects (a Detection, a Region, an OutputElement).")
    target_arr = None if seeds is None else seeds.classes
    rows = seeds.rows if seeds is not None and seeds.objects else None
    fills = baseline_values(x, baseline, image_shaped=False).reshape(n, c)
    positions = window_positions((h, w), window, stride)
    # Row 0 of every image: a window entirely outside the image, i.e. the image itself.
    feed_rows = np.concatenate([np.array([[h, w]], dtype=np.int64), positions])
    bs = batch_size or auto_batch_size(m, (h, w), len(feed_rows), backward=False)
    if m.static_batch:
        bs = 1
    use_incremental = incremental and not m.static_batch and incremental_plan(m, (h, w), window, stride).worthwhile
    session = incremental_session(m, (h, w), window, stride, mode) if use_incremental else None
    use_incremental = session is not None
    if use_incremental:
        originals = [name for name in session.input_names if name not in (POSITIONS, BASELINE)]
    else:
        session = occlusion_session(m, (h, w), mode)
    window_feed = np.asarray(window, dtype=np.int64)

    # The windows form a grid (tops x lefts, rows varying slowest), so the map, the mean value of the windows covering
    # each pixel, is R^T V C / R^T 1 C with V the (tops, lefts) window values and R, C each top's rows and each
    # left's columns: no (windows, H) or (windows, W) matrix.
    tops, lefts = np.unique(positions[:, 0]), np.unique(positions[:, 1])
    row_idx, col_idx = np.arange(h), np.arange(w)
    in_rows = ((row_idx[None] >= tops[:, None]) & (row_idx[None] < tops[:, None] + window[0])).astype(np.float64)
    in_cols = ((col_idx[None] >= lefts[:, None]) & (col_idx[None] < lefts[:, None] + window[1])).astype(np.float64)
    counts = np.outer(in_rows.sum(axis=0), in_cols.sum(axis=0))  # (H, W) windows covering each pixel
    windows = len(positions)
    total_windows = n * windows

    maps = np.zeros((n, h, w), dtype=np.float32)
    for i in range(n):
        image = x[i:i + 1]
        per_window = np.empty(windows, dtype=np.float64)
        if use_incremental:
            # The unoccluded run gives the reference scores and the original maps the boxes are pasted into.
            clean = m.run(image, outputs=[o for o in originals if o != m.input_name], batch_size=1)
            feeds = {o: image if o == m.input_name else clean.outputs[o] for o in originals}
            reference = clean.scores.reshape(-1).astype(np.float64)
            check_finite(reference, "class scores with windows occluded", image=i)
            runs = ((s, {POSITIONS: positions[s:s + bs], BASELINE: fills[i], **feeds}) for s in range(0, windows, bs))
        else:
            reference = None  # row 0 of the first run
            runs = ((s - 1, {IMAGE: image, POSITIONS: feed_rows[s:s + bs], WINDOW: window_feed,
                             BASELINE: fills[i]}) for s in range(0, len(feed_rows), bs))
        t = None if target_arr is None else int(target_arr[i])
        for first, feed in runs:  # first: the index of the run's first window (-1: the run starts with the image)
            values = session.run(feed, [OUTPUT])[OUTPUT]
            values = values.reshape(len(values), -1).astype(np.float64)
            check_finite(values, "class scores with windows occluded", image=i)
            if first < 0:
                reference, values, first = values[0], values[1:], 0
            if rows is not None:  # the target's value, sum(cotangent * head output), per window
                ref_value, column = float(reference @ rows[i]), values @ rows[i].astype(np.float64)
            else:
                if t is None:
                    t = int(reference.argmax())
                ref_value, column = reference[t], values[:, t]
            per_window[first:first + len(column)] = ref_value - column if mode == "score" else column
            if progress is not None and len(column):
                progress(i * windows + first + len(column), total_windows)
        grid = per_window.reshape(len(tops), len(lefts))
        total = in_rows.T @ (grid @ in_cols)
        maps[i] = np.where(counts > 0, total / np.maximum(counts, 1), 0.0)
    if normalize:
        return normalize_signed(maps) if mode == "score" else normalize_maps(maps)
    return maps
