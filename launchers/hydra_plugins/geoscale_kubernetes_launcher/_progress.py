"""A live view of a sweep's Jobs on stderr: per job its state (a ``JobState`` value, or the reason its
pod waits), node, elapsed time and retries."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from ._states import FINAL

FINAL_STATES = frozenset(state.value for state in FINAL)


@dataclass
class JobRow:
    state: str = "Submitted"
    node: str = ""
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def line(self, name: str) -> str:
        elapsed = (self.ended or time.monotonic()) - self.started
        return f"{name:<48} {self.state:<10} {self.node or '-':<28} {elapsed:7.0f}s  retries {self.retries}"


class ProgressView:
    """Redraws the table in place on a terminal, only when a row changes; one plain line per change otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty()
        self.rows: dict[str, JobRow] = {}
        self._drawn = 0

    def update(self, name: str, state: str | None = None, node: str | None = None, retries: int | None = None) -> None:
        row = self.rows.setdefault(name, JobRow())
        before = (row.state, row.node, row.retries)
        row.state, row.node = state or row.state, node or row.node
        row.retries = row.retries if retries is None else retries
        if (row.state, row.node, row.retries) == before and len(self.rows) == self._drawn:
            return
        if row.state in FINAL_STATES and row.ended is None:
            row.ended = time.monotonic()
        self._draw(name, row)

    def add_retry(self, name: str) -> None:
        self.update(name, retries=self.rows.setdefault(name, JobRow()).retries + 1)

    def _draw(self, name: str, row: JobRow) -> None:
        if not self.is_tty:
            self.stream.write(row.line(name) + "\n")
            self._drawn = len(self.rows)
        else:
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            lines = "".join(f"\x1b[2K{r.line(n)}\n" for n, r in self.rows.items())
            self.stream.write(up + lines)
            self._drawn = len(self.rows)
        self.stream.flush()
