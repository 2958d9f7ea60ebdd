"""One progress display for every long loop: a rich bar on a terminal, plain periodic lines in a log.

A bar redrawn in place is useless (or invisible) in a file or a CI log, so when stderr is not a terminal the same
updates print ``label: 30/100 (30%), 12 s, 28 s left`` every 10 % of the work or every 30 s, and once at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress("generating", total=n) as bar: ... bar.update(advance=k)`` (or ``completed=i``, ``info=``).

    ``enabled=False`` shows nothing (another rank, a caller that asked for quiet); ``interactive`` defaults to
    whether ``stream`` is a terminal."""

    def __init__(self, label: str, total: int, completed: int = 0, enabled: bool = True,
                 interactive: bool | None = None, transient: bool = True, every: float = 0.1,
                 seconds: float = 30.0, stream: TextIO | None = None):
        self.label, self.total, self.done, self.enabled = label, total, completed, enabled
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.transient, self.every, self.seconds = transient, every, seconds
        self._bar = self._task = None

    def __enter__(self) -> Progress:
        self._start = self._last = time.monotonic()
        self._start_done = self.done
        self._bucket = self._bucket_of(self.done)
        if self.enabled and self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), transient=self.transient,
                                 console=Console(file=self.stream))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def _bucket_of(self, done: int) -> int:
        return int(done / max(self.total, 1) / self.every + 1e-9)

    def update(self, advance: int = 0, completed: int | None = None, info: str = "") -> None:
        self.done = completed if completed is not None else self.done + advance
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, info=info)
            return
        now = time.monotonic()
        bucket = self._bucket_of(self.done)
        if bucket <= self._bucket and now - self._last < self.seconds:
            return
        self._bucket, self._last = bucket, now
        elapsed = now - self._start
        line = f"{self.label}: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%), {elapsed:.0f} s"
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        if 0 < self.done < self.total and rate > 0:
            line += f", {(self.total - self.done) / rate:.0f} s left"
        print(line + (f"; {info}" if info else ""), file=self.stream, flush=True)
