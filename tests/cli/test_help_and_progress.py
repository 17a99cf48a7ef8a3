"""Issue 24 point 8: ``cnnviz occlusion --help`` shows occlusion's own options (no --layer, no integrated-gradients
text, no undefined RANK), and ``evaluate``'s progress counts images as they finish and names the method whose
metric is running."""
from __future__ import annotations

from onnx_cnnviz import runs
from onnx_cnnviz.runs.reporting import NullProgress, Reporter

from . import invoke


def test_occlusion_help_is_about_occlusion():
    text = invoke("occlusion", "--help").output
    assert "--layer" not in text and "integrated" not in text and "RANK" not in text
    assert "--baseline" in text and "topK" in text
    explain = invoke("explain", "--help").output
    assert "--layer" in explain and "integrated-gradients baseline" in explain.replace("\n", " ").replace("  ", " ")


def test_occlusion_runs_without_a_layer_option(inputs, tmp_path):
    result = invoke("occlusion", inputs / "model.onnx", inputs / "a.png", "--window", "4", "--stride", "2", "--out",
                    tmp_path / "out", "--preprocess", "imagenet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.occlusion.top1.npy").exists()
    assert invoke("occlusion", inputs / "model.onnx", inputs / "a.png", "--layer", "relu1").exit_code == 2


class Recorder(NullProgress):
    def __init__(self, log):
        self.log = log

    def update(self, n=1):
        self.log.append(("update", n))

    def method_progress(self, name):
        return lambda done, total: self.log.append(("step", name, done, total))


class Recording(Reporter):
    def __init__(self):
        super().__init__(on_warning=lambda message, once: None)
        self.log = []

    def progress(self, total, label, unit="images"):
        self.log.append(("start", total, label))
        return Recorder(self.log)


def test_evaluate_progress_counts_images_and_names_the_method(inputs, tmp_path):
    reporter = Recording()
    runs.evaluate_images(inputs / "model.onnx", [inputs / "a.png", inputs / "b.png"], tmp_path / "out",
                         methods=["saliency", "gradcam"], metrics=["deletion"],
                         metric_params={"deletion": {"pixels_per_step": 8}}, preprocess="imagenet", batch_size=8,
                         reporter=reporter)
    log = reporter.log
    assert log[0] == ("start", 4, "evaluating")  # rows: 2 pictures x 2 methods x 1 metric
    # Each row is counted as it is journaled (before: once per --batch-size of pictures, "0/2" until the end).
    assert [e for e in log if e[0] == "update"] == [("update", 2), ("update", 2), ("update", 0)]
    names = {entry[1] for entry in log if entry[0] == "step"}
    assert {"deletion of saliency", "deletion of gradcam"} <= names, names
