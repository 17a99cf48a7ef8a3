"""Faithfulness metrics, ours against the peers, on the same model and the same maps, in one run.

    .venv/bin/python benchmarks/metrics_speed.py [--model resnet50] [--size 224] [--images 2] [--threads N] [--write]

``--write`` puts the table, with the date, commit and machine, in the "Metrics" section of
``docs/validation/index.md`` (between its ``metrics_speed`` markers; the rest of the page is kept).

The model is a torchvision architecture with fixed random weights (timings do not depend on the weights), exported to
ONNX once; the maps are onnx_cnnviz's Grad-CAM of each image's top-1 class, fed to both sides. Each metric runs once
untimed on one image first (graph building, session creation, torch warm-up), then once timed on all images. Both
sides get the same number of threads. "speed-up" is peer time / our time; "agreement" the largest difference of the
per-image values relative to their scale (the peers read torch, we read onnxruntime; ROAD, infidelity and
sensitivity-max draw the same random numbers on both sides).

Rows (the settings are the papers' and the peers' defaults at 224x224):

* deletion + insertion, 28 steps of 1792 pixels (224*8): ours = ``deletion`` (zero baseline) + ``insertion``
  (RISE blur), 57 forward passes per image; torchcam's ``DeletionInsertionMetric`` (steps=28, batch 32) computes both
  curves from its one (zero) baseline, 55 passes per image;
* deletion against Quantus's ``PixelFlipping``: Quantus steps over features (3 per pixel) and requires the step to
  divide H*W, so it flips 1792 features per step, 84 passes for the curve whose every third point is ours;
* average drop + increase in confidence against torchcam's ``ClassificationMetric``;
* ROAD combined (MoRF and LeRF at percentiles 10..90, noisy linear imputation) against pytorch-grad-cam's
  ``ROADCombined``: dominated by the sparse solves, the same scipy solver on both sides;
* infidelity (10 Gaussian perturbations per image, standard deviation 0.3) and sensitivity-max (saliency
  re-explained on 10 perturbed copies) against captum.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pages  # noqa: E402  (benchmarks/pages.py: this script's folder is first on sys.path)

PAGE = ROOT / "docs" / "validation" / "index.md"

STEP_ROWS = 8  # pixels per step = 8 image rows (224*8 at 224x224)
PERCENTILES = [10, 20, 30, 40, 50, 60, 70, 80, 90]
SAMPLES = 10
#: Infidelity's noise here: large enough that the value (a squared residual) stands above the ~1e-6 by which
#: torch's and onnxruntime's float32 scores differ, so the agreement column means something (the time is the same).
INFIDELITY_NOISE = 0.3


def timed(fn, warm_up=None):
    """(seconds, result) of one run of ``fn`` after ``warm_up`` (untimed)."""
    if warm_up is not None:
        warm_up()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def agreement(ours, peer) -> float:
    ours, peer = np.asarray(ours, dtype=np.float64).ravel(), np.asarray(peer, dtype=np.float64).ravel()
    return float(np.abs(ours - peer).max() / max(np.abs(peer).max(), 1e-30))


class FixedMaps:
    """A torchcam CAM extractor returning given maps, so that torchcam evaluates exactly ours."""

    def __init__(self, model, maps):
        import torch

        self.model = model
        self.maps = torch.from_numpy(maps)

    def __call__(self, class_idx=None, scores=None, normalized=True, *, targets=None, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


@contextlib.contextmanager
def road_noise_as_ours(n_images: int, seed: int = 0):
    """pytorch-grad-cam's imputation noise (``torch.randn_like``) drawn as ours draws it (ROADCombined's order:
    LeRF then MoRF, percentile by percentile, image by image)."""
    import torch

    from onnx_cnnviz.metrics import imputation

    schedule = [(o, k, i) for o in ("lerf", "morf") for k in range(len(PERCENTILES)) for i in range(n_images)]
    calls = iter(schedule)
    original = torch.randn_like

    def randn_like(t, *args, **kwargs):
        o, k, i = next(calls)
        return torch.from_numpy(imputation.noise_for(seed, i, k, o, tuple(t.shape)))

    torch.randn_like = randn_like
    try:
        yield
    finally:
        torch.randn_like = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["quantus", "road", "robustness"],
                        help="leave rows out (Quantus's deletion is the longest)")
    parser.add_argument("--write", action="store_true",
                        help=f"write the table into {PAGE.relative_to(ROOT)} (section metrics_speed)")
    args = parser.parse_args()
    started = time.perf_counter()

    import onnxruntime as ort
    import torch
    from captum.attr import Saliency
    from captum.metrics import infidelity, sensitivity_max
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    import onnx_cnnviz as cv
    from onnx_cnnviz import metrics
    from onnx_cnnviz.runtime import default_threads
    from tests.exporting import export_torchscript, torchvision_model

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    net = torchvision_model(args.model, seed=0)
    softmax = lambda t: torch.softmax(t, dim=-1)  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        export_torchscript(net, torch.zeros(1, 3, args.size, args.size), path)
        m = cv.load(path, device="cpu", threads=threads, batch_size=32)
        n, size = args.images, args.size
        x = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
        xt = torch.from_numpy(x)
        targets = m.scores(x).argmax(1)
        cam = cv.grad_cam(m, x, targets)
        steps = size // STEP_ROWS
        step = STEP_ROWS * size

        setting = (f"{args.model} {size}x{size}, CPU, {threads} threads, {n} images, onnxruntime {ort.__version__}, "
                   f"torch {torch.__version__}")
        print(f"# {setting}; maps: onnx_cnnviz Grad-CAM of the top-1 class")
        header = f"{'metric':<26} {'ours s':>8} {'peer':<34} {'peer s':>8} {'speed-up':>8} {'agreement':>10}"
        print(header)
        print("-" * len(header), flush=True)
        rows = []

        def row(name, ours_s, peer, peer_s, agree):
            shown = "-" if agree is None else f"{agree:.1e}"
            print(f"{name:<26} {ours_s:>8.2f} {peer:<34} {peer_s:>8.2f} {peer_s / ours_s:>8.2f} {shown:>10}",
                  flush=True)
            rows.append((name, ours_s, peer, peer_s, shown))

        with torch.no_grad():
            ours_s, _ = timed(lambda: m.scores(x), warm_up=lambda: m.scores(x[:1]))
            peer_s, _ = timed(lambda: net(xt), warm_up=lambda: net(xt[:1]))
        row("forward (the N images)", ours_s, "torch", peer_s, None)

        def ours_curves(k=n):
            return (metrics.deletion(m, x[:k], cam[:k], targets[:k], pixels_per_step=step),
                    metrics.insertion(m, x[:k], cam[:k], targets[:k], pixels_per_step=step))

        def torchcam_curves(k=n):
            peer = DeletionInsertionMetric(FixedMaps(net, cam[:k]), softmax, steps=steps, batch_size=32)
            peer.update(xt[:k], class_idx=[int(t) for t in targets[:k]])
            return peer

        ours_s, (dele, _) = timed(ours_curves, warm_up=lambda: ours_curves(1))
        peer_s, peer = timed(torchcam_curves, warm_up=lambda: torchcam_curves(1))
        row("deletion + insertion", ours_s, "torchcam DeletionInsertionMetric", peer_s,
            agreement(dele.mean(), peer.summary()["deletion_auc"]))

        if "quantus" not in args.skip:
            import quantus

            def quantus_deletion(k=n):
                metric = quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0, disable_warnings=True,
                                               display_progressbar=False)
                return np.asarray(metric(model=net, x_batch=x[:k], y_batch=targets[:k], a_batch=cam[:k, None],
                                         channel_first=True, softmax=True, device="cpu", batch_size=k))

            ours_s, dele = timed(lambda: metrics.deletion(m, x, cam, targets, pixels_per_step=step),
                                 warm_up=lambda: metrics.deletion(m, x[:1], cam[:1], targets[:1],
                                                                  pixels_per_step=step))
            peer_s, curve = timed(quantus_deletion, warm_up=lambda: quantus_deletion(1))
            # Grad-CAM's ties (its ReLU zeros) are ordered differently by Quantus's unstable sort: no agreement.
            row("deletion", ours_s, "Quantus PixelFlipping (84 steps)", peer_s, None)

        def torchcam_confidence(k=n):
            peer = ClassificationMetric(FixedMaps(net, cam[:k]), softmax)
            peer.update(xt[:k], class_idx=[int(t) for t in targets[:k]])
            return peer

        ours_s, (drop, _) = timed(lambda: metrics.confidence_change(m, x, cam, targets),
                                  warm_up=lambda: metrics.confidence_change(m, x[:1], cam[:1], targets[:1]))
        peer_s, peer = timed(torchcam_confidence, warm_up=lambda: torchcam_confidence(1))
        row("average drop + increase", ours_s, "torchcam ClassificationMetric", peer_s,
            agreement(drop.mean(), peer.summary()["avg_drop"]))

        if "road" not in args.skip:
            soft_targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]

            def peer_road():
                with road_noise_as_ours(n):
                    return ROADCombined(PERCENTILES)(xt, cam, soft_targets, net)

            ours_s, road = timed(lambda: metrics.road_combined(m, x, cam, targets, percentiles=PERCENTILES),
                                 warm_up=lambda: metrics.road_combined(m, x[:1], cam[:1], targets[:1],
                                                                       percentiles=[50]))
            peer_s, peer = timed(peer_road)
            row("ROAD combined (9 pct.)", ours_s, "pytorch-grad-cam ROADCombined", peer_s,
                agreement(road.values, peer))

        if "robustness" not in args.skip:
            attributions = cv.gradients(m, x, targets)

            def captum_infidelity(seed=0):
                rng = np.random.default_rng(seed)

                def perturb(inputs):
                    i = torch.from_numpy(rng.normal(0.0, INFIDELITY_NOISE, tuple(inputs.shape)).astype(np.float32))
                    return i, inputs - i

                return np.concatenate([
                    infidelity(net, perturb, xt[i:i + 1], torch.from_numpy(attributions[i:i + 1]),
                               target=int(targets[i]), n_perturb_samples=SAMPLES, max_examples_per_batch=32
                               ).numpy() for i in range(n)])

            ours_s, infd = timed(lambda: metrics.infidelity(m, x, attributions, targets, samples=SAMPLES,
                                                            noise=INFIDELITY_NOISE),
                                 warm_up=lambda: metrics.infidelity(m, x[:1], attributions[:1], targets[:1],
                                                                    samples=2))
            peer_s, peer = timed(captum_infidelity)
            row(f"infidelity ({SAMPLES} samples)", ours_s, "captum infidelity", peer_s, agreement(infd.values, peer))

            saliency = Saliency(net)

            def torch_saliency(inp, target):
                if isinstance(inp, tuple):
                    return (torch_saliency(inp[0], target),)
                g = saliency.attribute(inp, target=target, abs=True).amax(dim=1)
                flat = g.reshape(len(g), -1)
                lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
                return ((flat - lo) / (hi - lo)).reshape(g.shape)

            def captum_sensitivity(seed=0):
                rng = np.random.default_rng(seed)

                def perturb(inputs, r):
                    return inputs + torch.from_numpy(rng.uniform(-r, r, tuple(inputs.shape)).astype(np.float32))

                return np.concatenate([
                    sensitivity_max(torch_saliency, xt[i:i + 1], perturb_func=perturb, n_perturb_samples=SAMPLES,
                                    max_examples_per_batch=32, target=int(targets[i])).numpy() for i in range(n)])

            ours_s, sens = timed(lambda: metrics.sensitivity_max(m, x, "saliency", targets, samples=SAMPLES),
                                 warm_up=lambda: metrics.sensitivity_max(m, x[:1], "saliency", targets[:1],
                                                                         samples=2))
            peer_s, peer = timed(captum_sensitivity)
            # Agreement up to the ReLU kinks torch and onnxruntime decide differently (tests/reference.py).
            row(f"sensitivity-max ({SAMPLES})", ours_s, "captum sensitivity_max (Saliency)", peer_s,
                agreement(sens.values, peer))

    if args.write:
        command = " ".join([".venv/bin/python benchmarks/metrics_speed.py", *sys.argv[1:]])
        pages.write_section(PAGE, "metrics_speed", section(rows, setting, command, time.perf_counter() - started))
        print(f"wrote the metrics_speed section of {PAGE.relative_to(ROOT)}")


def section(rows: list, setting: str, command: str, seconds: float) -> str:
    """The page's "Metrics" table: the run's setting, each row's times, speed-up and agreement, and what the
    deletion + insertion row says about issue 12's goal (computed from the row, not written by hand)."""
    lines = [pages.header("benchmarks/metrics_speed.py", command, f"The whole run took {seconds:.0f} s."), "",
             f"{setting}; torchvision architecture, random weights; the maps are onnx_cnnviz's Grad-CAM of each "
             "image's top-1 class, fed to both sides; each metric runs once untimed first, then timed on all the "
             "images; \"agreement\" is the largest per-image difference relative to the values' scale (the peers "
             "read torch, we read onnxruntime; ROAD, infidelity and sensitivity-max draw the same random numbers on "
             "both sides). The script's docstring gives each row's settings.", "",
             "| metric | ours (s) | peer | peer (s) | speed-up | agreement |", "|---|---:|---|---:|---:|---:|"]
    for name, ours_s, peer, peer_s, shown in rows:
        lines.append(f"| {name} | {ours_s:.2f} | {peer} | {peer_s:.2f} | {peer_s / ours_s:.2f} | {shown} |")
    curves = next((r for r in rows if r[0] == "deletion + insertion"), None)
    if curves is not None:
        ratio = curves[3] / curves[1]
        lines += ["", f"Issue 12's goal, deletion + insertion at least 5x faster than the fastest peer, is "
                  f"{'met' if ratio >= 5 else '**not met**'} in this run: {ratio:.1f}x against torchcam."]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
