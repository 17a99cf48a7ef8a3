"""Shared fixtures: real models exported once per session, the shared SqueezeNet and images, and helpers.

The test folders mirror the package: graph/ (loading, rules, passes), model/ (Model, targets, sessions), methods/,
metrics/, runs/, tasks/, image/, preprocessing/, cli/, dataset/ (Ray), keras/, openvino/, errors/ (typed errors across
the API and the CLI), docs/ (README, site, examples), and architectures/ (real architectures end to end: torchvision,
timm, Hugging Face, dynamo exports). Tiny hand-built models come from tests/tiny_models.py, torch exports from
tests/exporting.py; the markers (quick, torch, ray, shared, memory) are set at the end of this file.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The one export helper and torchvision factory (tests/exporting.py); export_onnx is the name older tests use.
from tests.exporting import export_torchscript as export_onnx
from tests.exporting import torchvision_model

REPO = Path(__file__).resolve().parent.parent


def load_script(path):
    """The Python file ``path`` (a script of models/ or benchmarks/, folders of scripts, not packages) as a module,
    registered in ``sys.modules`` so that its dataclasses and pickling work. Its folder joins the end of ``sys.path``,
    as a script's own folder is on it when run (the benchmarks import their sibling ``pages.py``)."""
    path = Path(path)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_cnnviz_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SHARED = Path(os.environ.get("CNNVIZ_SHARED", REPO.parent / "shared"))
SQUEEZENET = SHARED / "models" / "squeezenet1.1-imagenet-fp16.onnx"
KITTEN = SHARED / "images" / "kitten_224.png"
CACHE = Path(os.environ.get("CNNVIZ_TEST_CACHE", REPO / ".cache" / "tests"))

# Input sizes used for exported torchvision models: small enough for CI on 2 cores, large enough that every
# architecture keeps a spatial map (VGG's adaptive 7x7 pooling exports only from 224).
TORCHVISION_SIZES = {"vgg11_bn": 224, "vgg16_bn": 224}


@pytest.fixture
def share_everything(monkeypatch):
    """Tiny models' weights are far below the sharing threshold: share every weight, through the process arena."""
    from onnx_cnnviz import runtime

    monkeypatch.setattr(runtime, "SHARED_MIN_BYTES", 0)
    monkeypatch.setattr(runtime, "SHARE_WEIGHTS", True)
    monkeypatch.setattr(runtime, "SHARED_ARENA", True)


@pytest.fixture(scope="session")
def torchvision_onnx():
    """Factory: name -> (torch model, onnx path, input size); each model exported once per test session."""
    import torch

    made = {}

    def get(name: str, seed: int = 0):
        key = (name, seed)
        if key not in made:
            size = TORCHVISION_SIZES.get(name, 112)
            model = torchvision_model(name, seed)
            path = CACHE / f"{name}_s{seed}_{size}.onnx"
            if not path.exists():
                export_onnx(model, torch.zeros(1, 3, size, size), path)
            made[key] = (model, path, size)
        return made[key]

    return get


@pytest.fixture(scope="module")
def loaded_batch(torchvision_onnx):
    """(name, n, seed) -> (torch model, cnnviz Model, x (n, 3, S, S) standard normal), loaded once per test module."""
    import onnx_cnnviz as cv

    made = {}

    def get(name: str, n: int, seed: int = 0):
        key = (name, n, seed)
        if key not in made:
            model, path, size = torchvision_onnx(name)
            x = np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
            made[key] = (model, cv.load(path, device="cpu"), x)
        return made[key]

    return get


@pytest.fixture(scope="session")
def squeezenet_path():
    if not SQUEEZENET.exists():
        pytest.skip(f"the shared SqueezeNet is not at {SQUEEZENET} (set CNNVIZ_SHARED)")
    return SQUEEZENET


