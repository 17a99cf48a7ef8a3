"""Side-by-side timing against pytorch-grad-cam and captum on the same model, in one run.

    .venv/bin/python benchmarks/compare_peers.py [--model resnet50] [--batches 1 8] [--size 224] [--repeat 1]

The model is a torchvision architecture with fixed random weights (timings do not depend on the weights), exported to
ONNX once; every method runs once untimed (graph building, session creation, torch warm-up; occlusion warms up on the
first image), then ``--repeat`` timed runs of which the best is reported. Both libraries get the same number of
threads. Ratios are against a bare
onnxruntime forward pass of the original ONNX file at the same batch size; "speed-up" is peer time / our time.

``--openvino`` compares with OpenVINO XAI instead (the peer that explains the same deployed ONNX files on an optimised
runtime), on ResNet-50, MobileNetV3-Large (torchvision, fixed random weights), EfficientNet-Lite0 (ImageNet weights,
``models/build_efficientnet_lite0.py``) and a ViT (timm ``vit_tiny_patch16_224``, random weights):

    .venv/bin/python benchmarks/compare_peers.py --openvino [--ov-models resnet50 ...] [--images 8]
        [--markdown docs/validation/speed-openvino.md]

OpenVINO XAI lives in ``.venv-openvino`` (its openvino and onnxruntime-openvino cannot share the main venv's
onnxruntime-gpu), so its side runs as a subprocess (``benchmarks/openvino_peer.py``) on the same ONNX file and images,
handing back timings as JSON and maps as .npy; one run prints one table. Per model and batch size: our Grad-CAM,
Recipro-CAM, occlusion (32/16) and Score-CAM on onnxruntime's CPU provider; OpenVINO XAI's (ViT-)ReciproCAM at float32
and at the OpenVINO CPU plugin's default precision (bfloat16 on this CPU), RISE (1000 masks, preset SPEED) and AISE
(preset SPEED) at batch 1 (seconds per image, times the batch); our Grad-CAM and Recipro-CAM on onnxruntime's
OpenVINO execution provider. Ratios: to onnxruntime's CPU forward ("/ort fwd") and to the method's own runtime's
forward ("/own fwd": OpenVINO's compiled model at the same precision for OpenVINO XAI, the OpenVINO EP for ours on
it). On EfficientNet-Lite0 (real weights) every method's maps of the photographs are scored with our deletion,
insertion and ROAD (MoRF) at the metrics' defaults. Our Recipro-CAM is checked against OpenVINO XAI's raw map at f32
(max |difference| / max |theirs|).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))
import pages  # noqa: E402  (benchmarks/pages.py)
from tests.exporting import export_torchscript  # noqa: E402  (the one export helper)

#: The page whose "compare_peers" section ``--write`` rewrites.
PAGE = ROOT / "docs" / "validation" / "index.md"


def best_time(fn, repeat: int, warm_up=None) -> float:
    # Warm-up: graph build and session creation on our side, allocator and kernels on torch's.
    (warm_up or fn)()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-occlusion", action="store_true", help="occlusion dominates the run time")
    parser.add_argument("--openvino", action="store_true", help="compare with OpenVINO XAI (see the notes)")
    parser.add_argument("--ov-models", nargs="+", default=list(OV_MODELS))
    parser.add_argument("--images", type=int, default=8, help="photographs explained (--openvino)")
    parser.add_argument("--ov-ours", nargs="+", default=["gradcam", "reciprocam", "occlusion"], choices=OURS,
                        help="our methods timed (--openvino); scorecam costs C forwards per image")
    parser.add_argument("--slow-batches", type=int, nargs="+", default=[1],
                        help="batch sizes for occlusion and Score-CAM (--openvino)")
    parser.add_argument("--rise-masks", type=int, default=1000, help="RISE masks per image (--openvino)")
    parser.add_argument("--score-images", type=int, default=None,
                        help="photographs whose maps are scored for faithfulness (default: all; --openvino)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the --openvino table as a page")
    parser.add_argument("--results", type=Path, default=ROOT / "out" / "speed-openvino.json",
                        help="every --openvino timing and score, as JSON")
    parser.add_argument("--note", action="append", default=[],
                        help="a sentence shown as a note at the top of the --openvino page (repeatable; with "
                             "--render-only, added to the notes the results already hold)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite --markdown from --results without measuring (--openvino)")
    parser.add_argument("--write", action="store_true",
                        help=f"write the table into {PAGE.relative_to(ROOT)} (its compare_peers section)")
    args = parser.parse_args()
    if args.openvino and args.render_only:
        doc = json.loads(args.results.read_text(encoding="utf-8"))
        doc["notes"] = doc.get("notes", []) + [n for n in args.note if n not in doc.get("notes", [])]
        text = render(doc)
        if args.markdown:
            args.markdown.write_text(text, encoding="utf-8")
        print(text)
        return
    if args.openvino:
        openvino_main(args)
        return

    import onnxruntime as ort
    import torch
    import torchvision
    from captum.attr import GuidedBackprop, Occlusion, Saliency
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    import onnx_cnnviz as cv
    from onnx_cnnviz.runtime import default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = getattr(torchvision.models, args.model)(weights=None).eval()
    for module in net.modules():  # hook-based peers need out-of-place ReLUs
        if hasattr(module, "inplace"):
            module.inplace = False
    target_layer = {"resnet50": lambda n: n.layer4[-1], "resnet18": lambda n: n.layer4[-1],
                    "vgg16_bn": lambda n: n.features[-1], "mobilenet_v2": lambda n: n.features[-1],
                    "densenet121": lambda n: n.features[-1]}[args.model](net)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        export_torchscript(net, torch.zeros(1, 3, args.size, args.size), path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        bare = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        m = cv.load(path, device="cpu", threads=threads)

        print(f"# {args.model} {args.size}x{args.size}, CPU, {threads} threads, onnxruntime {ort.__version__}, "
              f"torch {torch.__version__}, best of {args.repeat} after one warm-up")
        header = f"{'batch':>5} {'method':<16} {'ours s':>8} {'peer':<22} {'peer s':>8} {'ours/fwd':>8} " \
                 f"{'peer/fwd':>8} {'speed-up':>8}"
        print(header)
        print("-" * len(header))
        table = []
        started = time.perf_counter()
        for batch in args.batches:
            x = np.random.default_rng(batch).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                top1 = net(xt).argmax(1)
            forward = best_time(lambda: bare.run(None, {"input": x}), args.repeat)
            with torch.no_grad():
                torch_forward = best_time(lambda: net(xt), args.repeat)
            rows = [("forward", forward, "torch forward", torch_forward)]

            gradcam = GradCAM(model=net, target_layers=[target_layer])
            rows.append(("grad-cam", best_time(lambda: cv.grad_cam(m, x), args.repeat),
                         "pytorch-grad-cam", best_time(lambda: gradcam(input_tensor=xt, targets=None), args.repeat)))
            gradcampp = GradCAMPlusPlus(model=net, target_layers=[target_layer])
            rows.append(("grad-cam++", best_time(lambda: cv.grad_cam_pp(m, x), args.repeat),
                         "pytorch-grad-cam", best_time(lambda: gradcampp(input_tensor=xt, targets=None), args.repeat)))
            saliency = Saliency(net)
            rows.append(("saliency", best_time(lambda: cv.saliency(m, x), args.repeat),
                         "captum", best_time(lambda: saliency.attribute(xt.clone().requires_grad_(True),
                                                                        target=top1), args.repeat)))
            guided = GuidedBackprop(net)
            rows.append(("guided backprop", best_time(lambda: cv.gradients(m, x, rule="guided"), args.repeat),
                         "captum", best_time(lambda: guided.attribute(xt.clone().requires_grad_(True),
                                                                      target=top1), args.repeat)))
            if not args.skip_occlusion:
                occlusion = Occlusion(net)

                def peer_occlusion():
                    with torch.no_grad():
                        occlusion.attribute(xt, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16),
                                            target=top1, baselines=0.0, perturbations_per_eval=32)

                # Occlusion is long: warm up on the first image only (that builds the same cached graphs and
                # sessions), and let captum's warm-up be the forward passes already run.
                ours = best_time(lambda: cv.occlusion(m, x, window=(32, 32), stride=(16, 16)), args.repeat,
                                 warm_up=lambda: cv.occlusion(m, x[:1], window=(32, 32), stride=(16, 16)))
                theirs = best_time(peer_occlusion, args.repeat, warm_up=lambda: None)
                rows.append(("occlusion 32/16", ours, "captum (ppe=32)", theirs))
            for method, ours, peer, theirs in rows:
                print(f"{batch:>5} {method:<16} {ours:>8.3f} {peer:<22} {theirs:>8.3f} {ours / forward:>8.2f} "
                      f"{theirs / forward:>8.2f} {theirs / ours:>8.2f}", flush=True)
                table.append((batch, method, ours, peer, theirs, forward))
        if args.write:
            command = (".venv/bin/python benchmarks/compare_peers.py --write"
                       + (f" --model {args.model}" if args.model != "resnet50" else "")
                       + (f" --batches {' '.join(map(str, args.batches))}" if args.batches != [1, 8] else "")
                       + (f" --repeat {args.repeat}" if args.repeat != 1 else "")
                       + (" --skip-occlusion" if args.skip_occlusion else ""))
            note = (f"torchvision {args.model} (random weights) at {args.size}x{args.size}, {threads} threads each, "
                    f"onnxruntime {ort.__version__}, torch {torch.__version__}, best of {args.repeat} after one "
                    f"warm-up; the whole run took {time.perf_counter() - started:.0f} s.")
            lines = [pages.header("benchmarks/compare_peers.py", command, note), "",
                     "| batch | method | ours (s) | peer | peer (s) | ours / forward | peer / forward | speed-up |",
                     "|---:|---|---:|---|---:|---:|---:|---:|"]
            for batch, method, ours, peer, theirs, forward in table:
                lines.append(f"| {batch} | {method} | {ours:.3f} | {peer} | {theirs:.3f} | {ours / forward:.2f} | "
                             f"{theirs / forward:.2f} | {theirs / ours:.2f} |")
            pages.write_section(PAGE, "compare_peers", "\n".join(lines))
            print(f"wrote {PAGE.relative_to(ROOT)}")


# ==================================================================================================================
# --openvino: OpenVINO XAI side by side
# ==================================================================================================================
OV_MODELS = ("resnet50", "mobilenet_v3_large", "efficientnet_lite0", "vit_tiny")
OV_VENV = ROOT / ".venv-openvino" / "bin" / "python"
PHOTOS = ROOT.parent / "shared" / "images" / "imagenet-sample"
OURS = ("gradcam", "reciprocam", "occlusion", "scorecam")
METRICS = ("deletion", "insertion", "road-morf")


def export_model(name: str, out: Path, log) -> tuple[Path, bool]:
    """The ONNX file of ``name`` and whether its weights are trained (only then are faithfulness scores meaningful)."""
    if name == "efficientnet_lite0":
        sys.path.insert(0, str(ROOT / "models"))
        import build_efficientnet_lite0

        return Path(build_efficientnet_lite0.build(ROOT / "models" / "efficientnet_lite0.onnx", log=log)), True
    import torch

    torch.manual_seed(0)
    if name == "vit_tiny":
        import timm

        net = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    else:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None).eval()
    path = out / f"{name}.onnx"
    export_torchscript(net, torch.zeros(1, 3, 224, 224), path)
    return path, False


def ours_timed(m, x, targets, methods, batches, slow_batches, repeat, log) -> tuple[dict, dict]:
    """Our methods on onnxruntime's CPU provider: seconds per batch size, and the maps of every image."""
    from onnx_cnnviz.methods import registry
    from onnx_cnnviz.methods.reciprocam import reciprocam

    def run(name, xb, tb):
        if name == "reciprocam":
            return reciprocam(m, xb, tb)
        params = {"window": (32, 32), "stride": (16, 16)} if name == "occlusion" else None
        return registry.explain(m, name, xb, tb, params=params)

    times, maps = {}, {}
    for name in methods:
        times[name] = {}
        slow = name in ("occlusion", "scorecam")
        for batch in slow_batches if slow else batches:
            xb, tb = x[:batch], targets[:batch]
            times[name][str(batch)] = best_time(lambda: run(name, xb, tb), 1 if slow else repeat,
                                                warm_up=(lambda: run(name, xb[:1], tb[:1])) if slow else None)
        log(f"  ours {name}: " + ", ".join(f"batch {b} {t:.3f} s" for b, t in times[name].items()))
        maps[name] = np.concatenate([run(name, x[i:i + 8], targets[i:i + 8]) for i in range(0, len(x), 8)])
    return times, maps


