"""Lab lifecycle and clone: lab image, up, down, status, destroy, clone."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from labctl.cli.base import (
    JsonOpt,
    State,
    cli,
    emit_json,
    emit_table,
    hypervisor_for,
    note,
    pass_state,
    profile_option,
    usable_hypervisor_for,
)

if TYPE_CHECKING:
    from labctl.profile import Profile

# ---------------------------------------------------------------------------
# Lab lifecycle and clone (nspawn issue): lab image, up, down, status, destroy, clone


def _lab_hypervisor(prof: Profile) -> Any:
    return hypervisor_for(prof)


@cli.group("lab")
def lab_group() -> None:
    """The local nspawn lab's base image."""


@lab_group.command("image")
@click.option("--rebuild", is_flag=True, help="Build again even if the image is current.")
@profile_option
@pass_state
def lab_image(state: State, rebuild: bool) -> None:
    """Build the Debian base image for nspawn machines (once; progress on stderr)."""
    from labctl.errors import OperationFailed
    from labctl.ops import lab as lab_ops

    prof = state.profile()
    if prof.lab.backend != "nspawn":
        raise OperationFailed(f"lab.backend is {prof.lab.backend!r}; images are for nspawn labs")
    _lab_hypervisor(prof).check()
    build = lab_ops.build_image(prof, rebuild=rebuild, progress=note)
    how = f"built in {build.seconds:.0f}s" if build.built else "already built; --rebuild rebuilds"
    click.echo(f"image {build.image.suite}: {build.image.path} ({how})")


def _status_rows(rows: Sequence[Any]) -> None:
    emit_table(
        ["machine", "role", "state", "address"],
        [(r.machine, r.role, r.state, r.address) for r in rows],
    )


@cli.command("up")
@click.argument("machines", nargs=-1, metavar="[MACHINE]...")
@profile_option
@pass_state
def lab_up(state: State, machines: tuple[str, ...]) -> None:
    """Create missing production machines; start every machine of the lab (standbys too),
    resume paused ones, reconnect unplugged cables; wait until SSH answers on each."""
    from labctl.ops import lab as lab_ops

    prof = state.profile()
    prof.check_machines(machines)
    from labctl.cli.progress import machine_lines

    hv = _lab_hypervisor(prof)
    with machine_lines([n for n, _a, _r in prof.all_nodes()]) as progress:
        result = lab_ops.up(prof, hv, machines, progress=progress)
    healed = _heal(prof, hv)
    _status_rows(result.machines)
    for line in healed:
        click.echo(line)
    if not result.changed and not healed:
        click.echo("every machine was already up; nothing changed")


def _heal(prof: Profile, hv: Any) -> list[str]:
    """Undo the faults an interrupted drill left in place (machines are up by now)."""
    from labctl.cli.checks import _node_connector
    from labctl.ops import faults

    if not faults.journal_for(prof).pending():
        return []
    return faults.recover_all(prof, hv, _node_connector(prof, deadline=prof.timeouts.connect))


@cli.command("down")
@profile_option
@pass_state
def lab_down(state: State) -> None:
    """Shut down every machine of the lab (graceful; killed after 30 s)."""
    from labctl.ops import lab as lab_ops

    prof = state.profile()
    result = lab_ops.down(prof, _lab_hypervisor(prof))
    if not result.stopped and not result.killed:
        click.echo("nothing was running")
    for name in result.stopped:
        click.echo(f"{name}: stopped")
    for name in result.killed:
        click.echo(f"{name}: killed (did not shut down in time)")


