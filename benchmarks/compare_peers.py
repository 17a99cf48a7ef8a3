"""Side-by-side timing against pytorch-grad-cam and captum on the same model, in one run.

    .venv/bin/python benchmarks/compare_peers.py [--model resnet50] [--batches 1 8] [--size 224] [--repeat 1]

The model is a torchvision architecture with fixed random weights (timings do not depend on the weights), exported to
ONNX once; every method runs once untimed (graph building, session creation, torch warm-up; occlusion warms up on the
first image), then ``--repeat`` timed runs of which the best is reported. Both libraries get the same number of
threads. Ratios are against a bare
onnxruntime forward pass of the original ONNX file at the same batch size; "speed-up" is peer time / our time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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
    args = parser.parse_args()

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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 3, args.size, args.size),), str(path), dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
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


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