def caffe_preprocess(path: Path) -> np.ndarray:
    """The SqueezeNet's preprocessing (see shared/models/README.md): BGR, 0..255, mean-subtracted, NCHW."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    img = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR)
    x = img.astype(np.float32) - np.array([103.939, 116.779, 123.68], dtype=np.float32)
    return x.transpose(2, 0, 1)[None].copy()


@pytest.fixture(scope="session")
def kitten_x():
    if not KITTEN.exists():
        pytest.skip(f"the shared kitten image is not at {KITTEN}")
    return caffe_preprocess(KITTEN)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --- markers by what a test needs (pytest -m quick | torch | ray | shared | memory) -----------------------------------
#: The modules of the quick loop (`pytest -m quick`, under 2 minutes on 2 cores): one-node rule checks against finite
#: differences, tiny models built in the test, parsing and error paths. A test of these modules that is marked slow,
#: or that needs an exported torchvision model, a Ray cluster or lots of memory, is left out all the same.
QUICK_MODULES = {
    "tests/graph/test_rules.py", "tests/graph/test_rules_einsum.py", "tests/graph/test_rules_pad_scatter.py",
    "tests/graph/test_rules_pooling_large.py", "tests/graph/test_rules_reduce_ties.py", "tests/graph/test_padding.py",
    "tests/graph/test_rules_layout.py", "tests/graph/test_rules_clip_mask.py", "tests/graph/test_seed_narrowing.py",
    "tests/graph/test_local_backward.py",
    "tests/graph/test_head.py", "tests/graph/test_load_limits.py", "tests/runs/test_jsonio.py",
    "tests/errors/test_errors.py", "tests/image/test_image.py", "tests/methods/test_registry.py",
    "tests/metrics/test_hand.py", "tests/model/test_model_cache.py", "tests/model/test_targets.py",
    "tests/model/test_model_vjp.py", "tests/graph/test_einsum_equation_errors.py",
    "tests/errors/test_input_size_errors.py", "tests/runs/test_unreadable_records.py",
    "tests/methods/test_registry_params.py", "tests/tasks/test_decoder_vectors.py",
    "tests/errors/test_environment_settings.py", "tests/errors/test_package_list.py",
    "tests/graph/test_selection_rules.py", "tests/tasks/test_data_sized.py",
}
#: Modules whose tests take gigabytes (a 2.15 GB model, peak-memory measurements of real models).
MEMORY_MODULES = {"tests/graph/test_held.py", "tests/runs/test_memory.py", "tests/model/test_memory_sessions.py",
                  "tests/architectures/test_hiera.py", "tests/architectures/test_hf_models.py",
                  "tests/architectures/test_hf_efficientnet_memory.py"}
#: Fixtures that read ../shared (the SqueezeNet, the kitten).
SHARED_FIXTURES = {"squeezenet_path", "kitten_x"}
#: Fixtures that export a torchvision model with torch (conftest's, and tests/model/test_targets.py's segmenter).
TORCH_FIXTURES = {"torchvision_onnx", "loaded_batch", "lraspp"}


def _imports_torch(path: Path, cache: dict) -> bool:
    if path not in cache:
        text = path.read_text(encoding="utf-8")
        cache[path] = any(s in text for s in ("import torch", "from torch", 'importorskip("torch")'))
    return cache[path]


def pytest_collection_modifyitems(config, items):
    # A moved or renamed test module would otherwise drop out of the quick loop (or the memory marker) unnoticed.
    missing = sorted(p for p in QUICK_MODULES | MEMORY_MODULES if not (REPO / p).is_file())
    if missing:
        raise pytest.UsageError(f"tests/conftest.py lists test modules that do not exist: {', '.join(missing)}; "
                                "update QUICK_MODULES / MEMORY_MODULES to their new paths")
    torch_modules: dict = {}
    for item in items:
        path = Path(str(item.fspath)).resolve()
        rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()
        fixtures = set(getattr(item, "fixturenames", ()))
        needs_torch = bool(fixtures & TORCH_FIXTURES) or _imports_torch(path, torch_modules)
        if needs_torch:
            item.add_marker(pytest.mark.torch)
        if rel.startswith("tests/dataset/"):
            item.add_marker(pytest.mark.ray)
        if fixtures & SHARED_FIXTURES:
            item.add_marker(pytest.mark.shared)
        if rel in MEMORY_MODULES:
            item.add_marker(pytest.mark.memory)
        if (rel in QUICK_MODULES and item.get_closest_marker("slow") is None and not fixtures & TORCH_FIXTURES
                and rel not in MEMORY_MODULES):
            item.add_marker(pytest.mark.quick)
