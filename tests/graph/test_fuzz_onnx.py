"""Fuzz the loader: bytes of a valid small ONNX model, mutated (seeded), must load or give a typed error; never
another exception, never a crash of the Python process (one batch runs in a subprocess to prove that).

Run more cases by hand with ``python -m tests.graph.test_fuzz_onnx SEED COUNT``.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import onnx_cnnviz as cv

from tests.tiny_models import gap_classifier

REPO = Path(__file__).resolve().parents[2]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random mutation: flip bits, overwrite, insert, delete, duplicate or truncate a few bytes."""
    buf = bytearray(data)
    kind = rng.integers(6)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(buf)))
        if kind == 0:
            buf[i] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            buf[i] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(256))]))
        elif kind == 2:
            buf[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8))
        elif kind == 3:
            del buf[i:i + int(rng.integers(1, 8))]
        elif kind == 4:
            j = int(rng.integers(len(buf)))
            buf[i:i] = buf[j:j + int(rng.integers(1, 16))]
        else:
            del buf[i:]
            break
    return bytes(buf)


def load_one(blob: bytes) -> str:
    """'loaded', 'ran' or the typed error's class name. Any other exception propagates."""
    try:
        m = cv.load(blob, device="cpu", threads=1)
    except cv.CnnvizError as exc:
        return type(exc).__name__
    try:
        x = np.random.default_rng(0).standard_normal((1, *m.input_shape)).astype(np.float32) \
            if None not in m.input_shape else None
        if x is not None:
            m.scores(x)
            return "ran"
    except cv.CnnvizError as exc:
        return "loaded, then " + type(exc).__name__
    return "loaded"


def fuzz(seed: int, count: int, budget_s: float = 1e9) -> dict:
    """Outcome counts over ``count`` mutated models (stops early past ``budget_s`` seconds)."""
    data = gap_classifier().SerializeToString()
    rng = np.random.default_rng(seed)
    outcomes: dict = {}
    start = time.perf_counter()
    for case in range(count):
        blob = mutate(data, rng)
        try:
            outcome = load_one(blob)
        except Exception as exc:  # noqa: BLE001 - report which case, then fail
            raise AssertionError(f"seed {seed} case {case}: {type(exc).__name__}: {exc}") from exc
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if time.perf_counter() - start > budget_s:
            break
    return outcomes


def test_mutated_models_load_or_give_typed_errors():
    outcomes = fuzz(seed=0, count=400, budget_s=20)
    assert sum(outcomes.values()) >= 100, outcomes  # the budget allowed a real number of cases
    assert any(k.endswith("Error") or k.endswith("Failure") for k in outcomes), outcomes
    assert any(k in ("ran", "loaded") for k in outcomes), outcomes  # some mutations are harmless


def test_a_batch_of_mutations_does_not_crash_the_process():
    """Crashes (a segfault in a native parser, an abort) would kill pytest itself: run a batch elsewhere."""
    proc = subprocess.run([sys.executable, "-m", "tests.graph.test_fuzz_onnx", "8", "300", "20"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "cases" in proc.stdout


if __name__ == "__main__":
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    budget = float(sys.argv[3]) if len(sys.argv) > 3 else 1e9
    result = fuzz(seed, count, budget)
    print(f"{sum(result.values())} cases:", result)
