"""Class-score maps of images larger than the model's input: the fully convolutional rewrite
(:mod:`onnx_cnnviz.graph.fully_conv`, Long et al. 2015) run once per image batch."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..graph.fully_conv import fully_convolutional
from ..model import Model


def score_map(m: Model, x, softmax: bool = False, pool_stride: int = 1, batch_size: int | None = None):
    """Class-score maps of images larger than the model's input, from its fully convolutional rewrite.

    The rewrite of Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
    (:mod:`onnx_cnnviz.graph.fully_conv`): the global pooling becomes a pool whose window is the feature map at the
    original size, and the dense layers become convolutions, so each output position scores the window of the
    model's input size under it. The graph is built once per
    model and setting and cached. At the model's own size the map is ``(N, K, 1, 1)`` and equals ``m.scores(x)``.

    Args:
        m: the loaded model.
        x: (N, C, H, W) float32 images at least as large as the model's input.
        softmax: apply the softmax over the K classes at each position.
        pool_stride: the rewritten pool's stride in feature-map cells (the scores' step is the network's total
            stride times this).
        batch_size: images per run (default: the model's).

    Returns:
        (N, K, h', w') float32 scores.

    Raises:
        InputError: ``x`` is not (N, C, H, W) with the model's channel count.
        ModelStructureError: the model cannot be rewritten fully convolutionally.
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
