"""The labctl command line: load the profile, call an operation, render its result.

This is the only module that prints or chooses an exit code. Errors are translated in one
place, ``main()``: LabctlError -> ``error: ...`` / ``hint: ...`` on stderr and its exit code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from labctl import __version__
from labctl import keepalived as ka
from labctl import profile as profile_mod
from labctl.errors import (
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    BackendUnavailable,
    ChecksFailed,
    GuestUnreachable,
    LabctlError,
)
from labctl.hypervisor import Hypervisor
from labctl.ops import connect as connect_ops
from labctl.ops import doctor as doctor_op
from labctl.ops import drill as drill_op
from labctl.ops import verify as verify_op
from labctl.profile import Node, Profile
from labctl.remote import Remote

if TYPE_CHECKING:
    from labctl.ops.provision import ProvisionReport

JsonOpt = click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")


@dataclass
class State:
    """Per-invocation settings shared by every command."""

    profile_ref: str | None = None
    debug: bool = False
    _profile: Profile | None = field(default=None, repr=False)

    def profile(self, *, check_env: bool = False) -> Profile:
        if self._profile is None:
            self._profile = profile_mod.load(self.profile_ref, check_env=check_env)
        return self._profile


pass_state = click.make_pass_decorator(State, ensure=True)


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
    return Console(highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=False, default=str))


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A rich table on a terminal, aligned plain text otherwise (pipes, CI, NO_COLOR logs)."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    if sys.stdout.isatty():
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


# ---------------------------------------------------------------------------
# Lab lifecycle and clone (nspawn issue): lab image, up, down, status, destroy, clone


def _lab_hypervisor(prof: Profile) -> Any:
    from labctl.hypervisor import get_hypervisor

    return get_hypervisor(prof)


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
    """Create missing production machines, start them, wait until SSH answers."""
    from labctl.ops import lab as lab_ops

    prof = state.profile()
    result = lab_ops.up(prof, _lab_hypervisor(prof), machines, progress=note)
    _status_rows(result.machines)


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
    """Every machine of the lab: role, state (absent/stopped/running/paused), address.

    --json: {"lab": NAME, "backend": NAME, "machines": [{"machine", "role", "state",
    "address", "managed"}]}.
    """
    from labctl.ops import lab as lab_ops

    prof = state.profile()
    rows = lab_ops.status(prof, _lab_hypervisor(prof))
    if as_json:
        emit_json(
            {
                "lab": prof.lab.name,
                "backend": prof.lab.backend,
                "machines": [r.to_json() for r in rows],
            }
        )
    else:
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
@click.argument("production")
@click.option("--linked/--full", default=False, help="Linked clone (overlay) or full copy.")
@click.option("--force", is_flag=True, help="Recreate the standby if it exists.")
@profile_option
@JsonOpt
@pass_state
def lab_clone(state: State, production: str, linked: bool, force: bool, as_json: bool) -> None:
    """Create PRODUCTION's standby with its own identity and boot it (production keeps running).

    --json: {"pair", "production", "standby", "address", "linked", "created", "message"}.
    """
    from labctl.ops import clone as clone_ops

    prof = state.profile()
    result = clone_ops.clone(prof, _lab_hypervisor(prof), production, linked=linked, force=force)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(result.message)


# (end of lab lifecycle section)


# ---------------------------------------------------------------------------
# Provisioning (provision issue): provision pair


class _NoteHandler(logging.Handler):
    """labctl.* log records as plain lines on whatever stderr is now."""

    def emit(self, record: logging.LogRecord) -> None:
        note(self.format(record))


class _ProgressOnStderr:
    """Show progress and waiting (labctl.* INFO logs) on stderr while a command runs."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("labctl")
        self.handler, self.level = _NoteHandler(), self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


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

    from labctl.ops.provision import ProvisionFailed, provision

    prof = state.profile(check_env=True)
    spinner = stderr_console().status("provisioning") if sys.stderr.isatty() else nullcontext()
    with spinner, _ProgressOnStderr():
        report = provision(prof, list(pairs), dry_run=dry_run)
    # trust-on-first-use notices were logged to stderr as they happened (and are in --json)
    secrets = prof.secrets()
    if as_json:
        click.echo(ka.mask(json.dumps(report.to_json(), indent=2), secrets))
    else:
        _render_provision(report, secrets)
    if not report.ok:
        raise ProvisionFailed(report)


