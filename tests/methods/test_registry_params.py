"""The one Registry type (onnx_cnnviz/registries.py) under the method and metric tables: parameters read from the
signature, one validation for both, the shared parameter dict of a run, and the entry fields that replaced the side
tables (CAM's layer rule, occlusion's size check, the rectifier note, the metrics' unit range and curve order)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.errors import InputError
from onnx_cnnviz.methods import registry
from onnx_cnnviz.metrics import registry as metric_registry
from onnx_cnnviz.registries import Registry, resolved, signature_params

from ..tiny_models import gap_classifier


def test_registry_type_registers_gets_and_refuses():
    class Entry:
        def __init__(self, name):
            self.name = name

    table = Registry("widget", Entry)
    first = table.register(Entry("a"))
    assert table.get("a") is first and table.names() == ["a"] and "a" in table and len(table) == 1
    assert table.get(first) is first  # an entry passes through
    with pytest.raises(InputError, match="a widget named 'a' is already registered"):
        table.register(Entry("a"))
    second = table.register(Entry("a"), replace=True)
    assert table.get("a") is second
    with pytest.raises(InputError, match="unknown widget 'b'; choose from a"):
        table.get("b")
    with pytest.raises(InputError, match="register takes a Entry, not str"):
        table.register("a")
    table.unregister("a")
    with pytest.raises(InputError, match="unknown widget"):
        table.unregister("a")
    assert registry.METHODS is registry._METHODS.entries  # the dict the rest of the code reads is the registry's


def test_signature_params_skip_the_common_keywords_and_keep_the_order():
    def f(m, x, targets=None, layer=None, *, upsample=True, b=2, batch_size=None, a=(1, 2), progress=None):
        return x

    assert signature_params(f, 2, registry.COMMON, None, "f") == {"b": 2, "a": (1, 2)}
    assert signature_params(f, 2, registry.COMMON, ("a",), "f") == {"a": (1, 2)}
    assert signature_params(f, 2, registry.COMMON, {"a": [1, 2]}, "f") == {"a": (1, 2)}  # a list equals a tuple

    def open_ended(m, x, targets=None, layer=None, **params):
        return x

    assert signature_params(open_ended, 2, registry.COMMON, {"k": 3}, "g") == {"k": 3}  # **params takes any name
    assert signature_params(max, 2, registry.COMMON, {"k": 3}, "max") == {"k": 3}  # no signature: the dict given
    with pytest.raises(InputError, match="no signature"):
        signature_params(max, 2, registry.COMMON, None, "max")


def test_resolved_keeps_defaults_for_none_and_makes_tuples():
    assert resolved({"w": (16, 16), "m": "score"}, {"w": [8, 8], "m": None}) == {"w": (8, 8), "m": "score"}


@pytest.mark.parametrize("name", ["a b", "a,b", "a/b", "a.b", ""])
def test_names_are_one_word(name):
    with pytest.raises(InputError, match="one word"):
        registry.Method(name, "X", cv.grad_cam, "map", True)
    with pytest.raises(InputError, match="one word"):
        metric_registry.Metric(name, "X", metric_registry.get("deletion").func, "maps", False)


def test_the_built_in_entries_read_their_defaults_from_their_functions():
    assert registry.get("occlusion").params == {"window": (16, 16), "stride": (8, 8), "baseline": 0.0,
                                                "mode": "score"}
    assert registry.get("smoothgrad").params == {"samples": 25, "noise": 0.15, "seed": 0}
    assert registry.get("ig").params == {"steps": 50, "baseline": 0.0}
    assert all(not registry.get(n).params for n in ("gradcam", "cam", "saliency", "guided", "ixg"))
    assert metric_registry.get("deletion").params == {"baseline": 0.0, "pixels_per_step": None,
                                                     "output": "probability", "channels": "sum"}
    assert metric_registry.get("insertion").params["baseline"] == "blur"


def test_one_parameter_dict_for_the_methods_of_a_run():
    run = {"window": (8, 8), "samples": 3, "ig.baseline": 0.5, "baseline": 0.25}
    assert registry.parameters("occlusion", run, shared=True) == {"window": (8, 8), "stride": (8, 8),
                                                                   "baseline": 0.25, "mode": "score"}
    assert registry.parameters("ig", run, shared=True) == {"steps": 50, "baseline": 0.5}  # METHOD.KEY wins
    assert registry.parameters("gradcam", run, shared=True) == {}
    registry.check_parameters(["occlusion", "ig", "smoothgrad"], run)
    with pytest.raises(InputError, match="parameter 'ig.baseline' names method 'ig', which is not run"):
        registry.check_parameters(["occlusion"], run)
    with pytest.raises(InputError, match="no method takes parameter 'windows'; the methods' parameters: occlusion"):
        registry.parameters("occlusion", {"windows": 3}, shared=True)
    with pytest.raises(InputError, match="method 'ig' takes no parameter 'window'; its parameters: steps, baseline"):
        registry.parameters("ig", {"ig.window": 3}, shared=True)
    with pytest.raises(InputError, match="takes no parameter 'samples'"):
        registry.parameters("occlusion", {"samples": 3})  # alone, a method takes only its own
    with pytest.raises(InputError, match="is for method 'ig', not 'occlusion'"):
        registry.parameters("occlusion", {"ig.steps": 3})


def test_occlusion_checks_its_window_against_the_input_size():
    messages = []

    def warn(message, key):  # a Reporter's warn: the message, and the key that shows it once
        assert key == message
        messages.append(message)

    registry.check_input_size(["gradcam", "occlusion"], {"window": (4, 4), "stride": (2, 2)}, (8, 8),
                              warn)
    assert messages == []
    with pytest.raises(InputError, match="window 16x16 is larger than the 8x8 model input") as caught:
        registry.check_input_size(["occlusion"], {}, (8, 8), warn)
    assert caught.value.option == "--window"  # the command line reports it as a usage error of --window
    registry.check_input_size(["occlusion"], {"window": 4, "stride": 8}, (8, 8), warn)
    assert len(messages) == 1 and "stride 8x8 is not smaller than the 8x8 image" in messages[0]
    registry.check_input_size(["occlusion"], {}, (8, 8), warn, fixed=False)  # one image: a warning only
    assert len(messages) == 2


def test_cam_keeps_its_layer_rule_and_other_methods_take_any_layer():
    m = cv.load(gap_classifier(size=8))
    head = registry.resolved_layer(m, "cam", None)
    assert registry.get("cam").layer_rule is not None and registry.resolved_layer(m, "cam", head) == head
    assert registry.resolved_layer(m, "gradcam", None) == m.default_layer
    assert registry.resolved_layer(m, "saliency", "anything") is None
    from onnx_cnnviz.methods.cam import cam_head

    others = [layer.name for layer in m.layers if layer.name not in cam_head(m).aliases]
    assert others
    with pytest.raises(InputError, match="CAM is defined only at the feature map feeding the classifier head"):
        registry.resolved_layer(m, "cam", others[0])
    assert registry.resolved_layer(m, "gradcam", others[0]) == others[0]


def test_rectifier_note_comes_from_the_entries():
    from onnx_cnnviz.report import plain_gradient_notes

    assert [n for n in registry.names() if registry.get(n).rectifier_rule] == ["guided", "deconvnet",
                                                                               "guided-gradcam"]
    relu = cv.load(gap_classifier(size=8))
    assert plain_gradient_notes(relu, ["guided", "deconvnet"]) == []
    tanh = cv.load(gap_classifier(size=8, activation="Tanh"))
    [note] = plain_gradient_notes(tanh, ["gradcam", "guided", "guided-gradcam"])
    assert note.startswith("guided, guided-gradcam: ")
    assert plain_gradient_notes(tanh, ["gradcam", "saliency"]) == []


def test_metric_fields_replace_the_side_tables():
    from onnx_cnnviz.metrics.inputs import explanation_for

    assert [n for n in metric_registry.names() if metric_registry.get(n).unit_range] == \
        ["average-drop", "increase-in-confidence"]
    assert [n for n in metric_registry.names() if not metric_registry.get(n).ordered_curve] == ["sensitivity-max"]
    maps = np.array([[[-1.0, 0.0], [1.0, 3.0]]], np.float32)
    np.testing.assert_allclose(explanation_for("average-drop", maps, "ig"), [[[0, 0], [1 / 3, 1]]], rtol=1e-6)
    assert explanation_for("deletion", maps, "ig") is maps
    assert explanation_for("sensitivity-max", maps, "ig") == "ig"


def test_cv_reaches_a_registered_method_by_name():
    def blank(m, x, targets=None, layer=None, *, upsample=True, normalize=True, batch_size=None):
        return np.zeros((len(x),) + tuple(np.shape(x)[2:]), np.float32)

    assert not hasattr(cv, "blank_map")
    registry.register(registry.Method("blank-map", "Blank", blank, "map", False))
    try:
        assert cv.blank_map is blank and "blank_map" in dir(cv)
        assert cv.guided_gradcam is registry.get("guided-gradcam").func
    finally:
        registry.unregister("blank-map")
    assert not hasattr(cv, "blank_map")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cv.grad_cam is registry.get("gradcam").func  # the documented names stay as they were
