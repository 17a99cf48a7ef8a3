"""Records of the choices ``Model`` makes between the normal form and the batch pass: which output holds the score
(``score``: graph/head.py), which other inputs are dropped (``inputs``: graph/structure.py's
``without_other_inputs``), and how the image input is adapted to float NCHW (``layout``: graph/layout.py)."""
from __future__ import annotations

import onnx

from .record import PassRecord, plural


def score_record(task: str, output: str, score: str, skipped: str | None) -> PassRecord:
    """The ``score`` record: the tensor the engine explains (a classifier's class scores before a final
    Softmax/LogSoftmax/Sigmoid ``skipped``, or a detector's or segmenter's head output)."""
    if task != "classifier":
        summary = f"the {task}'s head output is '{score}'"
    elif skipped:
        summary = f"the class scores are '{score}', the input of the final {skipped} of output '{output}' (skipped)"
    else:
        summary = f"the class scores are output '{output}'"
    return PassRecord("score", bool(skipped), summary,
                      {"task": task, "output": output, "tensor": score, "softmax_skipped": skipped})


def inputs_record(image: str, before: onnx.ModelProto, after: onnx.ModelProto) -> PassRecord:
    """The ``inputs`` record: the graph inputs other than the image that the score does not need, removed with
    everything computed from them (``before`` and ``after`` that removal)."""
    kept = {v.name for v in after.graph.input}
    weights = {t.name for t in before.graph.initializer}
    dropped = [v.name for v in before.graph.input if v.name not in kept and v.name not in weights]
    if not dropped:
        return PassRecord("inputs", False, f"one input, the image '{image}'", {"image": image, "dropped": []})
    return PassRecord("inputs", True, f"{plural(len(dropped), 'other input')} the score does not need removed with "
                                      f"what it computes: {', '.join(dropped)}", {"image": image, "dropped": dropped})


def layout_record(original: str, layout: str, dtype: str, engine_input: str) -> PassRecord:
    """The ``layout`` record: how the image input ``original`` (``layout``, ``dtype``) became the float NCHW input
    ``engine_input`` the engine feeds."""
    changes = []
    if layout != "NCHW":
        changes.append(f"a Transpose from NCHW in front of the {layout} input")
    if dtype not in ("float32", "float64", "float16", "bfloat16"):
        changes.append(f"{dtype} pixels taken as float (its Casts to float became Identity)")
    if not changes:
        return PassRecord("layout", False, f"the image input '{original}' is already NCHW {dtype}",
                          {"layout": layout, "dtype": dtype, "input": original, "engine_input": engine_input})
    return PassRecord("layout", True, f"'{original}' ({layout} {dtype}): " + "; ".join(changes)
                      + f"; the engine feeds '{engine_input}'",
                      {"layout": layout, "dtype": dtype, "input": original, "engine_input": engine_input})
