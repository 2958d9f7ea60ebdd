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
from alarm.outputs import check_output_dir


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


def decode_utf8(raw: bytes, name: str) -> str:
    """``raw`` as UTF-8 text; otherwise one line naming ``name`` and the byte offset of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AlarmError(f"{name} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}: {e.reason}); "
                         "save it as UTF-8") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text file's content as UTF-8; a missing or unreadable file, or one that is not UTF-8, is one line
    naming the file (and the offset of the first byte that is not UTF-8)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise AlarmError(f"{what} {p} not found") from None
    except IsADirectoryError:
        raise AlarmError(f"{what} {p} is a directory; give a file") from None
    except OSError as e:
        raise AlarmError(f"cannot read {what} {p}: {e.strerror or e}") from None
    return decode_utf8(raw, f"{what} {p}")


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
    for lineno, obj in jsonl_lines(str(p), read_text(p, what)):
        if not isinstance(obj, dict):
            raise AlarmError(f"{p} line {lineno}: each line must be a JSON object")
        out.append(obj)
    return out


RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", "meta.json")


def claim_run_dir(path: str | os.PathLike, resume: bool, overwrite: bool, what: str = "run directory") -> Path:
    """Make ``path`` the run's directory once every input has been checked: an existing non-empty one is
    refused unless resuming it or told to replace it; a replaced one must look like an alarm run."""
    import shutil

    p = check_output_dir(path, what)
    if p.is_dir() and any(p.iterdir()) and not resume:
        if not overwrite:
            raise AlarmError(f"{what} {p} already holds a run; pass --resume to continue it, --overwrite to "
                             "replace it, or choose another output directory")
        if not any((p / name).exists() for name in RUN_MARKERS):
            raise AlarmError(f"{what} {p} is not empty and does not look like an alarm run (none of "
                             f"{', '.join(RUN_MARKERS)}); --overwrite only replaces runs: choose another directory")
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    return p
