"""Output locations checked before any work: a path that is a file, or a directory nobody can write, is one line."""

from __future__ import annotations

import os
from pathlib import Path

from alarm.errors import AlarmError


def _writable_dir(directory: Path, label: str) -> None:
    existing = next(q for q in (directory, *directory.parents) if q.exists() or q == Path(q.anchor or "."))
    if existing.exists() and not existing.is_dir():
        raise AlarmError(f"{label}: {existing} is a file, not a directory; give another path")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise AlarmError(f"{label}: cannot write in {existing}; choose a writable location")


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """``path`` as a directory a command may create and write in; raise before a model loads, not after."""
    p = Path(path)
    _writable_dir(p, f"{what} {p}")
    return p


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` as a file a command may (re)write: not a directory, in a directory that can be written."""
    p = Path(path)
    if p.is_dir():
        raise AlarmError(f"{what} {p} is a directory; give a file path")
    _writable_dir(p.parent, f"{what} {p}")
    return p
