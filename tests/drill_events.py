"""Reading a `labctl failover --json` trial the way the lab and VM tests assert on it."""

from __future__ import annotations

from typing import Any


def shown_during_fault(trial: dict[str, Any], node: str) -> list[bool | None]:
    """What ``node`` showed while the fault lasted: its state when the fault was injected, then
    each change until the fault was undone (True holds, False does not, None no answer).

    The trial's events are changes only, so a node whose last change came before the injection
    (a probe that answered late just before it) has no event inside the fault: its state then is
    the one it entered with, which is why that state leads the list.
    """
    start, end = trial["injected"], trial["recovered_at"]
    events = [e for e in trial["events"] if e["node"] == node]
    entering = [e["holds"] for e in events if e["t"] <= start][-1:]
    return entering + [e["holds"] for e in events if start < e["t"] < end]
