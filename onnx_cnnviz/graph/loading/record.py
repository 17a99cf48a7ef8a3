"""What one loading pass did: :class:`PassRecord`, and the size text the records share."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PassRecord:
    """What one named loading pass changed in the model's graph (``Model.load_passes`` lists them in order).

    ``name``: the pass ("read", "hold", "order", "constants", "ifs", "opset", "float32", "inputs", "score",
    "layout", "batch", "shapes"); ``changed``: whether the graph the engine runs differs from the file's because of
    it; ``summary``: one sentence saying what it found or changed; ``details``: the same as JSON-ready fields
    (counts, names, sizes).
    """
    name: str
    changed: bool
    summary: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The record as plain JSON-ready data (``cnnviz inspect --json``'s ``loading`` list)."""
        return {"pass": self.name, "changed": self.changed, "summary": self.summary, "details": dict(self.details)}


def size_text(n: int) -> str:
    """``n`` bytes with a binary unit (``"4.79 MiB"``)."""
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``"1 node"``, ``"3 nodes"``."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"