@cli.command("status")
@profile_option
@JsonOpt
@pass_state
def lab_status(state: State, as_json: bool) -> None:
    """Every machine of the lab: role, state (absent/stopped/running/paused/unreachable), address.

    unreachable: the ssh backend sees no hypervisor, and the machine did not answer SSH.

    --json: {"lab": NAME, "backend": NAME, "machines": [{"machine", "role", "state",
    "address", "managed"}], "virtualbox": {"version", "driver", "why", "vms_can_start",
    "start_blocker"} (VirtualBox labs only)}.
    """
    from labctl.hypervisor import VirtualBoxDetails
    from labctl.ops import lab as lab_ops

    prof = state.profile()
    hv = _lab_hypervisor(prof)
    rows = lab_ops.status(prof, hv)
    host = hv.host_report() if isinstance(hv, VirtualBoxDetails) else None
    if as_json:
        doc: dict[str, object] = {
            "lab": prof.lab.name,
            "backend": prof.lab.backend,
            "machines": [r.to_json() for r in rows],
        }
        if host is not None:
            doc["virtualbox"] = host.to_json()
        emit_json(doc)
    else:
        if host is not None:
            click.echo(f"VirtualBox {host.version} via {host.driver} ({host.why})")
            if host.start_blocker is not None:
                click.echo(f"warning: {host.start_blocker}")
        _status_rows(rows)


@cli.command("destroy")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@profile_option
@pass_state
def lab_destroy(state: State, yes: bool) -> None:
    """Delete every machine labctl created for this lab, and the lab's network and keys."""
    from labctl.ops import lab as lab_ops

    prof = state.profile()
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("destroy deletes machines: pass --yes to confirm")
        click.confirm(f"Delete every machine labctl created for lab {prof.lab.name}?", abort=True)
    destroyed = lab_ops.destroy(prof, _lab_hypervisor(prof))
    click.echo(f"destroyed: {', '.join(destroyed)}" if destroyed else "nothing to destroy")


@cli.command("clone")
@click.argument("production", required=False)
@click.option("--all", "every", is_flag=True, help="Every pair's missing standby (the default).")
@click.option("--linked/--full", default=False, help="Linked clone (overlay) or full copy.")
@click.option("--force", is_flag=True, help="Recreate the standby if it exists.")
@profile_option
@JsonOpt
@pass_state
def lab_clone(
    state: State, production: str | None, every: bool, linked: bool, force: bool, as_json: bool
) -> None:
    """Create PRODUCTION's standby with its own identity and boot it (production keeps running).

    Without PRODUCTION (or with --all): every pair's missing standby, in parallel; existing
    ones are kept.

    --json: {"pair", "production", "standby", "address", "linked", "created", "message"};
    a list of those without PRODUCTION.
    """
    from labctl.ops import clone as clone_ops

    prof = state.profile()
    if production is not None and every:
        raise click.UsageError("give PRODUCTION or --all, not both")
    if production is None:
        if force:
            raise click.UsageError("--force needs PRODUCTION (it recreates one standby)")
        from labctl.cli.progress import machine_lines

        with machine_lines([n for n, _a, _r in prof.all_nodes()]) as progress:
            results = clone_ops.clone_missing(
                prof, _lab_hypervisor(prof), linked=linked, progress=None if as_json else progress
            )
        if as_json:
            emit_json([r.to_json() for r in results])
        else:
            for r in results:
                click.echo(r.message)
        return
    prof.pair_of_primary(production)
    result = clone_ops.clone(prof, _lab_hypervisor(prof), production, linked=linked, force=force)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(result.message)


@cli.command(
    "ssh",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("machine")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@profile_option
@pass_state
@click.pass_context
def lab_ssh(ctx: click.Context, state: State, machine: str, command: tuple[str, ...]) -> None:
    """A shell on MACHINE, or one COMMAND (after --), through OpenSSH with labctl's user, key
    and trusted host keys; exits with the command's status.

    Example: labctl ssh prod-back -- hostname
    """
    import subprocess

    from labctl.errors import GuestUnreachable
    from labctl.ops import shell
    from labctl.ops.machines import survey

    prof = state.profile()
    prof.check_machines([machine])
    args = list(command)
    if args[:1] == ["--"]:
        args = args[1:]
    cond = survey(prof, usable_hypervisor_for(prof), [machine])[machine]
    if cond.blocked:
        raise GuestUnreachable(f"{machine} {cond.reason}", hint=cond.fix)
    argv = shell.openssh_argv(prof, machine, args)
    ctx.exit(subprocess.call(argv))


# (end of lab lifecycle section)
