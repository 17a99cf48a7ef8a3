"""D-RISE's detection vectors from each decoder, on synthetic head outputs (numpy only)."""
from __future__ import annotations

import numpy as np

from onnx_cnnviz.tasks import PicoDetDecoder, UltralyticsDecoder, YoloV5Decoder


def test_each_decoder_gives_the_objectness_and_class_row_of_a_candidates_anchor():
    rng = np.random.default_rng(0)
    # ultralytics (4 + C, A): no objectness, the class column of the anchor.
    out = rng.random((1, 4 + 3, 10), dtype=np.float32)
    dec = UltralyticsDecoder(out.shape)
    cand = dec.candidates(out[0])
    obj, cls = dec.vectors(out[0], cand.elements[[2, 7]])
    np.testing.assert_array_equal(obj, [1.0, 1.0])
    np.testing.assert_array_equal(cls, out[0, 4:, [2, 7]])
    # YOLOv5 (A, 5 + C): the objectness column and the class probabilities of the row.
    out = rng.random((1, 12, 5 + 3), dtype=np.float32)
    dec = YoloV5Decoder(out.shape)
    cand = dec.candidates(out[0])
    obj, cls = dec.vectors(out[0], cand.elements[[0, 11]])
    np.testing.assert_array_equal(obj, out[0, [0, 11], 4])
    np.testing.assert_array_equal(cls, out[0, [0, 11], 5:])
    # PicoDet (A, 4 + C), multi-label: candidate k is anchor k // C, its vector the anchor's whole score row.
    out = rng.random((1, 6, 4 + 3), dtype=np.float32)
    dec = PicoDetDecoder(out.shape)
    cand = dec.candidates(out[0])
    assert len(cand.scores) == 6 * 3
    obj, cls = dec.vectors(out[0], cand.elements[[4, 5, 17]])
    np.testing.assert_array_equal(obj, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(cls, out[0, [1, 1, 5], 4:])
    np.testing.assert_array_equal(cand.scores[[4, 5, 17]], out[0, [1, 1, 5], [5, 6, 6]])
