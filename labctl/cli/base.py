"""The click group, shared options and output helpers, and the one error-translation point.

Commands live beside this module (lab, provision, checks) and register on ``cli``. The CLI
package is the only place that prints or chooses an exit code: ``run()`` turns LabctlError
into ``error: ...`` / ``hint: ...`` on stderr and its exit code.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from labctl import __version__
from labctl.errors import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    LabctlError,
)

if TYPE_CHECKING:
    # imported where used: `labctl --version` / `--help` load neither pydantic, jinja2,
    # paramiko nor rich (see tests/unit/test_startup.py)
    from rich.console import Console

    from labctl.hypervisor import Hypervisor
    from labctl.profile import Profile

JsonOpt = click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")


@dataclass
class State:
    """Per-invocation settings shared by every command."""

    profile_ref: str | None = None
    debug: bool = False
    _profile: Profile | None = field(default=None, repr=False)

    def profile(self, *, check_env: bool = False) -> Profile:
        if self._profile is None:
            from labctl import profile as profile_mod

            self._profile = profile_mod.load(self.profile_ref, check_env=check_env)
            _warn_about_pending_faults(self._profile)
        return self._profile


pass_state = click.make_pass_decorator(State, ensure=True)


def _warn_about_pending_faults(prof: Profile) -> None:
    """One line on stderr when a killed drill left a fault in the lab."""
    from labctl.ops.faults import notice

    line = notice(prof)
    if line is not None:
        click.echo(line, err=True)


def _set_profile(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(State).profile_ref = value


def profile_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-p/--profile`` accepted after the command too (``labctl verify -p local-lab``)."""
    return click.option(
        "-p",
        "--profile",
        metavar="NAME|PATH",
        expose_value=False,
        is_eager=True,
        callback=_set_profile,
        help="Lab profile: a name (profiles/NAME.toml) or a path.",
    )(f)


# ---------------------------------------------------------------------------
# Output: results on stdout, logs and progress on stderr


def stdout_console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(document: Any) -> None:
    import json

    click.echo(json.dumps(document, indent=2, sort_keys=False, default=str))


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A rich table on a terminal, aligned plain text otherwise (pipes, CI, NO_COLOR logs)."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich.table import Table

        table = Table(title=title or None)
        for h in headers:
            table.add_column(h)
        for row in cells:
            table.add_row(*row)
        stdout_console().print(table)
        return
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    if title:
        click.echo(title)
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def note(message: str) -> None:
    """A progress or log line, on stderr."""
    click.echo(message, err=True)


# ---------------------------------------------------------------------------
# The group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labctl")
@click.option(
    "-p",
    "--profile",
    "profile_ref",
    metavar="NAME|PATH",
    help="Lab profile: a name (profiles/NAME.toml) or a path. "
    "Default: $LABCTL_PROFILE, else ./labctl.toml.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, profile_ref: str | None, debug: bool) -> None:
    """labctl: clone, provision and verify a keepalived hot-standby lab."""
    ctx.obj = State(profile_ref=profile_ref, debug=debug)


@cli.group("profile")
def profile_group() -> None:
    """Check a lab profile or print its schema."""


@profile_group.command("check")
@profile_option
@JsonOpt
@pass_state
def profile_check(state: State, as_json: bool) -> None:
    """Validate the profile; list every problem with its key path (exit 3)."""
    prof = state.profile(check_env=True)
    summary = {
        "ok": True,
        "path": str(prof.path),
        "lab": prof.lab.name,
        "backend": prof.lab.backend,
        "machines": len(prof.machines),
        "pairs": list(prof.pairs),
    }
    if as_json:
        emit_json(summary)
    else:
        click.echo(
            f"profile OK: {prof.path} (lab {prof.lab.name}, backend {prof.lab.backend}, "
            f"{len(prof.machines)} machines, {len(prof.pairs)} pairs)"
        )


@profile_group.command("schema")
def profile_schema() -> None:
    """Print the JSON Schema of a profile (for editors)."""
    from labctl.profile import Profile

    emit_json(Profile.model_json_schema())


@cli.command("render")
@click.argument("pair")
@click.option(
    "--node",
    type=click.Choice(["primary", "standby"]),
    help="Only this node (default: both).",
)
@click.option("--show-secrets", is_flag=True, help="Print auth_pass instead of masking it.")
@profile_option
@pass_state
def render(state: State, pair: str, node: str | None, show_secrets: bool) -> None:
    """Print the exact keepalived.conf (and check script) each node of PAIR gets."""
    from labctl import keepalived as ka
    from labctl import profile as profile_mod

    prof = state.profile()
    roles: list[profile_mod.Role] = ["primary", "standby"]
    if node is not None:
        roles = ["primary"] if node == "primary" else ["standby"]
    if prof.pair(pair).interface is None:
        note(f"note: pairs.{pair}.interface is not set; provision detects it on each machine")
    for role in roles:
        rendered = ka.render_node(prof, pair, role, mask_secrets=not show_secrets)
        click.echo(f"# ---- {rendered.node.name} ({role}): {ka.CONF_PATH}")
        click.echo(rendered.conf, nl=False)
        if rendered.check is not None:
            click.echo(f"# ---- {rendered.node.name} ({role}): {rendered.check.path} (0755 root)")
            click.echo(rendered.check.content.decode("utf-8", "replace"), nl=False)


def hypervisor_for(prof: Profile) -> Hypervisor:
    """The profile's backend, loaded lazily (a missing one raises BackendUnavailable)."""
    from labctl.hypervisor import get_hypervisor

    return get_hypervisor(prof)


def usable_hypervisor_for(prof: Profile) -> Hypervisor | None:
    """The backend when it loads and works on this host, else None: commands that ask the
    hypervisor before SSH then rely on SSH alone."""
    from labctl.ops.machines import usable_hypervisor

    try:
        return usable_hypervisor(hypervisor_for(prof))
    except LabctlError:
        return None


# ---------------------------------------------------------------------------
# Entry point: the one place errors become output and exit codes


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("LABCTL_DEBUG") == "1"


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    code = run(args)
    sys.exit(code)


def run(args: list[str], *, invoke: Callable[..., Any] | None = None) -> int:
    """Run the CLI and return the exit code (main() exits with it)."""
    try:
        code = (invoke or cli.main)(args=args, prog_name="labctl", standalone_mode=False)
    except LabctlError as exc:
        if _debug_requested(args):
            traceback.print_exc()
        lines = exc.lines()
        click.echo(f"error: {lines[0]}", err=True)
        for line in lines[1:]:
            click.echo(f"error: {line}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except (KeyboardInterrupt, click.Abort):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    # standalone_mode=False returns the exit code of --help/--version (and ctx.exit) as an int
    return code if isinstance(code, int) else 0
