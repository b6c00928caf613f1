"""Live per-machine progress lines (rich, on a terminal) and plain lines elsewhere."""

from __future__ import annotations

import pytest
from rich.console import Console

from labctl.cli.progress import MachineLines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_machine_shows_its_current_step_and_elapsed_time() -> None:
    clock = Clock()
    lines = MachineLines(["prod-a", "prod-a-standby"], clock=clock, live=False)
    lines("prod-a: starting")
    clock.now += 1.5
    lines("prod-a-standby: cloning prod-a")
    clock.now += 2.0
    lines("prod-a: SSH answers")
    clock.now += 1.0
    console = Console(record=True, width=80, force_terminal=False)
    console.print(lines)
    rendered = [line.split() for line in console.export_text().splitlines()]
    assert rendered == [
        ["prod-a", "SSH", "answers", "3.5s", "done"],
        ["prod-a-standby", "cloning", "prod-a", "3.0s", "..."],
    ]


def test_off_a_terminal_every_message_is_a_plain_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with MachineLines(["prod-a"], live=False) as lines:
        lines("prod-a: starting")
        lines("image: ready")
    assert capsys.readouterr().err == "prod-a: starting\nimage: ready\n"