def faithfulness(m, x, targets, maps: dict) -> dict:
    """Our deletion, insertion and ROAD (MoRF) of each method's maps: mean over the images."""
    from onnx_cnnviz.maps import upsample_maps
    from onnx_cnnviz.metrics import registry as metric_registry

    out = {}
    for method, mp in maps.items():
        mp = np.asarray(mp, dtype=np.float32)
        if mp.shape[-2:] != x.shape[2:]:
            mp = upsample_maps(mp, x.shape[2:])
        out[method] = {metric: float(np.mean(metric_registry.evaluate(metric, m, x, mp, targets).values))
                       for metric in METRICS}
    return out


def openvino_main(args) -> None:
    import onnxruntime as ort

    import onnx_cnnviz as cv
    from onnx_cnnviz import image as im
    from onnx_cnnviz.methods import features
    from onnx_cnnviz.methods.reciprocam import reciprocam
    from onnx_cnnviz.runtime import default_threads

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if not OV_VENV.exists():
        raise SystemExit(f"{OV_VENV} not found: make it as .ci/run does (python3 -m venv .venv-openvino; "
                         ".venv-openvino/bin/pip install openvino-xai==1.1.0 onnxruntime-openvino==1.24.1 ...)")
    threads = args.threads or default_threads()
    photos = sorted(PHOTOS.glob("*.jpg"))[:args.images]
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
           "machine": f"{platform.machine()}, {_cores()} CPU cores ({_cpu_name()}), shared with other work",
           "threads": threads, "onnxruntime": ort.__version__, "batches": args.batches, "images": len(photos),
           "rise_masks": args.rise_masks, "command": " ".join(["benchmarks/compare_peers.py"] + sys.argv[1:]),
           "load_before": list(os.getloadavg()), "models": {}, "notes": list(args.note)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.ov_models:
            log(f"{name}:")
            path, trained = export_model(name, tmp, log)
            m = cv.load(path, device="cpu", threads=threads)
            x = im.preprocess(photos, preset=features.preprocessing_for(m))
            targets = m.scores(x).argmax(axis=1)
            scored = min(len(x), args.score_images or len(x))
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            bare = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            input_name = bare.get_inputs()[0].name
            row = {"trained": trained, "layer": m.default_layer, "forward": {}}
            for batch in args.batches:
                row["forward"][str(batch)] = best_time(lambda: bare.run(None, {input_name: x[:batch]}),
                                                       args.repeat)
            row["ours"], our_maps = ours_timed(m, x, targets, args.ov_ours, args.batches, args.slow_batches,
                                               args.repeat, log)

            # OpenVINO XAI (and ours on the OpenVINO EP) in its own venv, on the same file and images
            np.save(tmp / "x.npy", x)
            np.save(tmp / "targets.npy", targets)
            vit = name.startswith("vit")
            peer_out = tmp / f"peer_{name}"
            command = [str(OV_VENV), str(ROOT / "benchmarks" / "openvino_peer.py"), "--model", str(path),
                       "--images", str(tmp / "x.npy"), "--targets", str(tmp / "targets.npy"), "--out",
                       str(peer_out), "--threads", str(threads), "--repeat", str(args.repeat), "--batches",
                       *map(str, args.batches), "--methods", "vit-reciprocam" if vit else "reciprocam", "rise",
                       "aise", "--ours", "gradcam", "reciprocam", "--map-images", str(scored if trained else 0),
                       "--rise-masks", str(args.rise_masks)]
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True)
            if done.returncode != 0:
                raise SystemExit(f"the OpenVINO peer failed on {name} (exit {done.returncode})")
            row["peer"] = json.loads((peer_out / "peer.json").read_text())
            peer_maps = {f"ov-{p.stem}": np.load(p) for p in sorted(peer_out.glob("*.npy"))}
            if not vit and "ov-reciprocam" in peer_maps:
                raw = reciprocam(m, x, targets, upsample=False, normalize=False)
                theirs = peer_maps["ov-reciprocam"]
                row["reciprocam_gap"] = float(np.abs(raw - theirs).max() / max(np.abs(theirs).max(), 1e-30))
                log(f"  our Recipro-CAM vs OpenVINO XAI's (f32): max |diff| / max |theirs| = "
                    f"{row['reciprocam_gap']:.2e}")
            if trained:
                maps = {k: v[:scored] for k, v in {**our_maps, **peer_maps}.items()}
                row["faithfulness"] = faithfulness(m, x[:scored], targets[:scored], maps)
                row["scored_images"] = scored
            doc["models"][name] = row
            del m
            doc["load_after"] = list(os.getloadavg())
            text = render(doc)  # after every model: a long run that is stopped keeps what it measured
            if args.markdown:
                args.markdown.parent.mkdir(parents=True, exist_ok=True)
                args.markdown.write_text(text, encoding="utf-8")
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    print(text)


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _peer_ort(doc: dict) -> str:
    return next((row["peer"]["ours_openvino_ep"]["onnxruntime"] for row in doc["models"].values()
                 if row["peer"].get("ours_openvino_ep")), "?")


