"""One forward pass per image for rows that repeat it (``Model._run_shared_forward``, ``graph/backward_split.py``).

The split run must give, on every row, what the whole gradient graph gives that row alone: checked against one
``Model.run`` per row (which never splits: one row has nothing to share) on a ResNet (MaxPool indices computed again
in the backward part), on the committed shapes detector through ``tasks.explain`` (the detections of an image), with
the guided rule set, and where the backward part cannot be cut (a MatMul across the batch: the whole graph runs).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cnnviz as cv
from onnx_cnnviz.graph.autodiff import append_gradients
from onnx_cnnviz.graph.backward_split import split_backward
from onnx_cnnviz.image import Preprocessing, preprocess
from onnx_cnnviz.model import repeated_images
from onnx_cnnviz.tasks import detect, explain
from tests.conftest import REPO, load_script
from tests.tiny_models import make_model, save


def split_was_used(m) -> bool:
    """Whether the model holds a split plan (forward and backward sessions), not a refusal (None)."""
    return any(key[:2] == ("custom", "shared-forward") and value is not None
               for key, value in m._cache._items.items())


def one_row_at_a_time(m, x, **run_args):
    return [m.run(x[i:i + 1], **{k: ([v[i]] if k == "targets" else v) for k, v in run_args.items()})
            for i in range(len(x))]


def test_repeated_images_finds_equal_images_only():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    c = a.copy()
    c.reshape(-1)[1] += 1.0  # outside the sampled values (every 3rd of 12288): only the full comparison sees it
    x = np.stack([a, b, a, c, b, a])
    first, inverse = repeated_images(x)
    assert first.tolist() == [0, 1, 3]
    assert inverse.tolist() == [0, 1, 0, 2, 1, 0]
    np.testing.assert_array_equal(x[first][inverse], x)


@pytest.mark.parametrize("rule", ["vanilla", "guided"])
def test_resnet_rows_equal_their_own_runs(loaded_batch, rule):
    _, m, x = loaded_batch("resnet18", 3)
    rows = np.array([0, 0, 1, 2, 0, 2])
    xr, targets = x[rows], [1, 7, 3, 400, 999, 7]
    layer = m.default_layer
    wrt = [layer, m.input_name]
    shared = m.run(xr, outputs=[layer], wrt=wrt, rule=rule, targets=targets, batch_size=2)
    assert split_was_used(m)
    alone = one_row_at_a_time(m, xr, outputs=[layer], wrt=wrt, rule=rule, targets=targets)
    for name in wrt:
        want = np.concatenate([r.grads[name] for r in alone])
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(shared.grads[name], want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(shared.scores, np.concatenate([r.scores for r in alone]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(shared.outputs[layer], np.concatenate([r.outputs[layer] for r in alone]))
    np.testing.assert_array_equal(shared.targets, targets)


def test_detections_of_an_image_share_its_forward():
    sdet = load_script(REPO / "models" / "shapes_detection.py")
    images, _, _ = sdet.make_dataset(3, sdet.TEST_SEED)
    m = cv.load(REPO / "models" / "shapes_detector.onnx", task="detector", device="cpu")
    x = preprocess(images, Preprocessing.from_metadata(m.metadata))
    found = detect(m, x)
    flat = [d for image in found for d in image]
    assert len(flat) > len(x)  # some image has several detections: there is a forward pass to share
    for method in (cv.grad_cam, cv.saliency):
        maps = explain(method, m, x, found)
        for i, d in enumerate(flat):
            alone = explain(method, m, x, [d])[0]
            np.testing.assert_allclose(maps[i], alone, rtol=0, atol=1e-5)
    assert split_was_used(m)


def batch_mixing_model():
    """x (N, 3, 2, 2) -> (N, 12) -> transposed (12, N) -> W (5, 12) @ . -> Relu -> (N, 5): the Relu's output, which
    its backward rule reads, has the batch on its last axis and comes from a MatMul: no cheap way to feed it per row."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((5, 12)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 12], np.int64), "flat_shape")
    nodes = [helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["cols"], perm=[1, 0]),
             helper.make_node("MatMul", ["w", "cols"], ["mixed"]),
             helper.make_node("Relu", ["mixed"], ["rect"]),
             helper.make_node("Transpose", ["rect"], ["logits"], perm=[1, 0])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], [w, shape])


def test_a_backward_that_cannot_be_cut_runs_the_whole_graph(tmp_path):
    m = cv.load(save(batch_mixing_model(), tmp_path / "mixing.onnx"), device="cpu", input_size=(2, 2))
    spec = m.spec()
    gg = append_gradients(spec.model, m.score_name, [m.input_name], spec.info, constants=spec.constants)
    assert split_backward(gg.model, len(spec.model.graph.node), m.input_name, spec.info,
                          [gg.gradients[m.input_name]], spec.constants) is None
    x = np.random.default_rng(2).standard_normal((2, 3, 2, 2)).astype(np.float32)
    xr, targets = x[[0, 1, 0]], [0, 1, 4]
    shared = m.run(xr, wrt=[m.input_name], targets=targets)
    assert not split_was_used(m)
    alone = one_row_at_a_time(m, xr, wrt=[m.input_name], targets=targets)
    np.testing.assert_allclose(shared.grads[m.input_name], np.concatenate([r.grads[m.input_name] for r in alone]),
                               rtol=1e-6, atol=1e-6)


def test_one_image_broadcast_along_the_batch_runs_as_its_copies(tmp_path):
    """``np.broadcast_to`` of one image (what ``tasks.explain`` passes for the detections of one image) stays a view
    through the input checks, shares one forward pass, and gives what its copies give; NaN in it is still refused."""
    m = cv.load(REPO / "models" / "gap_cnn.onnx", device="cpu")
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    view = np.broadcast_to(x, (4, 3, 64, 64))
    checked = m.check_input(view)
    assert checked.strides[0] == 0 and checked.base is not None
    first, inverse = repeated_images(checked)
    assert first.tolist() == [0] and inverse.tolist() == [0, 0, 0, 0]
    targets = [0, 1, 2, 3]
    for method in (cv.grad_cam, cv.saliency, cv.guided_grad_cam):
        np.testing.assert_array_equal(method(m, view, targets=targets), method(m, np.repeat(x, 4, 0), targets=targets))
    layer = m.default_layer
    shared = m.run(view, outputs=[layer], wrt=[layer], targets=targets)
    copies = m.run(np.repeat(x, 4, 0), outputs=[layer], wrt=[layer], targets=targets)
    assert shared.scores.strides[0] == 0 and shared.outputs[layer].strides[0] == 0  # views of the one image's
    for got, want in ((shared.scores, copies.scores), (shared.outputs[layer], copies.outputs[layer]),
                      (shared.grads[layer], copies.grads[layer])):
        np.testing.assert_array_equal(got, want)
    assert shared.grads[layer].flags.writeable  # one gradient per row
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(cv.InputError, match="NaN"):
        m.run(np.broadcast_to(bad, (3, 3, 64, 64)))
