"""Model keeps a bounded number of sessions (least recently used dropped) and gives the same results after eviction."""
import numpy as np
import pytest

import onnx_cnnviz as cv
from onnx_cnnviz.model import DEFAULT_MAX_SESSIONS, LRUCache

from tests.tiny_models import gap_classifier


def test_lru_cache_drops_least_recently_used():
    built = []
    cache = LRUCache(2)

    def build(key):
        built.append(key)
        return key * 10

    assert cache.get(1, lambda: build(1)) == 10
    assert cache.get(2, lambda: build(2)) == 20
    assert cache.get(1, lambda: build(1)) == 10  # a hit makes 1 the most recent
    assert cache.get(3, lambda: build(3)) == 30  # evicts 2, not 1
    assert cache.keys() == [1, 3]
    assert cache.get(2, lambda: build(2)) == 20
    assert built == [1, 2, 3, 2]
    assert len(cache) == 2


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True, "2"])
def test_lru_cache_capacity_checked(capacity):
    with pytest.raises(cv.InputError):
        LRUCache(capacity)


def test_model_sessions_are_bounded_and_results_survive_eviction():
    """Many (layer, rule, size, method) combinations in one long-lived model: the cache never holds more than
    max_sessions entries, and a combination evicted and rebuilt gives the same numbers."""
    m = cv.load(gap_classifier(size=8), max_sessions=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    first = {rule: cv.gradients(m, x, 1, rule=rule) for rule in ("vanilla", "guided", "deconvnet")}
    first_cam = cv.grad_cam(m, x, 1, layer="conv1")
    for _ in range(2):
        for rule in ("vanilla", "guided", "deconvnet"):
            np.testing.assert_array_equal(cv.gradients(m, x, 1, rule=rule), first[rule])
            assert m.cache_size <= 3
        np.testing.assert_array_equal(cv.grad_cam(m, x, 1, layer="conv1"), first_cam)
        cv.grad_cam(m, x, 1, layer="relu1")
        cv.saliency(m, x)
        cv.occlusion(m, x, window=4, stride=4)
        assert m.cache_size <= 3


def test_default_bound_applies():
    m = cv.load(gap_classifier(size=8))
    x = np.zeros((1, 3, 8, 8), np.float32)
    for layer in ("conv1", "relu1"):
        for rule in ("vanilla", "guided", "deconvnet"):
            for target in (None, 0):
                m.run(x, outputs=[layer], wrt=[layer, m.input_name], rule=rule, targets=target)
    assert 0 < m.cache_size <= DEFAULT_MAX_SESSIONS


def test_max_sessions_checked():
    with pytest.raises(cv.InputError):
        cv.load(gap_classifier(size=8), max_sessions=0)
