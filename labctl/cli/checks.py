"""Checks and drills: verify, failover, doctor."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
)
from labctl.errors import (
    EXIT_UNREACHABLE,
    BackendUnavailable,
    ChecksFailed,
    GuestUnreachable,
    LabctlError,
)

if TYPE_CHECKING:
    # the operations (paramiko, pydantic, jinja2) are imported inside the commands
    from labctl.hypervisor import Hypervisor
    from labctl.ops import doctor as doctor_op
    from labctl.ops import drill as drill_op
    from labctl.ops import verify as verify_op
    from labctl.ops.verify import HostKey
    from labctl.profile import Node, Profile
    from labctl.remote import Remote

# labctl.ops.drill.Fault's values (tests/unit/test_startup.py keeps them equal)
FAULTS = ("stop", "crash", "freeze", "link", "partition", "health")

# ---------------------------------------------------------------------------
# Checks and drills (verify issue): verify, failover, doctor

EvidenceOpt = click.option(
    "--evidence",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Also write an evidence bundle (.tar.gz: journals, state dumps, addresses, configs, "
    "the result) per pair into DIR.",
)

# A drill replaces a lost connection only if the node answers within this long (unset
# timeouts.check): a frozen node must not stall the polling.
DRILL_RECONNECT_DEADLINE = 2.0


def _node_connector(prof: Profile, *, deadline: float) -> Callable[[Node], Remote]:
    """node -> open SSH connection (trusted host keys only), waiting at most ``deadline``."""
    from labctl.ops import connect as connect_ops

    store = connect_ops.host_key_store(prof)

    def open_node(node: Node) -> Remote:
        endpoint = connect_ops.endpoint_for(prof, node.name, node.address)
        remote: Remote = connect_ops.connect(
            endpoint,
            host_keys=store,
            deadline=deadline,
            attempt_timeout=min(prof.timeouts.connect, deadline),
            command_timeout=prof.timeouts.command,
        )
        return remote

    return open_node


def _check_connector(prof: Profile) -> Callable[[Node], Remote]:
    """The connections of one verify attempt: a node that does not answer within the check's
    login deadline is UNKNOWN (exit 5), and --wait retries the whole check."""
    from labctl.ops.verify import CheckDeadlines

    return _node_connector(prof, deadline=CheckDeadlines.of(prof).login)


def _vip_host_key(host: str, port: int, timeout: float) -> HostKey:
    """How the data path reads the host key answering on VIP:22 (replaced by unit tests)."""
    from labctl.ops.verify import ssh_host_key

    return ssh_host_key(host, port, timeout)


def _connect_nodes(prof: Profile, nodes: Sequence[Node]) -> dict[str, Remote]:
    """Open one connection per node, all or nothing (closing what opened on failure)."""
    from labctl.ops import connect as connect_ops

    connect = _node_connector(prof, deadline=prof.timeouts.connect)
    remotes: dict[str, Remote] = {}
    try:
        for node in nodes:
            remotes[node.name] = connect(node)
    except LabctlError:
        connect_ops.close_all(remotes.values())
        raise
    return remotes


def _hypervisor(prof: Profile) -> Hypervisor:
    return hypervisor_for(prof)


def _usable_hypervisor(prof: Profile) -> Hypervisor | None:
    """The backend when it works on this host (asked before any SSH), else None."""
    from labctl.ops.machines import usable_hypervisor

    try:
        return usable_hypervisor(_hypervisor(prof))
    except BackendUnavailable:
        return None


def _fail_checks(code: int, message: str, hint: str | None = None) -> None:
    if code == EXIT_UNREACHABLE:
        raise GuestUnreachable(message, hint=hint)
    if code != 0:
        raise ChecksFailed(message, hint=hint)


def _render_verify(report: verify_op.VerifyReport) -> None:
    rows = []
    for p in report.pairs:
        vip_cells = []
        for v in p.vips:
            answered = v.answered_by or f"no answer ({v.data_path_error})"
            vip_cells.append(f"{v.vip} -> {answered}")
        node_cells = []
        for n in p.nodes:
            if not n.reachable:
                blocked = n.machine_state not in (None, "running")
                what = (n.machine_state or "").upper() if blocked else "UNREACHABLE"
                node_cells.append(f"{n.node.name}: {what}")
                continue
            holds = "holds VIP" if any(n.holds(v.vip) for v in p.vips) else "-"
            node_cells.append(f"{n.node.name}: {n.vrrp_state or '?'} ({n.service or '?'}), {holds}")
        rows.append([p.pair, str(p.verdict), p.holder or "-", "; ".join(vip_cells), *node_cells])
    emit_table(["pair", "verdict", "holder", "data path", "primary", "standby"], rows)
    for p in report.pairs:
        for reason in p.reasons:
            click.echo(f"{p.pair}: {reason}")


@cli.command("verify")
@click.argument("pairs", nargs=-1, metavar="[PAIR]...")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="Retry until every pair is OK, for at most SECONDS (e.g. right after provisioning).",
)
@EvidenceOpt
@JsonOpt
@profile_option
@pass_state
def verify_cmd(
    state: State, pairs: tuple[str, ...], wait: float, evidence: Path | None, as_json: bool
) -> None:
    """Check that each pair's virtual IP is on exactly one node and answers as that node.

    Verdicts: OK, NO_HOLDER, SPLIT_BRAIN, MISMATCH, UNKNOWN. Exit 0 when every pair is OK,
    5 when a node could not be reached, 6 otherwise.
    """
    started = time.time()
    from labctl.ops import evidence as evidence_op
    from labctl.ops import verify as verify_op

    prof = state.profile()
    prof.check_pairs(pairs)
    if evidence is not None:
        evidence_op.prepare(evidence)
    connect = _check_connector(prof)
    report = verify_op.verify(
        prof,
        pairs,
        connect,
        wait=wait,
        host_key_reader=_vip_host_key,
        hypervisor=_usable_hypervisor(prof),
    )
    document = report.to_json()
    if evidence is not None:
        bundles = [
            _verify_evidence(prof, p.pair, document, evidence, started, connect)
            for p in report.pairs
        ]
        document = {**document, "evidence": [str(b) for b in bundles]}
    if as_json:
        emit_json(document)
    else:
        _render_verify(report)
    bad = [f"{p.pair} {p.verdict}" for p in report.pairs if not p.ok]
    _fail_checks(report.exit_code, f"not every pair is OK: {', '.join(bad)}")


def _verify_evidence(
    prof: Profile,
    pair: str,
    document: dict[str, object],
    directory: Path,
    started: float,
    connect: Callable[[Node], Remote],
) -> Path:
    """One pair's bundle; a node that cannot be reached is recorded in it, not fatal."""
    from labctl.ops import connect as connect_ops
    from labctl.ops import evidence as evidence_op

    remotes: dict[str, Remote] = {}
    try:
        for node in prof.nodes(pair):
            with contextlib.suppress(LabctlError):
                remotes[node.name] = connect(node)
        bundle = evidence_op.write_bundle(
            prof,
            pair,
            remotes,
            directory=directory,
            what="verify",
            document=document,
            started=started,
            now=time.time,
        )
    finally:
        connect_ops.close_all(remotes.values())
    note(f"evidence: {bundle}")
    return bundle


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _render_drill(report: drill_op.DrillReport) -> None:
    rows = []
    for t in report.trials:
        tl = t.timeline
        unreachable = max(tl.unreachable.values(), default=0.0)
        rows.append(
            [
                t.index,
                f"{t.faulted} -> {t.peer}",
                _fmt(tl.released) if tl.released is not None else "never",
                _fmt(tl.takeover),
                _fmt(t.theory),
                _fmt(t.error),
                _fmt(tl.gap),
                _fmt(tl.overlap),
                _fmt(unreachable) if unreachable else "-",
                _fmt(t.failback),
                _fmt(tl.resolution),
            ]
        )
    emit_table(
        [
            "trial",
            "holder -> peer",
            "no holder",
            "new holder",
            "theory",
            "error",
            "gap",
            "overlap",
            "unreachable",
            "failback",
            "resolution",
        ],
        rows,
        title=f"failover {report.pair} --fault {report.fault} "
        f"(seconds after injection; theory: {report.theory_kind})",
    )
    summary = report.summary()
    lines = []
    for key, stat in summary.items():
        if stat is not None:
            lines.append(f"{key}: min {stat.min:.3f}  median {stat.median:.3f}  max {stat.max:.3f}")
    if len(report.trials) > 1:
        for line in lines:
            click.echo(line)
    where = ", ".join(report.final_holders) or "no node"
    if report.ended_ok:
        click.echo(f"the pair ended with the VIP on {where}")


