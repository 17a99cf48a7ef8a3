"""The ``opset`` pass: a model whose opset or IR version the installed libraries cannot run is refused; an opset
below :data:`MIN_OPSET` is upgraded.

:data:`MIN_OPSET` lets the backward graph use ``ScatterElements(reduction="add")`` and axes-as-input reductions.
Upgrading uses ``onnx.version_converter``, which writes ``Constant`` nodes (an old Clip's min/max become Constant
inputs); they become initializers again here, so that rules read them as values (a ReLU6 from opset <= 10 is still
recognised as a rectifier).
"""
from __future__ import annotations

import functools

import onnx
from onnx import TensorProto, helper

from ...errors import ModelLoadError
from .record import PassRecord, plural
from .weights import constants_to_initializers_inplace

MIN_OPSET = 17

#: Opsets and IR versions every onnxruntime this project accepts (>= 1.20) runs; newer ones are checked against the
#: installed runtime.
KNOWN_GOOD_OPSET, KNOWN_GOOD_IR = 21, 10



def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset; 1 when it imports none."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1



@functools.cache
def _runtime_accepts(opset: int, ir_version: int) -> bool:
    """Whether the installed onnxruntime loads a one-node model stamped with ``opset`` and ``ir_version``.

    onnxruntime refuses opsets newer than its release only when a session is created, with a C++ signature as the
    message, and no function of its Python API says which opsets it supports: one tiny session per pair, once per
    process, tells.
    """
    import onnxruntime as ort

    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    probe.ir_version = ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any refusal means "not supported"
        return False
    return True


def check_supported_versions(model: onnx.ModelProto) -> None:
    """:class:`ModelLoadError` when the model's ``ai.onnx`` opset or its IR version is newer than the installed onnx
    and onnxruntime support, saying up to which version they do and what to do about it (rather than onnxruntime's
    C++ message at the first run)."""
    opset, ir = opset_of(model), int(model.ir_version)
    if opset <= KNOWN_GOOD_OPSET and ir <= KNOWN_GOOD_IR:
        return
    import onnxruntime as ort

    versions = f"onnx {onnx.__version__}, onnxruntime {ort.__version__}"
    onnx_opset, onnx_ir = onnx.defs.onnx_opset_version(), onnx.IR_VERSION
    if opset > onnx_opset or not _runtime_accepts(opset, KNOWN_GOOD_IR):
        top = next((v for v in range(min(opset, onnx_opset), KNOWN_GOOD_OPSET, -1)
                    if _runtime_accepts(v, KNOWN_GOOD_IR)), KNOWN_GOOD_OPSET)
        raise ModelLoadError(
            f"the model uses ONNX opset {opset}, newer than the installed libraries support: opset {top} at most "
            f"({versions}). Re-export the model with opset_version={top} or lower, or upgrade onnx and "
            "onnxruntime.")
    if ir > onnx_ir or not _runtime_accepts(opset, ir):
        top = next((v for v in range(min(ir, onnx_ir), KNOWN_GOOD_IR, -1) if _runtime_accepts(opset, v)),
                   KNOWN_GOOD_IR)
        raise ModelLoadError(
            f"the model's ONNX IR version {ir} is newer than the installed libraries support: IR {top} at most "
            f"({versions}). Re-export the model with an older exporter, or upgrade onnx and onnxruntime.")



def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the default-domain opset raised to at least MIN_OPSET by onnx's version converter; ``model`` itself
    (never edited) when it is already there."""
    version = opset_of(model)
    if version >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise ModelLoadError(
            f"the model uses ONNX opset {version}; upgrading it to opset {MIN_OPSET} failed ({str(exc)[:300]}). "
            f"Re-export the model with opset >= {MIN_OPSET}.") from None
    # The converter keeps the old IR version, which may be too low for the new opset.
    converted.ir_version = max(converted.ir_version, 8)
    return converted




def opset_pass(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    """Check the versions (:func:`check_supported_versions`) and upgrade an opset below :data:`MIN_OPSET`.

    Args:
        model: the model; never edited (an upgrade returns a converted copy).

    Returns:
        The model (a converted copy when upgraded) and the ``opset`` record.

    Raises:
        ModelLoadError: an opset or IR version the installed onnx and onnxruntime cannot run, or a failed upgrade.
    """
    check_supported_versions(model)
    version, ir = opset_of(model), int(model.ir_version)
    if version >= MIN_OPSET:
        return model, PassRecord("opset", False, f"opset {version}, IR {ir}: no upgrade needed (opset {MIN_OPSET} "
                                                 "or newer)", {"opset": version, "ir_version": ir, "upgraded_to": None})
    model = upgrade_opset(model)
    constants = constants_to_initializers_inplace(model)
    return model, PassRecord(
        "opset", True, f"opset {version} upgraded to {MIN_OPSET} by onnx's version converter (IR {ir} -> "
                       f"{model.ir_version})" + (f"; its {plural(constants, 'Constant node')} became weights"
                                                 if constants else ""),
        {"opset": version, "ir_version": ir, "upgraded_to": MIN_OPSET, "new_ir_version": int(model.ir_version),
         "constants_to_weights": constants})
