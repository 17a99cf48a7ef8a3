"""OpenVINO's side of ``benchmarks/compare_peers.py --openvino``: OpenVINO XAI's explanations, and ours on
onnxruntime's OpenVINO execution provider, timed on one ONNX file. Runs in ``.venv-openvino`` (openvino-xai 1.1.0,
openvino 2024.4, onnxruntime-openvino; see .ci/run), which compare_peers.py starts as a subprocess:

    .venv-openvino/bin/python benchmarks/openvino_peer.py --model M.onnx --images X.npy --targets T.npy \\
        --out DIR [--threads 2] [--repeat 3] [--batches 1 8] [--precision f32 default] \\
        [--methods reciprocam rise aise] [--vit] [--ours gradcam reciprocam saliency]

Reads the (N, C, H, W) float32 images and (N,) int targets; writes ``DIR/peer.json`` (timings in seconds, best of
``--repeat`` after one untimed run, per batch size; versions; the precision OpenVINO really used) and
``DIR/<method>.npy``, the (N, h, w) or (N, H, W) float32 map of each image's target from each method (raw: the white-box
maps without OpenVINO XAI's uint8 scaling, the black-box ones before its scaling), for compare_peers.py to score with
our metrics.

How the peer is run: OpenVINO XAI's method objects (``ReciproCAM``/``ViTReciproCAM`` white-box, ``RISE``,
``AISEClassification`` black-box) on ``openvino.Core().read_model(M.onnx)``, compiled for the CPU with
``INFERENCE_NUM_THREADS`` = ``--threads`` and, per ``--precision``, ``INFERENCE_PRECISION_HINT=f32`` ("f32") or the
plugin's default ("default": bfloat16 on CPUs with AVX512_BF16 or AMX, such as this one). Its white-box methods take
one image per call (their graph reshapes the scores to (1, K, h, w)), so a batch of B is B calls; RISE and AISE score
one image per inference too. The black-box methods score the softmax of the logits (their ``postprocess_fn``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_time(fn, repeat: int) -> float:
    fn()  # compilation, allocation, first-call work
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compile_for(core, model, threads: int, precision: str):
    config = {"INFERENCE_NUM_THREADS": threads}
    if precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return core.compile_model(model, "CPU", config)


def peer_methods(args, x: np.ndarray, targets: np.ndarray, precision: str, out: Path | None, log) -> dict:
    """Time OpenVINO XAI's methods at ``precision``; with ``out``, write their maps there."""
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.methods.black_box.base import Preset

    core = ov.Core()
    model = core.read_model(str(args.model))
    compiled = compile_for(core, model, args.threads, precision)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    result = {"precision_used": hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint), "forward": {},
              "methods": {}}
    request = compiled.create_infer_request()
    for batch in args.batches:
        xb = x[:batch]
        result["forward"][str(batch)] = best_time(lambda: request.infer({0: xb}), args.repeat)
        log(f"  openvino {precision} forward batch {batch}: {result['forward'][str(batch)]:.4f} s")

    def white_box(kind, embed_scaling: bool):
        cls = xai.methods.ViTReciproCAM if kind == "vit-reciprocam" else xai.methods.ReciproCAM
        method = cls(core.read_model(str(args.model)), embed_scaling=embed_scaling, prepare_model=False)
        method.prepare_model(load_model=False)
        method._model_compiled = compile_for(core, method._model, args.threads, precision)  # prepare_model's
        return method

    def post(outputs) -> np.ndarray:
        return softmax(np.asarray(outputs[0], dtype=np.float64))

    maps = {}
    for name in args.methods:
        if name in ("reciprocam", "vit-reciprocam"):
            method = white_box(name, embed_scaling=True)  # as users run it: the map leaves as uint8
            times = {}
            for batch in args.batches:
                times[str(batch)] = best_time(lambda: [method.generate_saliency_map(x[i:i + 1])
                                                       for i in range(batch)], args.repeat)
            if out is not None:
                raw = white_box(name, embed_scaling=False)
                maps[name] = np.stack([np.asarray(raw.generate_saliency_map(x[i:i + 1]))[0, t]
                                       for i, t in enumerate(targets)])
        elif name in ("rise", "aise"):
            if name == "rise":
                method = xai.methods.RISE(model, post, prepare_model=False)

                def run(i, method=method):
                    return method.generate_saliency_map(x[i:i + 1], [int(targets[i])], preset=Preset.SPEED,
                                                        num_masks=args.rise_masks, scale_output=False,
                                                        seed=0)[int(targets[i])]
            else:
                method = xai.methods.AISEClassification(model, post, prepare_model=False)

                def run(i, method=method):
                    return method.generate_saliency_map(x[i:i + 1], [int(targets[i])], preset=Preset.SPEED,
                                                        scale_output=False)[int(targets[i])]
            method._model_compiled = compiled
            # black-box: one timed image (the compiled model is warm from the forward timings; each image costs the
            # same number of inferences), times the batch
            start = time.perf_counter()
            first = np.asarray(run(0), dtype=np.float32)
            once = time.perf_counter() - start
            times = {str(b): b * once for b in args.black_box_batches}
            if out is not None and args.map_images:
                maps[name] = np.stack([first] + [np.asarray(run(i), dtype=np.float32)
                                                 for i in range(1, min(len(x), args.map_images))])
        else:
            raise SystemExit(f"unknown peer method {name!r}")
        result["methods"][name] = times
        log(f"  openvino-xai {name} ({precision}): " + ", ".join(f"batch {b} {t:.3f} s" for b, t in times.items()))
    for name, value in maps.items():
        np.save(out / f"{name}.npy", np.asarray(value, dtype=np.float32))
    return result


