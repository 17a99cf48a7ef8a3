"""The normal form every later pass expects, as a sequence of named passes: ``order``, ``constants``, ``ifs``,
``opset``, ``float32`` (:func:`normalise_passes`).

* ``order``: the nodes are in topological order (:mod:`.order`);
* ``constants``: weights are initializers, never ``Constant`` nodes or graph inputs, and a weight the graph computes
  from the stored ones alone (timm's weight-standardised convolutions) is computed once and stored (:mod:`.weights`;
  run after ``float32``, on the graph the sessions run);
* ``ifs``: an ``If`` whose condition is a constant is replaced by the branch it takes
  (:func:`onnx_cnnviz.graph.subgraphs.fold_constant_ifs`; conditions computed from the input's shape are folded once
  the size is fixed, by the ``shapes`` step of ``Model``);
* ``opset``: an opset or IR version newer than the installed onnx and onnxruntime support is refused, one below
  :data:`MIN_OPSET` upgraded (:mod:`.versions`);
* ``float32``: every float16 tensor is float32 (:mod:`.weights`).

The versions are checked before anything else, so a model the installed libraries cannot run is refused with that
reason whatever else is wrong with it.
"""
from __future__ import annotations

import onnx

from ..subgraphs import fold_constant_ifs
from .order import order_pass
from .record import PassRecord, plural
from .versions import MIN_OPSET, check_supported_versions, opset_pass
from .weights import (constants_pass, constants_to_initializers_inplace, float32_pass, fold_computed_weights_inplace,
                      folded_record)

__all__ = ["normalise", "normalise_passes", "ifs_pass", "MIN_OPSET"]


def normalise(model: onnx.ModelProto, copy: bool = True) -> onnx.ModelProto:
    """Return a normalised copy of ``model`` (see the module docstring).

    Args:
        model: the model (a :func:`~onnx_cnnviz.graph.loading.read.read_model` result or any ModelProto).
        copy: False to normalise ``model`` itself when it can (a model just read: copying a ViT-B's 330 MB costs
            seconds).

    Returns:
        The normalised model.

    Raises:
        ModelLoadError: an unsupported opset or IR version, a failed upgrade, a cycle or a dangling tensor.
    """
    return normalise_passes(model, copy)[0]


def normalise_passes(model: onnx.ModelProto, copy: bool = True) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """:func:`normalise`, with the record of each of its passes, in the order they ran."""
    check_supported_versions(model)
    model, order = order_pass(model, copy=copy)
    constants = constants_pass(model)
    model, ifs = ifs_pass(model)
    model, opset = opset_pass(model)
    float32 = float32_pass(model)
    # Weights the graph computes from its stored ones are folded last, on the float32 graph the sessions run (their
    # record joins the constants pass's: weights are initializers, computed ones included).
    constants = folded_record(constants, fold_computed_weights_inplace(model, release=not copy))
    return model, [order, constants, ifs, opset, float32]


def ifs_pass(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    """Replace every ``If`` whose condition is a constant by the branch it takes; the Constant nodes of the inlined
    branches become weights.

    Args:
        model: the model (never edited when nothing folds).

    Returns:
        The model and the ``ifs`` record (how many Ifs were folded).
    """
    model, folded = fold_constant_ifs(model)
    constants = constants_to_initializers_inplace(model) if folded else 0
    return model, PassRecord("ifs", bool(folded),
                             f"{plural(folded, 'If')} with a constant condition replaced by the branch taken"
                             if folded else "no If with a constant condition",
                             {"folded": folded, "constants_to_weights": constants})
