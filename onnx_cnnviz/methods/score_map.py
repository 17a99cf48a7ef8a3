"""Class-score maps of images larger than the model's input: the fully convolutional rewrite
(:mod:`onnx_cnnviz.graph.fully_conv`, Long et al. 2015) run once per image batch."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..graph.fully_conv import fully_convolutional
from ..model import Model


def score_map(m: Model, x, softmax: bool = False, pool_stride: int = 1, batch_size: int | None = None):
    """Class-score maps ``(N, K, h', w')`` of images of any size >= the model's input size, from the fully
    convolutional rewrite of ``m``; the graph is built once per model and cached.

    At the model's own size the map is ``(N, K, 1, 1)`` and equals ``m.scores(x)``.
    """
    spec = m.spec()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 4 or x.shape[1] != m.channels:
        raise InputError(f"x must be (N, {m.channels}, H, W), not {x.shape}.")
    key = ("fully_conv", bool(softmax), int(pool_stride))

    def build():
        return fully_convolutional(spec.model, m.input_name, m.score_name, spec.info, softmax, pool_stride).model

    session = m.cached_session(key, build)
    step = max(1, int(batch_size or m.batch_size))
    parts = [session.run({m.input_name: x[s:s + step]})["cnnviz/score_map"] for s in range(0, len(x), step)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]
