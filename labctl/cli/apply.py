"""`labctl apply`: the whole lab (or some pairs) from the profile in one command."""

from __future__ import annotations

import json

import click

from labctl.cli import checks
from labctl.cli.base import (
    JsonOpt,
    State,
    cli,
    emit_table,
    hypervisor_for,
    pass_state,
    profile_option,
)
from labctl.cli.provision import _ProgressOnStderr
from labctl.errors import EXIT_FAILED, OperationFailed


@cli.command("apply")
@click.argument("pairs", nargs=-1, metavar="[PAIR]...")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long verify waits for every pair to be OK.",
)
@JsonOpt
@profile_option
@pass_state
def apply_cmd(state: State, pairs: tuple[str, ...], wait: float, as_json: bool) -> None:
    """Make the lab match the profile: up, clone missing standbys, provision, verify --wait.

    Idempotent: a second run changes nothing and says so. One summary per pair; the exit code
    is verify's (0 OK, 5 a node unreachable, 6 checks failed).
    """
    from labctl import keepalived as ka
    from labctl.ops import apply as apply_ops

    prof = state.profile(check_env=True)
    prof.check_pairs(pairs)
    hv = hypervisor_for(prof)
    connect = checks._check_connector(prof)
    from labctl.cli.progress import machine_lines

    lines = machine_lines([n for n, _a, _r in prof.all_nodes()], quiet=as_json)
    with lines as progress, _ProgressOnStderr(progress):
        report = apply_ops.apply(
            prof,
            hv,
            pairs,
            connect=connect,
            host_key_reader=checks._vip_host_key,
            wait=wait,
            progress=progress,
        )
    if as_json:
        click.echo(ka.mask(json.dumps(report.to_json(), indent=2, default=str), prof.secrets()))
    else:
        emit_table(
            ["pair", "standby", "keepalived", "verdict", "holder"],
            [
                [
                    p.pair,
                    f"{p.standby} ({'created' if p.standby_created else 'kept'})",
                    p.keepalived,
                    p.verdict,
                    p.holder or "-",
                ]
                for p in report.pairs
            ],
        )
        for p in report.verify.pairs:
            for reason in p.reasons:
                click.echo(f"{p.pair}: {reason}")
        for prov in report.provision.pairs:
            if not prov.ok:
                problems = ka.mask(prov.problems, prof.secrets())
                click.echo(f"{prov.pair}: provisioning failed: {problems}")
        if report.ok and not report.changed:
            click.echo("nothing to change: the lab already matches the profile")
        else:
            click.echo(f"applied in {report.elapsed:.1f}s")
    if report.exit_code == EXIT_FAILED:
        raise OperationFailed(f"provisioning failed for: {', '.join(report.provision.failed)}")
    bad = [f"{p.pair} {p.verdict}" for p in report.verify.pairs if not p.ok]
    checks._fail_checks(report.exit_code, f"not every pair is OK: {', '.join(bad)}")