def render(doc: dict) -> str:
    """The Markdown page of one --openvino run."""
    lines = [
        "# Speed and faithfulness beside OpenVINO XAI",
        "",
        f"Measured by `benchmarks/compare_peers.py --openvino` on {doc['date']}, commit `{doc['commit']}`, "
        f"{doc['machine']}; {doc['threads']} threads for every runtime; onnxruntime {doc['onnxruntime']} (ours, CPU "
        "provider) in the main venv, OpenVINO XAI and onnxruntime-openvino in `.venv-openvino`. Load average "
        f"{doc['load_before'][0]:.1f} before and {doc['load_after'][0]:.1f} after: other work shared the cores, so "
        "compare ratios within one model's rows (measured back to back), not absolute seconds across runs. "
        "Best of the repeats after one untimed run (occlusion and Score-CAM: one run after a one-image warm-up); "
        f"black-box methods: one image timed, times the batch; RISE with {doc['rise_masks']} masks (OpenVINO XAI's "
        f"SPEED preset: 4x4 cells), AISE with its SPEED preset; {doc['images']} photographs of "
        f"`shared/images/imagenet-sample`; occlusion: window 32, stride 16, baseline 0. Command: `{doc['command']}`.",
        "",
        *[line for note in doc.get("notes", []) for line in (f"**Note.** {note}", "")],  # a paragraph each
        "Columns: seconds per batch; **/ort fwd**: that time over onnxruntime's CPU forward of the same file and "
        "batch, measured in the same process shortly before or after (ours: onnxruntime "
        f"{doc['onnxruntime']} in the main venv; the OpenVINO rows: onnxruntime "
        f"{_peer_ort(doc)} of `.venv-openvino`, the row `forward (same run)`), so that a change of load between the "
        "two processes does not enter the ratio; **/own fwd**: over its own runtime's forward (OpenVINO's compiled "
        "model at the same precision for OpenVINO XAI, the OpenVINO execution provider for ours on it), measured "
        "back to back. OpenVINO XAI's white-box ReciproCAM is run at "
        "float32 (`f32`) and at the OpenVINO CPU plugin's default (`default`: bfloat16 on this CPU, what a user gets "
        "without asking).",
        "",
    ]
    for name, row in doc["models"].items():
        peer = row["peer"]
        lines += [f"## {name}" + (" (ImageNet weights)" if row["trained"] else " (random weights)"), ""]
        if "reciprocam_gap" in row:
            lines += [f"Our Recipro-CAM against OpenVINO XAI's at f32, raw maps at layer `{row['layer']}`: "
                      f"max |difference| / max |theirs| = {row['reciprocam_gap']:.1e}.", ""]
        lines += ["| batch | method | runtime | seconds | /ort fwd | /own fwd |", "|---|---|---|---|---|---|"]
        failed = set()
        for batch in map(str, doc["batches"]):
            fwd = row["forward"][batch]
            entries = [("forward", "onnxruntime CPU", fwd, fwd, fwd)]
            for method, times in row["ours"].items():
                if batch in times:
                    entries.append((f"ours: {method}", "onnxruntime CPU", times[batch], fwd, fwd))
            ep = peer.get("ours_openvino_ep")
            # the OpenVINO rows: against the onnxruntime CPU forward of the OpenVINO run (same process, same load)
            peer_fwd = ep["forward_cpu"][batch] if ep else fwd
            if ep:
                entries.append(("forward (same run)", "onnxruntime CPU", peer_fwd, peer_fwd, peer_fwd))
                for method, times in ep.get("methods_cpu", {}).items():
                    entries.append((f"ours: {method} (same run)", "onnxruntime CPU", times[batch], peer_fwd,
                                    peer_fwd))
            for precision, res in peer["precisions"].items():
                own = res["forward"][batch]
                entries.append((f"forward ({res['precision_used']})", f"OpenVINO {precision}", own, peer_fwd, own))
                for method, times in res["methods"].items():
                    if batch in times:
                        entries.append((f"OpenVINO XAI: {method}", f"OpenVINO {precision}", times[batch], peer_fwd,
                                        own))
            if ep:
                own = ep["forward_openvino_ep"][batch]
                entries.append(("forward", "onnxruntime OpenVINO EP", own, peer_fwd, own))
                for method, times in ep["methods"].items():
                    if "error" in times:
                        failed.add(f"ours: {method} on the OpenVINO EP failed: {times['error']}")
                    else:
                        entries.append((f"ours: {method}", "onnxruntime OpenVINO EP", times[batch], peer_fwd, own))
            for method, runtime, seconds, ref, own in entries:
                lines.append(f"| {batch} | {method} | {runtime} | {seconds:.3f} | {seconds / ref:.2f} | "
                             f"{seconds / own:.2f} |")
        lines.append("")
        lines += [f"- {text}" for text in sorted(failed)] + ([""] if failed else [])
        if "faithfulness" in row:
            lines += [f"Faithfulness of each method's maps of {row['scored_images']} photographs (our metrics at "
                      "their defaults; mean over the images; `ov-` = OpenVINO XAI's maps, float32): deletion lower "
                      "is better, insertion higher, ROAD MoRF lower.", "",
                      "| method | deletion | insertion | ROAD MoRF |", "|---|---|---|---|"]
            for method, values in row["faithfulness"].items():
                lines.append(f"| {method} | " + " | ".join(f"{values[k]:.3f}" for k in METRICS) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
