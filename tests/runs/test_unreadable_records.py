"""--resume and a record it cannot read: a file that is not JSON, or JSON that is not an object, is stale (redone),
never an exception."""
from __future__ import annotations

import pytest

from onnx_cnnviz.runs.explain_plan import record_state


@pytest.mark.parametrize("text, cause", [
    ("[1, 2]", "not a JSON object"),
    ("3", "not a JSON object"),
    ("{truncated", "JSONDecodeError"),
])
def test_an_unreadable_record_is_stale(tmp_path, text, cause):
    record = tmp_path / "kitten.gradients.json"
    record.write_text(text, encoding="utf-8")
    state = record_state(None, "gradients", tmp_path / "kitten.png", record)
    assert state == ("stale", [f"unreadable record: {cause}"])


def test_a_missing_record_is_missing(tmp_path):
    assert record_state(None, "gradients", tmp_path / "kitten.png", tmp_path / "none.json") == ("missing", None)
