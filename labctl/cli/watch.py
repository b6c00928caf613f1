"""Looking at a pair: watch (live holder and VRRP states) and logs (merged keepalived journals)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

import click

from labctl.cli.base import JsonOpt, State, cli, note, pass_state, profile_option, stderr_console
from labctl.cli.checks import _node_connector
from labctl.errors import GuestUnreachable, LabctlError

if TYPE_CHECKING:
    # imported inside the commands: `labctl --version` / `--help` stay light
    from rich.table import Table

    from labctl.ops import watch as watch_op
    from labctl.profile import Profile
    from labctl.remote import Remote

WATCH_CONNECT_DEADLINE = 3.0
LOG_LINES_SHOWN = 12


def _pairs(prof: Profile, pairs: tuple[str, ...]) -> list[str]:
    for name in pairs:
        prof.pair(name)  # an unknown pair: one clear error
    return list(pairs) or list(prof.pairs)


@contextlib.contextmanager
def _until_interrupted() -> Iterator[list[bool]]:
    """A flag set by Ctrl-C (SIGINT), so the loop ends between ticks and cleans up."""
    flag = [False]

    def handler(_signum: int, _frame: FrameType | None) -> None:
        flag[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _describe(event: watch_op.Event) -> str:
    n = event.node
    if not n.reachable:
        what = f"unreachable ({n.error})" if n.error else "unreachable"
    else:
        what = f"{n.state or '?'}, {'holds the VIP' if n.holds else 'no VIP'}"
    holder = event.to_json()["holder"] or ("several" if event.holders else "none")
    stamp = time.strftime("%H:%M:%S", time.localtime(n.at)) + f".{int(n.at * 1000) % 1000:03d}"
    return f"{stamp} {n.pair} {n.node}: {what} (holder: {holder})"


def _table(snapshot: watch_op.Snapshot) -> Table:
    from rich.table import Table

    table = Table(title="labctl watch (Ctrl-C to leave)")
    for header in ("pair", "holder", "node", "VRRP state", "VIP", "reachable"):
        table.add_column(header)
    for pair, nodes in snapshot.pairs.items():
        holders = snapshot.holders(pair)
        holder = (
            holders[0]
            if len(holders) == 1
            else ("SPLIT: " + ", ".join(holders) if holders else "none")
        )
        for i, n in enumerate(nodes):
            if n is None:
                table.add_row(
                    pair if i == 0 else "", holder if i == 0 else "", "?", "-", "-", "waiting"
                )
                continue
            table.add_row(
                pair if i == 0 else "",
                holder if i == 0 else "",
                n.node,
                n.state or "?",
                "-" if n.holds is None else ("holds" if n.holds else "-"),
                "yes" if n.reachable else f"NO ({n.error or 'no answer'})",
            )
    return table


@cli.command("watch")
@click.argument("pairs", nargs=-1, metavar="[PAIR]...")
@JsonOpt
@profile_option
@pass_state
def watch_cmd(state: State, pairs: tuple[str, ...], as_json: bool) -> None:
    """Watch every pair's holder and each node's VRRP state live; Ctrl-C to leave.

    On a terminal: a table refreshed every 100 ms and a log of transitions. Otherwise, or
    with --json (one JSON object per line per transition), only the transitions.
    """
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from labctl.ops import watch as watch_op

    prof = state.profile()
    names = _pairs(prof, pairs)
    watch = watch_op.Watch(prof, names, _node_connector(prof, deadline=WATCH_CONNECT_DEADLINE))
    live_view = sys.stdout.isatty() and not as_json
    log: list[str] = []
    with _until_interrupted() as interrupted:
        if live_view:
            with Live(Text("connecting..."), refresh_per_second=10, transient=False) as live:

                def on_event(event: watch_op.Event) -> None:
                    log.append(_describe(event))
                    del log[:-LOG_LINES_SHOWN]

                def on_refresh(snapshot: watch_op.Snapshot) -> None:
                    live.update(Group(_table(snapshot), Text("\n".join(log))))

                watch.run(on_event, on_refresh, lambda: interrupted[0])
        else:

            def emit(event: watch_op.Event) -> None:
                line = json.dumps(event.to_json()) if as_json else _describe(event)
                click.echo(line)
                sys.stdout.flush()

            watch.run(emit, lambda _s: None, lambda: interrupted[0])
    if not as_json:
        stderr_console().print("watch ended", style="dim")


@cli.command("logs")
@click.argument("pair")
@click.option(
    "--since",
    metavar="TIME",
    default=None,
    help="Only entries from TIME on: ISO 8601, 15m / 2h / 1d ago, today, yesterday, @UNIX.",
)
@JsonOpt
@profile_option
@pass_state
def logs_cmd(state: State, pair: str, since: str | None, as_json: bool) -> None:
    """Both nodes' keepalived journals, merged in time order, each line tagged with its node."""
    from labctl.ops import connect as connect_ops
    from labctl.ops import logs as logs_op

    prof = state.profile()
    nodes = prof.nodes(pair)
    start: float | None = None
    if since is not None:
        try:
            start = logs_op.parse_since(since, time.time)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--since'") from None
    connect = _node_connector(prof, deadline=prof.timeouts.connect)
    remotes: dict[str, Remote] = {}
    errors: dict[str, str] = {}
    try:
        for node in nodes:
            try:
                remotes[node.name] = connect(node)
            except LabctlError as exc:
                errors[node.name] = exc.message
        result = logs_op.read_logs(prof, pair, remotes, since=start)
    finally:
        connect_ops.close_all(remotes.values())
    errors.update(result.errors)
    width = max(len(n.name) for n in nodes)
    for line in result.lines:
        if as_json:
            click.echo(json.dumps(line.to_json()))
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line.at))
            click.echo(
                f"{stamp}.{int(line.at * 1e6) % 1000000:06d} {line.node:<{width}} {line.message}"
            )
    for name, why in errors.items():
        note(f"{name}: journal not read: {why}")
    if len(errors) == len(nodes):
        raise GuestUnreachable(f"no journal of pair {pair} could be read")
