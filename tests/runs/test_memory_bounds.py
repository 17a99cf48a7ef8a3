"""Issue 24 point 5: ``explain --top-k`` streams its (image, class) results --batch-size at a time, so its memory is
set by --batch-size, not by the images times k. Measured in a child process (its peak resident set): a 200-class
224x224 conv + GAP classifier, 8 pictures, saliency, --batch-size 8. Before: 2135 MB peak at k = 100 against 307 MB
at k = 10 (all 800 maps and 800 copies of the images held at once); after: about 200 MB for both.
"""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CHILD = """
import resource, sys
from pathlib import Path
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from tests.tiny_models import make_model, save, write_png
work = Path(sys.argv[1])
(work / "in").mkdir(parents=True)
rng = np.random.default_rng(0)
inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
         numpy_helper.from_array(rng.standard_normal((200, 8)).astype(np.float32), "fc_w"),
         numpy_helper.from_array(rng.standard_normal(200).astype(np.float32), "fc_b")]
nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv1"], ["relu1"]), helper.make_node("GlobalAveragePool", ["relu1"], ["pool"]),
         helper.make_node("Flatten", ["pool"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
                [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits), work / "m.onnx")
for i in range(8):
    write_png(work / "in" / f"im{i}.png", size=224, seed=i)
from onnx_cnnviz import runs
runs.explain_images(work / "m.onnx", work / "in", work / "out", methods=["saliency"], top_k=int(sys.argv[2]),
                    preprocess="imagenet", batch_size=8)
assert len(list((work / "out").glob("*.json"))) == 8 * int(sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def peak_mb(tmp_path, k: int) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / f"k{k}"), str(k)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_top_k_memory_is_set_by_the_batch_size_not_by_k(tmp_path):
    few, many = peak_mb(tmp_path, 10), peak_mb(tmp_path, 100)
    # 10 times the classes: the maps of one --batch-size (8 x 600 KB) more at most, not 720 more (430 MB).
    assert many < few + 100, (few, many)
