"""alarm.io: a write either leaves the old file or the whole new one; a bad line is named by file and line."""

from __future__ import annotations

import pytest

from alarm.errors import AlarmError
from alarm.io import read_jsonl, write_json_atomic, write_jsonl_atomic


def test_jsonl_round_trip_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = write_jsonl_atomic(tmp_path / "sub" / "a.jsonl", [{"x": 1}, {"y": "é"}])
    assert read_jsonl(path) == [{"x": 1}, {"y": "é"}]
    with pytest.raises(TypeError):
        write_jsonl_atomic(path, [{"x": 2}, {"bad": object()}])  # fails half-way through the records
    assert read_jsonl(path) == [{"x": 1}, {"y": "é"}]
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.jsonl"]  # no temporary file left behind
    write_json_atomic(tmp_path / "s.json", {"k": [1, 2]})
    assert (tmp_path / "s.json").read_text().startswith("{")


def test_bad_lines_name_the_file_and_the_line(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(AlarmError, match=r"g.jsonl line 3: invalid JSON"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(AlarmError, match=r"line 2: each line must be a JSON object"):
        read_jsonl(p)
    with pytest.raises(AlarmError, match="scored file .* not found"):
        read_jsonl(tmp_path / "missing.jsonl", "scored file")
