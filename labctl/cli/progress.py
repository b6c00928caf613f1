"""Live progress for multi-machine waits (up, clone, apply): one line per machine with its
current step and elapsed time, on a terminal. Off a terminal (or with --json) the same
messages are plain lines on stderr, as before.

Operations report progress as ``"MACHINE: step"`` strings from any thread; lines for other
subjects are printed above the live lines as they come.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labctl.cli.base import note

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.live import Live

DONE_STEPS = ("SSH answers", "created", "exists; kept")


@dataclass
class MachineStep:
    step: str
    started: float
    finished: float | None = None


@dataclass
class MachineLines:
    """Per-machine progress; call it with each progress message."""

    machines: Sequence[str]
    clock: Callable[[], float] = time.monotonic
    live: bool = field(default_factory=lambda: sys.stderr.isatty())
    steps: dict[str, MachineStep] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _live: Live | None = None

    def subject(self, message: str) -> tuple[str | None, str]:
        name, sep, rest = message.partition(": ")
        if sep and name in self.machines:
            return name, rest
        for machine in self.machines:  # "standby X created ..." style messages
            if f" {machine} " in f" {message} ":
                return machine, message
        return None, message

    def __call__(self, message: str) -> None:
        name, step = self.subject(message)
        with self._lock:
            if name is not None:
                now = self.clock()
                current = self.steps.get(name)
                started = current.started if current else now
                done = now if any(d in step for d in DONE_STEPS) else None
                self.steps[name] = MachineStep(step, started, done)
            if self._live is None:
                note(message)
            elif name is None:
                self._live.console.print(message, highlight=False, markup=False)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        now = self.clock()
        with self._lock:
            rows = [(n, self.steps[n]) for n in self.machines if n in self.steps]
        for name, step in rows:
            elapsed = (step.finished or now) - step.started
            mark = "done" if step.finished else "..."
            table.add_row(name, step.step, f"{elapsed:5.1f}s", mark)
        yield table

    def __enter__(self) -> MachineLines:
        if self.live:
            from rich.live import Live

            from labctl.cli.base import stderr_console

            self._live = Live(self, console=stderr_console(), refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.__exit__(*exc)


def machine_lines(machines: Sequence[str], *, quiet: bool = False) -> MachineLines:
    """Live lines on a terminal; plain lines otherwise (and with ``quiet``, e.g. --json)."""
    return MachineLines(machines, live=sys.stderr.isatty() and not quiet)
