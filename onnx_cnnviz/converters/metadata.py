"""The ONNX metadata a converter writes, shared by every converter."""
from __future__ import annotations


def set_metadata_props(model, props: dict) -> None:
    """Write ``props`` into ``model.metadata_props``, replacing entries with the same key.

    Args:
        model: an ``onnx.ModelProto`` (edited in place).
        props: key -> value (written as strings).
    """
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
