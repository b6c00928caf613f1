"""`labctl logs PAIR`: both nodes' keepalived journals, merged in time order, tagged by node.

Each node is asked once for ``journalctl -u keepalived -o json`` (since ``--since`` when given,
as a UNIX time so both nodes read the same instant whatever their time zone); entries are
sorted by their journal timestamp. Anything that looks like the pair's password, an
``auth_pass`` value or keepalived's ``auth_data`` is masked before it is returned.

``--since`` accepts an ISO 8601 time (``2026-12-02T01:30``, local time unless it says
otherwise), a duration ago (``90s``, ``15m``, ``2h``, ``1d``), ``today``, ``yesterday`` or
``@UNIX-SECONDS``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labctl.ops.evidence import scrub
from labctl.ops.verify import UNREACHABLE_ERRORS, describe_error
from labctl.profile import Profile
from labctl.remote import Remote

LOGS_TIMEOUT = 60.0
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)$")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class LogLine:
    at: float  # wall-clock seconds
    node: str
    message: str

    def to_json(self) -> dict[str, Any]:
        when = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat(timespec="microseconds")
        return {"time": when, "node": self.node, "message": self.message}


@dataclass(frozen=True)
class Logs:
    lines: tuple[LogLine, ...]
    errors: Mapping[str, str]  # node -> why its journal could not be read


def parse_since(text: str, now: Callable[[], float]) -> float:
    """``--since`` as UNIX seconds; ValueError (with the accepted forms) when not understood."""
    value = text.strip()
    if value.startswith("@"):
        return float(value[1:])
    found = _AGO.match(value.lstrip("-"))
    if found:
        return now() - float(found.group(1)) * _UNITS[found.group(2)]
    today = dt.datetime.fromtimestamp(now()).replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "today":
        return today.timestamp()
    if value == "yesterday":
        return (today - dt.timedelta(days=1)).timestamp()
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-12-02T01:30), a duration ago "
            "(90s, 15m, 2h, 1d), today, yesterday or @UNIX-SECONDS"
        ) from None


def parse_journal(node: str, stdout: str) -> list[LogLine]:
    out = []
    for raw in stdout.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald sends non-UTF-8 messages as bytes
            message = bytes(b for b in message if isinstance(b, int)).decode(errors="replace")
        stamp = entry.get("__REALTIME_TIMESTAMP")
        if not isinstance(message, str) or not str(stamp).isdigit():
            continue
        out.append(LogLine(int(stamp) / 1e6, node, message))
    return out


def read_logs(
    profile: Profile, pair_name: str, remotes: Mapping[str, Remote], *, since: float | None
) -> Logs:
    """Both nodes' keepalived journals, merged by time; masked."""
    argv = ["journalctl", "-u", "keepalived", "--no-pager", "-o", "json"]
    if since is not None:
        argv += ["--since", f"@{since:.6f}"]
    secrets = profile.secrets()
    lines: list[LogLine] = []
    errors: dict[str, str] = {}
    for node in profile.nodes(pair_name):
        remote = remotes.get(node.name)
        if remote is None:
            errors[node.name] = "not connected"
            continue
        try:
            result = remote.run(argv, check=False, timeout=LOGS_TIMEOUT)
        except UNREACHABLE_ERRORS as exc:
            errors[node.name] = describe_error(exc)
            continue
        if not result.ok:
            errors[node.name] = f"journalctl exited {result.exit_code}: {result.stderr_tail(2)}"
            continue
        lines += [
            LogLine(line.at, line.node, scrub(line.message, secrets))
            for line in parse_journal(node.name, result.stdout)
        ]
    lines.sort(key=lambda line: (line.at, line.node))
    return Logs(tuple(lines), errors)
