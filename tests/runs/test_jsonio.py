"""The one JSON encoder: numpy, paths and tuples become plain JSON; HTML-embedded JSON cannot close its element."""
import json
from pathlib import Path

import numpy as np

from onnx_cnnviz import jsonio


def test_numpy_paths_and_tuples_become_plain_json():
    doc = {"a": np.float32(0.5), "b": np.int64(3), "c": np.arange(3), "d": Path("x/y.png"), "e": (1, 2),
           "f": [np.bool_(True)], "g": None}
    assert json.loads(jsonio.dumps(doc)) == {"a": 0.5, "b": 3, "c": [0, 1, 2], "d": "x/y.png", "e": [1, 2],
                                             "f": [True], "g": None}
    assert jsonio.to_jsonable({"k": (np.int32(1), Path("p"))}) == {"k": [1, "p"]}
    assert jsonio.to_jsonable(object.__new__(type("Odd", (), {"__str__": lambda self: "odd"}))) == "odd"


def test_html_json_cannot_end_the_script_element():
    value = {"title": "</script><script>alert(1)</script>", "amp": "a & b"}
    text = jsonio.dumps_for_html(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\n" not in text
    assert json.loads(text) == value