@cli.command("failover")
@click.argument("pair")
@click.option(
    "--fault",
    type=click.Choice(FAULTS),
    default="stop",
    show_default=True,
    help="What to break on the current holder.",
)
@click.option("--trials", type=click.IntRange(min=1), default=1, show_default=True)
@EvidenceOpt
@JsonOpt
@profile_option
@pass_state
def failover_cmd(
    state: State, pair: str, fault: str, trials: int, evidence: Path | None, as_json: bool
) -> None:
    """Break PAIR's VIP holder on purpose and time the standby's takeover.

    stop: graceful keepalived stop; crash: SIGKILL keepalived; freeze: pause the machine;
    link: cable out; partition: drop VRRP between the nodes; health: the check script fails.
    Exit 6 when a trial failed or the pair did not end with the VIP on exactly one node.
    """
    started = time.time()
    from labctl.hypervisor import require
    from labctl.ops import connect as connect_ops
    from labctl.ops import drill as drill_op
    from labctl.ops import evidence as evidence_op
    from labctl.ops import faults
    from labctl.ops.machines import survey

    prof = state.profile()
    nodes = prof.nodes(pair)
    kind = drill_op.Fault(fault)
    if evidence is not None:
        evidence_op.prepare(evidence)
    hypervisor: Hypervisor | None = None
    try:
        hypervisor = _hypervisor(prof)
        hypervisor.check()
    except BackendUnavailable:
        if kind in (drill_op.Fault.FREEZE, drill_op.Fault.LINK):
            raise
        hypervisor = None
    # freeze and link act from outside the machine: refuse before connecting (ssh backend)
    require(hypervisor, kind.value)
    journal = faults.journal_for(prof)
    if journal.pending():
        # a drill killed earlier left its fault in place: undo it before breaking anything
        connect_once = _node_connector(prof, deadline=prof.timeouts.connect)
        for line in faults.recover_all(prof, hypervisor, connect_once):
            note(line)
    conditions = survey(prof, hypervisor, [n.name for n in nodes])
    for node in nodes:
        cond = conditions[node.name]
        if cond.blocked:
            raise GuestUnreachable(f"{node.name} {cond.reason}", hint=cond.fix)
    if not state.debug:
        import logging

        # a frozen or unplugged node makes paramiko log about its channels: expected here
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    remotes = _connect_nodes(prof, nodes)
    by_name = {n.name: n for n in nodes}
    reopen = _node_connector(prof, deadline=prof.timeouts.check or DRILL_RECONNECT_DEADLINE)
    interval, inflight = drill_op.poll_plan(prof.pair(pair).advert_int)
    try:
        drill = drill_op.Drill(
            prof,
            pair,
            kind,
            remotes,
            hypervisor,
            poll_interval=interval,
            max_inflight=inflight,
            progress=note,
            reconnect=lambda name: reopen(by_name[name]),
            journal=journal,
        )
        report = drill.run(trials)
        document = report.to_json()
        if evidence is not None:
            bundle = evidence_op.write_bundle(
                prof,
                pair,
                remotes,
                directory=evidence,
                what=str(kind),
                document=document,
                started=started,
                now=time.time,
            )
            note(f"evidence: {bundle}")
            document = {**document, "evidence": str(bundle)}
    finally:
        connect_ops.close_all(remotes.values())
    if as_json:
        emit_json(document)
    else:
        _render_drill(report)
    problems = report.all_problems()
    _fail_checks(report.exit_code, "; ".join(problems) or "the drill failed")


def _render_doctor(report: doctor_op.DoctorReport) -> None:
    rows = [[c.status, c.subject, c.check, c.detail, c.fix or ""] for c in report.checks]
    emit_table(["status", "subject", "check", "detail", "fix"], rows)
    counts = report.counts()
    click.echo(f"{counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL")


@cli.command("doctor")
@JsonOpt
@profile_option
@pass_state
def doctor_cmd(state: State, as_json: bool) -> None:
    """Pre-flight checks, each OK/WARN/FAIL with a fix. Exit 6 when any check FAILs.

    An invalid profile is reported like `labctl profile check` (exit 3): nothing else can
    be checked without it.
    """
    from labctl.ops import doctor as doctor_op

    prof = state.profile(check_env=True)
    connect = _node_connector(prof, deadline=prof.timeouts.connect)
    report = doctor_op.doctor(prof, connect, lambda: _hypervisor(prof))
    if as_json:
        emit_json(report.to_json())
    else:
        _render_doctor(report)
    failed = [f"{c.subject} {c.check}" for c in report.checks if c.status == "FAIL"]
    _fail_checks(report.exit_code, f"{len(failed)} check(s) failed: {', '.join(failed)}")


# (end of checks section)
