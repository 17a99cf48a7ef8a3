"""A folder run streams its images in batches: the peak memory of `cnnviz explain` over 500 small pictures stays
that of a 100-picture run (issue 6). Each run is measured in its own wrapper process, whose only child is the
command, so ``RUSAGE_CHILDREN``'s ``ru_maxrss`` is that command's peak."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.tiny_models import gap_classifier, save, write_png

MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stderr.write(proc.stderr[-2000:])
"""


def peak_kib(args) -> int:
    command = [sys.executable, "-c", MEASURE, sys.executable, "-c",
               "import sys; from onnx_cnnviz.cli.main import main; sys.exit(main())", *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    code, kib = proc.stdout.split()
    assert code == "0", proc.stderr
    return int(kib)


def test_folder_of_500_images_runs_in_bounded_memory(tmp_path):
    model = save(gap_classifier(size=32), tmp_path / "model.onnx")
    folders = {}
    for n in (100, 500):
        folder = tmp_path / f"images{n}"
        for i in range(n):
            write_png(folder / f"img{i:04d}.png", size=32, seed=i)
        folders[n] = folder
    peaks, times = {}, {}
    for n, folder in folders.items():
        start = time.perf_counter()
        out = tmp_path / f"out{n}"
        peaks[n] = peak_kib(["explain", model, folder, "--out", out, "--quiet", "--batch-size", "16",
                             "--preprocess", "none", "-m", "gradcam,saliency"])
        times[n] = time.perf_counter() - start
        records = list(out.glob("*.json"))
        assert len(records) == 2 * n
        assert json.loads(records[0].read_text())["method"] in ("gradcam", "saliency")
    print("peak KiB", peaks, "seconds", times)
    assert peaks[500] <= 1.3 * peaks[100], (peaks, times)
