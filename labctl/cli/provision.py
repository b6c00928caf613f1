"""`labctl provision pair`."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from labctl.cli.base import (
    JsonOpt,
    State,
    cli,
    emit_table,
    note,
    pass_state,
    profile_option,
    stderr_console,
    usable_hypervisor_for,
)

if TYPE_CHECKING:
    from labctl.hypervisor import Hypervisor
    from labctl.ops.provision import ProvisionReport
    from labctl.profile import Profile


# ---------------------------------------------------------------------------
# Provisioning (provision issue): provision pair


class _NoteHandler(logging.Handler):
    """labctl.* log records as plain lines on whatever stderr is now (or to ``sink``)."""

    def __init__(self, sink: Callable[[str], None] = note) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink(self.format(record))


class _ProgressOnStderr:
    """Show progress and waiting (labctl.* INFO logs) on stderr while a command runs."""

    def __init__(self, sink: Callable[[str], None] = note) -> None:
        self.sink = sink

    def __enter__(self) -> None:
        self.logger = logging.getLogger("labctl")
        self.handler, self.level = _NoteHandler(self.sink), self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def _hypervisor(prof: Profile) -> Hypervisor | None:
    """Asked about each node before SSH (replaced by unit tests)."""
    return usable_hypervisor_for(prof)


@cli.group("provision")
def provision_group() -> None:
    """Install and configure keepalived on the lab's machines over SSH."""


@provision_group.command("pair")
@click.argument("pairs", nargs=-1, metavar="[PAIR]...")
@click.option("--dry-run", is_flag=True, help="Print a diff per node of what would change.")
@JsonOpt
@profile_option
@pass_state
def provision_pair(state: State, pairs: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Provision keepalived on both nodes of each PAIR (default: every pair).

    Installs keepalived, pushes the check script and a validated keepalived.conf, starts it
    (primary first) or reloads it; a node that is already right is not touched.
    """
    from contextlib import nullcontext

    from labctl import keepalived as ka
    from labctl.ops.provision import ProvisionFailed, provision

    prof = state.profile(check_env=True)
    prof.check_pairs(pairs)
    spinner = stderr_console().status("provisioning") if sys.stderr.isatty() else nullcontext()
    with spinner, _ProgressOnStderr():
        report = provision(prof, list(pairs), dry_run=dry_run, hypervisor=_hypervisor(prof))
    # trust-on-first-use notices were logged to stderr as they happened (and are in --json)
    secrets = prof.secrets()
    if as_json:
        click.echo(ka.mask(json.dumps(report.to_json(), indent=2), secrets))
    else:
        _render_provision(report, secrets)
    if not report.ok:
        raise ProvisionFailed(report)


def _render_provision(report: ProvisionReport, secrets: list[str]) -> None:
    from labctl import keepalived as ka

    if report.dry_run:
        for pair in report.pairs:
            for node in pair.nodes:
                if node.diff:
                    click.echo(ka.mask(node.diff, secrets), nl=False)
    rows = []
    for pair in report.pairs:
        for node in pair.nodes:
            detail = ", ".join(node.planned) if report.dry_run else (node.error or "")
            rows.append(
                [
                    pair.pair,
                    node.node,
                    node.role,
                    node.status,
                    "-" if report.dry_run else node.service,
                    ka.mask(detail, secrets) or "-",
                ]
            )
    headers = [
        "pair",
        "node",
        "role",
        "status",
        "keepalived",
        "would do" if report.dry_run else "error",
    ]
    emit_table(headers, rows, title="dry run: nothing was changed" if report.dry_run else "")
    if report.dry_run:
        return
    for pair in report.pairs:
        state = "active on both nodes" if pair.active_on_both else "NOT active on both nodes"
        line = f"pair {pair.pair}: keepalived {state}"
        if pair.error:
            line += f" ({ka.mask(pair.error, secrets)})"
        click.echo(line)


# (end of provisioning section)
