"""What the Ray tests share: one local cluster per test module (the CLI and the library join it instead of starting
their own)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs for the module; shut down after it (each module starts its own: a fresh actor pool)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
