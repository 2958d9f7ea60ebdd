"""Files a run writes and reads: atomic writes (a crash never leaves half a file) and JSONL with line numbers.

Every command writes through these, so an interrupted run leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from alarm.errors import AlarmError


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def jsonl_lines(name: str, text: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for each non-blank line; bad JSON names the file and the line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise AlarmError(f"{name} line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def read_jsonl(path: str | os.PathLike, what: str = "file") -> list[dict]:
    """Every line of a JSONL file as a dict; a missing file or a line that is not an object is one-line error."""
    p = Path(path)
    if not p.exists():
        raise AlarmError(f"{what} {p} not found")
    out = []
    for lineno, obj in jsonl_lines(str(p), p.read_text(encoding="utf-8")):
        if not isinstance(obj, dict):
            raise AlarmError(f"{p} line {lineno}: each line must be a JSON object")
        out.append(obj)
    return out