def _render_provision(report: ProvisionReport, secrets: list[str]) -> None:
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
                [pair.pair, node.node, node.role, node.status,
                 "-" if report.dry_run else node.service, ka.mask(detail, secrets) or "-"]
            )
    headers = ["pair", "node", "role", "status", "keepalived", "would do" if report.dry_run
               else "error"]
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


# ---------------------------------------------------------------------------
# Checks and drills (verify issue): verify, failover, doctor

# A verify attempt gives an unreachable node only this long: it is then UNKNOWN (exit 5);
# --wait retries the whole check.
VERIFY_CONNECT_DEADLINE = 3.0


def _node_connector(prof: Profile, *, deadline: float) -> Callable[[Node], Remote]:
    """node -> open SSH connection (trusted host keys only), waiting at most ``deadline``."""
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


# how the data path reads the host key answering on VIP:22 (replaced by unit tests)
_vip_host_key = verify_op.ssh_host_key


def _connect_nodes(prof: Profile, nodes: Sequence[Node]) -> dict[str, Remote]:
    """Open one connection per node, all or nothing (closing what opened on failure)."""
    connect = _node_connector(prof, deadline=prof.timeouts.connect)
    remotes: dict[str, Remote] = {}
    try:
        for node in nodes:
            remotes[node.name] = connect(node)
    except LabctlError:
        _close_all(remotes.values())
        raise
    return remotes


def _close_all(remotes: Iterable[Remote]) -> None:
    for remote in remotes:
        with contextlib.suppress(*verify_op.UNREACHABLE_ERRORS):
            remote.close()


def _hypervisor(prof: Profile) -> Hypervisor:
    from labctl.hypervisor import get_hypervisor

    return get_hypervisor(prof)


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
                node_cells.append(f"{n.node.name}: UNREACHABLE")
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
@JsonOpt
@profile_option
@pass_state
def verify_cmd(state: State, pairs: tuple[str, ...], wait: float, as_json: bool) -> None:
    """Check that each pair's virtual IP is on exactly one node and answers as that node.

    Verdicts: OK, NO_HOLDER, SPLIT_BRAIN, MISMATCH, UNKNOWN. Exit 0 when every pair is OK,
    5 when a node could not be reached, 6 otherwise.
    """
    prof = state.profile()
    connect = _node_connector(prof, deadline=VERIFY_CONNECT_DEADLINE)
    report = verify_op.verify(prof, pairs, connect, wait=wait, host_key_reader=_vip_host_key)
    if as_json:
        emit_json(report.to_json())
    else:
        _render_verify(report)
    bad = [f"{p.pair} {p.verdict}" for p in report.pairs if not p.ok]
    _fail_checks(report.exit_code, f"not every pair is OK: {', '.join(bad)}")


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
    type=click.Choice([f.value for f in drill_op.Fault]),
    default=drill_op.Fault.STOP.value,
    show_default=True,
    help="What to break on the current holder.",
)
@click.option("--trials", type=click.IntRange(min=1), default=1, show_default=True)
@JsonOpt
@profile_option
@pass_state
def failover_cmd(state: State, pair: str, fault: str, trials: int, as_json: bool) -> None:
    """Break PAIR's VIP holder on purpose and time the standby's takeover.

    stop: graceful keepalived stop; crash: SIGKILL keepalived; freeze: pause the machine;
    link: cable out; partition: drop VRRP between the nodes; health: the check script fails.
    Exit 6 when a trial failed or the pair did not end with the VIP on exactly one node.
    """
    prof = state.profile()
    nodes = prof.nodes(pair)
    kind = drill_op.Fault(fault)
    hypervisor: Hypervisor | None = None
    try:
        hypervisor = _hypervisor(prof)
        hypervisor.check()
    except BackendUnavailable:
        if kind in (drill_op.Fault.FREEZE, drill_op.Fault.LINK):
            raise
        hypervisor = None
    if not state.debug:
        # a frozen or unplugged node makes paramiko log about its channels: expected here
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    remotes = _connect_nodes(prof, nodes)
    by_name = {n.name: n for n in nodes}
    reopen = _node_connector(prof, deadline=2.0)
    try:
        drill = drill_op.Drill(
            prof,
            pair,
            kind,
            remotes,
            hypervisor,
            progress=note,
            reconnect=lambda name: reopen(by_name[name]),
        )
        report = drill.run(trials)
    finally:
        _close_all(remotes.values())
    if as_json:
        emit_json(report.to_json())
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
