"""Peak memory of one process explaining with several methods: sessions of one model share its weights.

    .venv/bin/python benchmarks/memory_sessions.py [--models vgg16 vgg11] [--size 224] [--images 1] [--write]

Each model is a torchvision architecture with random weights (memory does not depend on their values), exported to
ONNX once into a temporary folder. Then, in a fresh child process per setting, the library loads it and runs five
methods on the same images, each building its own rewritten graph and onnxruntime session: Grad-CAM at the default
layer, saliency, guided gradients, XGrad-CAM at another layer, and occlusion with a 112-pixel window (4 positions, to
keep it quick). The child reports its peak resident memory (``ru_maxrss``) after loading, after the first method and
after all five. "before" is ``CNNVIZ_SHARE_WEIGHTS=0`` (every session loads its own copy of the weights, onnxruntime's
default), "after" the default (the model's sessions share one copy; see ``onnx_cnnviz.runtime``); ``--settings`` also
takes the variants of :data:`VARIANTS` (issue 25: pre-packing, the arena's threshold). ``--write`` puts
the table, with the date, commit and machine, in ``docs/validation/reliability.md`` (between its ``memory_sessions``
markers).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests/exporting.py, the one export helper
    sys.path.insert(0, str(ROOT))

import pages  # noqa: E402  (benchmarks/pages.py: this script's folder is first on sys.path)

PAGE = ROOT / "docs" / "validation" / "reliability.md"

SPAWN = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"

#: The child: load, then five methods; prints one JSON line of peak KiB (and seconds) after each step.
CHILD = r"""
import json, resource, sys, time
import numpy as np
import onnx_cnnviz as cv

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

path, images = sys.argv[1], int(sys.argv[2])
from onnx_cnnviz import runtime
for key, value in json.loads(sys.argv[3]).items():  # the setting's runtime switches
    setattr(runtime, key, value)
report = {"import": peak()}
start = time.perf_counter()
m = cv.load(path, device="cpu")
report["load"], report["load_s"] = peak(), round(time.perf_counter() - start, 1)
c, h, w = m.input_shape
x = np.random.default_rng(0).standard_normal((images, c, h, w)).astype(np.float32)
names = [layer.name for layer in m.layers]
other = names[max(0, names.index(m.default_layer) - 2)]
steps = [("grad_cam", lambda: cv.grad_cam(m, x)),
         ("saliency", lambda: cv.saliency(m, x)),
         ("guided", lambda: cv.gradients(m, x, rule="guided")),
         ("xgrad_cam", lambda: cv.xgrad_cam(m, x, layer=other)),
         ("occlusion", lambda: cv.occlusion(m, x, window=(h // 2, w // 2), stride=(h // 2, w // 2)))]
for name, step in steps:
    start = time.perf_counter()
    step()
    report[name], report[name + "_s"] = peak(), round(time.perf_counter() - start, 1)
report["one"], report["five"] = report["grad_cam"], report["occlusion"]
with open("/proc/self/statm") as f:
    report["resident_now"] = int(f.read().split()[1]) * resource.getpagesize() // 1024
report["shared_weights_mib"] = round((m.shared_weights.nbytes if m.shared_weights else 0) / 2 ** 20, 1)
from onnx_cnnviz.graph import held
report["held_mib"] = round(held.held_bytes() / 2 ** 20, 1)  # weights held beside the graph, read in place
print(json.dumps(report))
"""


def export(name: str, path: Path, size: int = 224) -> Path:
    """torchvision ``name`` with random weights (seed 0), activations not in place, exported like the tests do
    (tests/exporting.py: TorchScript exporter, opset 17, dynamic batch)."""
    import torch

    from tests.exporting import export_torchscript, torchvision_model

    return export_torchscript(torchvision_model(name, seed=0), torch.zeros(1, 3, size, size), path)


#: The settings: the runtime switches each sets in the child (attributes of onnx_cnnviz.runtime) besides
#: ``CNNVIZ_SHARE_WEIGHTS`` (0 for "before", 1 otherwise). "prepack": shared weights with onnxruntime's pre-packing on
#: (``runtime.PREPACK_SHARED``); "arena512": the process's arena denied to graphs of 512 MiB of declared activations
#: per image (``runtime.ARENA_MAX_ACTIVATION_BYTES`` before issue 25).
VARIANTS = {"before": {}, "after": {}, "prepack": {"PREPACK_SHARED": True},
            "arena512": {"ARENA_MAX_ACTIVATION_BYTES": 512 * 2 ** 20}}


def measure(path, share: bool = True, images: int = 1, timeout: float = 900, switches: dict | None = None) -> dict:
    """Run the five methods on ``path`` in a child process; peak KiB after load / one method / five methods.
    ``switches``: attributes of ``onnx_cnnviz.runtime`` the child sets before loading."""
    env = dict(os.environ, CNNVIZ_SHARE_WEIGHTS="1" if share else "0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    # Linux carries a process's peak resident size across fork and exec: started straight from a caller holding
    # torch and an exported model, the child's ru_maxrss would begin at the caller's. A small wrapper starts it.
    proc = subprocess.run([sys.executable, "-c", SPAWN, sys.executable, "-c", CHILD, str(path), str(images),
                           json.dumps(switches or {})],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(kib: int) -> str:
    return f"{kib / 2 ** 20:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16"], help="torchvision architectures")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=1, help="images per method call")
    parser.add_argument("--settings", nargs="+", choices=tuple(VARIANTS), default=["before", "after"])
    parser.add_argument("--write", action="store_true",
                        help=f"write the table into {PAGE.relative_to(ROOT)} (section memory_sessions)")
    args = parser.parse_args()
    started = time.perf_counter()
    title = (f"Peak resident memory (GiB) of a child process: load, then 5 methods on {args.images} image(s) "
             f"at {args.size}x{args.size}")
    print(title)
    header = ("model", "file MB", "setting", "load", "1 method", "5 methods", "5 / 1", "resident after", "shared MB",
              "held MB")
    table = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    print("\n".join(table))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = export(name, Path(tmp) / f"{name}.onnx", args.size)
            size_mb = path.stat().st_size / 1e6
            for setting in args.settings:
                r = measure(path, share=setting != "before", images=args.images, switches=VARIANTS[setting])
                table.append(f"| {name} | {size_mb:.0f} | {setting} | {gib(r['load'])} | {gib(r['one'])} | "
                             f"{gib(r['five'])} | {r['five'] / r['one']:.2f} | {gib(r['resident_now'])} | "
                             f"{r['shared_weights_mib']:.0f} | {r['held_mib']:.0f} |")
                print(table[-1], flush=True)
    if args.write:
        command = " ".join([".venv/bin/python benchmarks/memory_sessions.py", *sys.argv[1:]])
        text = [pages.header("benchmarks/memory_sessions.py", command,
                             f"The whole run took {time.perf_counter() - started:.0f} s."), "",
                f"{title}: torchvision architectures with random weights, TorchScript export at opset 17. The five "
                "methods: Grad-CAM at the default layer, saliency, guided gradients, XGrad-CAM at another layer and "
                "occlusion with a 112-pixel window. \"before\": `CNNVIZ_SHARE_WEIGHTS=0` (a copy of the weights per "
                "session); \"after\": the default (one copy shared by the model's sessions, or held beside the graph "
                f"from 256 MiB of weights). Settings run: {', '.join(args.settings)}.", "", *table]
        pages.write_section(PAGE, "memory_sessions", "\n".join(text))
        print(f"wrote the memory_sessions section of {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