def ours_on_openvino(args, x: np.ndarray, targets: np.ndarray, log) -> dict:
    """Our methods on onnxruntime's OpenVINO execution provider, and the bare forward on it and on onnxruntime's
    CPU provider (this venv's onnxruntime)."""
    import onnxruntime as ort

    import onnx_cnnviz as cv
    from onnx_cnnviz import runtime
    from onnx_cnnviz.errors import CnnvizError
    from onnx_cnnviz.methods import registry
    from onnx_cnnviz.methods.reciprocam import reciprocam

    result = {"onnxruntime": ort.__version__, "forward_cpu": {}, "forward_openvino_ep": {}, "methods": {}}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    bare_cpu = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    bare_ov = ort.InferenceSession(str(args.model), options,
                                   providers=runtime.session_providers(runtime.providers_for("openvino"),
                                                                       args.threads))
    name_in = bare_cpu.get_inputs()[0].name
    m = cv.load(args.model, device="openvino", threads=args.threads)
    m_cpu = cv.load(args.model, device="cpu", threads=args.threads)  # the same methods on the CPU provider, same load
    result["methods_cpu"] = {}
    for batch in args.batches:
        xb = x[:batch]
        result["forward_cpu"][str(batch)] = best_time(lambda: bare_cpu.run(None, {name_in: xb}), args.repeat)
        result["forward_openvino_ep"][str(batch)] = best_time(lambda: bare_ov.run(None, {name_in: xb}), args.repeat)
    for name in args.ours:
        cpu_times = {}
        for batch in args.batches:
            xb, tb = x[:batch], targets[:batch]
            if name == "reciprocam":
                cpu_times[str(batch)] = best_time(lambda: reciprocam(m_cpu, xb, tb), args.repeat)
            else:
                cpu_times[str(batch)] = best_time(lambda: registry.explain(m_cpu, name, xb, tb), args.repeat)
        result["methods_cpu"][name] = cpu_times
        times = {}
        try:
            for batch in args.batches:
                xb, tb = x[:batch], targets[:batch]
                if name == "reciprocam":
                    times[str(batch)] = best_time(lambda: reciprocam(m, xb, tb), args.repeat)
                else:
                    times[str(batch)] = best_time(lambda: registry.explain(m, name, xb, tb), args.repeat)
        except CnnvizError as exc:  # a graph the OpenVINO EP cannot compile: recorded, the run goes on
            times = {"error": _cause(str(exc))}
        result["methods"][name] = times
        log(f"  ours on the OpenVINO EP {name}: " + ", ".join(f"batch {b} {t:.3f} s" if isinstance(t, float)
                                                              else f"{b}: {t}" for b, t in times.items()))
    return result


def _cause(message: str) -> str:
    """The line of an OpenVINO EP failure that says why (its messages start with a C++ call stack)."""
    for line in message.splitlines():
        if "expects" in line or "not supported" in line or "Unsupported" in line:
            return line.strip()[:200]
    return message.splitlines()[0][:200] if message else "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--targets", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--black-box-batches", type=int, nargs="*", default=[1])
    parser.add_argument("--precision", nargs="+", default=["f32", "default"], choices=["f32", "default"])
    parser.add_argument("--methods", nargs="*", default=["reciprocam", "rise", "aise"])
    parser.add_argument("--rise-masks", type=int, default=1000, help="RISE masks per image (preset SPEED: 1000)")
    parser.add_argument("--map-images", type=int, default=1 << 30,
                        help="black-box maps for the first this many images (the white-box ones: every image)")
    parser.add_argument("--ours", nargs="*", default=[], help="our methods to time on the OpenVINO EP")
    args = parser.parse_args(argv)

    import openvino as ov
    import openvino_xai as xai

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    x = np.load(args.images).astype(np.float32)
    targets = np.load(args.targets).astype(np.int64)
    doc = {"openvino": ov.__version__, "openvino_xai": xai.__version__ if hasattr(xai, "__version__") else "1.1.0",
           "threads": args.threads, "precisions": {}}
    for k, precision in enumerate(args.precision):
        # maps and black-box timings once, at the first precision; white-box timings at every precision
        methods = args.methods if k == 0 else [n for n in args.methods if n.endswith("reciprocam")]
        run_args = argparse.Namespace(**{**vars(args), "methods": methods})
        doc["precisions"][precision] = peer_methods(run_args, x, targets, precision, args.out if k == 0 else None,
                                                    log)
    if args.ours:
        doc["ours_openvino_ep"] = ours_on_openvino(args, x, targets, log)
    (args.out / "peer.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TQDM_DISABLE", "1")  # RISE's progress bar, per mask
    sys.exit(main())
