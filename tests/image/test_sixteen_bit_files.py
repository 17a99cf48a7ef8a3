"""Issue 24 point 5: a 10000x9999 RGBA 16-bit PNG (inside the 100-megapixel limit) peaked at 3.15 GB on a 32x32
model: a channel-reordered copy of the decoded picture, then uint32 temporaries of all of it. The 16-bit picture is
now narrowed to 8 bits block by block inside its own buffer (onnx_cnnviz/image/reading.py, _narrow_in_place).

Measured in a child process (its peak resident set, ``preprocess`` to 32x32): 3,130 MB before, 1,689 MB after, of
which OpenCV's own decoding is 1,578 MB (it holds the 800 MB picture twice while decoding, as it does for 8-bit
PNGs: ``cv2.imread`` alone peaks there). The bound asserted, 2,000 MB, is the issue's limit for any command.

The pixels are unchanged: ``round(v / 257)`` per channel, RGB order, alpha dropped or kept for a background.
"""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from onnx_cnnviz.image import preprocess, read_image
from tests.conftest import REPO

pytestmark = pytest.mark.memory

WRITE = """
import sys
import cv2
import numpy as np
h, w = 9999, 10000
picture = np.zeros((h, w, 4), np.uint16)
picture[..., 3] = 65535
picture[::7, ::3, 1] = 40000
assert cv2.imwrite(sys.argv[1], picture)
"""

# The peak is read from /proc/self/status's VmHWM, which belongs to this process's own address space: getrusage's
# ru_maxrss would carry the high-water mark of the process that forked it (pytest, gigabytes into the suite) across
# exec, and measure the test runner instead of the read.
READ = """
import sys
from onnx_cnnviz.image import preprocess
x = preprocess(sys.argv[1], size=(32, 32))
assert x.shape == (1, 3, 32, 32)
status = open("/proc/self/status").read()
print(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) // 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from /proc/self/status (Linux)")
def test_a_100_megapixel_16_bit_png_is_read_in_bounded_memory(tmp_path):
    # One child writes the picture (800 MB while encoding), another reads it: only the read is measured.
    path = str(tmp_path / "wide.png")
    done = subprocess.run([sys.executable, "-c", WRITE, path], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-c", READ, path], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    assert peak < 2000, f"peak {peak} MB"


LEVELS = np.array([0, 128, 129, 385, 386, 257 * 100, 257 * 100 + 128, 257 * 100 + 129, 65534, 65535], np.uint16)


def expected(values: np.ndarray) -> np.ndarray:
    return np.floor(values.astype(np.float64) / 257 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_files_keep_their_rounding_and_channel_order(tmp_path, channels, monkeypatch):
    from onnx_cnnviz.image import reading

    monkeypatch.setattr(reading, "_BLOCK_BYTES", 64)  # several blocks on a small picture
    rng = np.random.default_rng(channels)
    h, w = 13, 11
    stored = rng.choice(LEVELS, size=(h, w, channels)).astype(np.uint16)  # as OpenCV stores it: BGR(A)
    path = tmp_path / "p.png"
    assert cv2.imwrite(str(path), stored if channels > 1 else stored[:, :, 0])
    color = stored[:, :, 2::-1] if channels >= 3 else np.repeat(stored, 3, axis=2)
    np.testing.assert_array_equal(read_image(path), expected(color))
    if channels == 4:  # over a background, the alpha is kept until it is composited
        alpha = expected(stored[:, :, -1:]).astype(np.float32) / 255.0
        over = np.floor(expected(color) * alpha + 7.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(read_image(path, background=7), over)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 2), (5, 7, 3), (5, 7, 4), (1, 1, 4), (9, 1, 3)])
@pytest.mark.parametrize("keep_alpha", [False, True])
def test_narrowing_in_place_equals_the_plain_conversion(shape, keep_alpha, monkeypatch):
    from onnx_cnnviz.image import reading

    monkeypatch.setattr(reading, "_BLOCK_BYTES", 16)
    stored = np.random.default_rng(len(shape)).choice(LEVELS, size=shape).astype(np.uint16)
    planes = stored.reshape(shape[0], shape[1], -1)
    order = ([2, 1, 0] + ([3] if keep_alpha and planes.shape[2] == 4 else [])) if planes.shape[2] >= 3 else \
        ([0] + ([1] if keep_alpha and planes.shape[2] == 2 else []))
    want = expected(planes[:, :, order])
    got = reading._narrow_in_place(stored.copy(), keep_alpha)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert got.dtype == np.uint8 and got.flags.c_contiguous


def test_preprocess_of_a_16_bit_file_equals_preprocess_of_its_8_bit_pixels(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.choice(LEVELS, size=(40, 30, 4)).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "p.png"), stored)
    eight = expected(stored[:, :, 2::-1])
    np.testing.assert_array_equal(preprocess(tmp_path / "p.png", size=(16, 16)), preprocess(eight, size=(16, 16)))
