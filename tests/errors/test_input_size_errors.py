"""input_size given as anything but two positive ints is an InputError naming what was given."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_cnnviz.errors import InputError
from onnx_cnnviz.input_checks import size_pair


@pytest.mark.parametrize("size", [None, 224, (224,), (224, 0), (224, -1), (2.5, 3), (True, 3), ("a", 3), (1, 2, 3)])
def test_a_bad_input_size_is_an_input_error(size):
    with pytest.raises(InputError, match=r"input_size must be \(H, W\), two positive ints, got "):
        size_pair(size)


@pytest.mark.parametrize("size, expected", [((224, 160), (224, 160)), ([3.0, 4], (3, 4)),
                                            ((np.int64(7), np.int32(5)), (7, 5))])
def test_a_good_input_size_is_two_ints(size, expected):
    got = size_pair(size)
    assert got == expected and all(type(v) is int for v in got)
