"""The ``shapes`` step: the image's C, H, W fixed (the batch stays symbolic) so that every later shape is static but
the batch, and the record of how the shapes were learnt.

``Model`` specialises its graph to each input size it runs at: it fixes the size here, folds the Ifs whose
conditions are shape arithmetic (graph/shapes.py's ``fold_ifs_at_size``), runs ONNX shape inference, and measures
by one probe run at batch 1 and 2 the shapes inference cannot tell (or gets wrong: ceil-mode pools whose last window
starts in the padding). :func:`shapes_record` says what that took at the model's default size.
"""
from __future__ import annotations

import onnx

from .record import PassRecord, plural


def set_input_shape_inplace(model: onnx.ModelProto, input_name: str, chw: tuple[int, int, int]) -> None:
    """Fix the image input's C, H, W (the batch stays symbolic) so that every later shape is static but the batch."""
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            for d, size in zip(list(dims)[1:], chw):
                d.Clear()
                d.dim_value = int(size)
    del model.graph.value_info[:]


def shapes_record(hw: tuple, inferred: int, probed: int, ifs_folded: int, pools: int) -> PassRecord:
    """The ``shapes`` record at input size ``hw``: ``inferred`` tensors whose shapes ONNX shape inference gave,
    ``probed`` measured by a probe run (all of them on the path when ``pools`` ceil-mode pools were misinferred),
    ``ifs_folded`` Ifs on shape arithmetic replaced by their branch."""
    done = [f"{plural(ifs_folded, 'If')} on shape arithmetic replaced by its branch"] if ifs_folded else []
    if pools:
        done.append(f"{plural(pools, 'ceil-mode pool')} misinferred by ONNX shape inference")
    done.append(f"{plural(probed, 'tensor shape')} measured by a probe run at batch 1 and 2" if probed else
                "every shape on the path from ONNX shape inference, no probe run")
    return PassRecord("shapes", bool(ifs_folded), f"at {hw[0]}x{hw[1]}: {plural(inferred, 'tensor')} with known "
                                                  f"shapes; " + "; ".join(done),
                      {"size": list(hw), "inferred": inferred, "probed": probed, "ifs_folded": ifs_folded,
                       "misinferred_pools": pools})
