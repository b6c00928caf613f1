"""`labctl provision pair`: keepalived on both nodes of each pair, safely and idempotently.

Per pair: connect once to each node; prepare both nodes concurrently (package, script user,
check script, a candidate config validated on the machine); only when both are ready commit
both configs; then start or reload keepalived, primary first so a fresh standby never briefly
holds the VIP. A node whose config did not change is not touched. Pairs run concurrently and
one pair's failure does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from labctl.errors import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, GuestUnreachable, LabctlError
from labctl.hypervisor import Hypervisor
from labctl.ops.connect import close_all, connect_each, host_key_store
from labctl.ops.machines import survey
from labctl.ops.provision_node import NodeOutcome, NodeSetup, redact
from labctl.profile import Node, Profile
from labctl.remote import Remote

log = logging.getLogger(__name__)

Connector = Callable[[Profile, Sequence[Node]], dict[str, Remote | LabctlError]]


@dataclass
class NodeReport:
    """One node's result, as `labctl provision pair` shows it."""

    pair: str
    node: str
    role: str
    address: str
    interface: str | None
    installed: bool
    user_created: bool
    script_changed: bool
    config_changed: bool
    enabled: bool
    started: bool
    reloaded: bool
    active: bool
    pid: int
    planned: list[str]
    diff: str
    error: str | None
    error_code: int
    dry_run: bool = False

    @property
    def status(self) -> str:
        """What happened to this node, in one word.

        failed / installed / changed / unchanged; in a dry run would install / would change /
        unchanged.
        """
        if self.error:
            return "failed"
        if self.dry_run and self.planned:
            return "would install" if "install keepalived" in self.planned else "would change"
        if self.installed:
            return "installed"
        if self.config_changed or self.script_changed or self.user_created:
            return "changed"
        return "unchanged"

    @property
    def service(self) -> str:
        """started / reloaded / left running / inactive."""
        if self.started:
            return "started"
        if self.reloaded:
            return "reloaded"
        return "running" if self.active else "inactive"

    @classmethod
    def of(cls, outcome: NodeOutcome, *, dry_run: bool = False) -> NodeReport:
        node = outcome.node
        return cls(
            pair=node.pair,
            node=node.name,
            role=node.role,
            address=node.ip,
            interface=outcome.interface,
            installed=outcome.installed,
            user_created=outcome.user_created,
            script_changed=outcome.script_changed,
            config_changed=outcome.config_changed,
            enabled=outcome.enabled,
            started=outcome.started,
            reloaded=outcome.reloaded,
            active=outcome.active,
            pid=outcome.pid,
            planned=list(outcome.planned),
            diff=outcome.diff,
            error=outcome.error,
            error_code=outcome.error_code,
            dry_run=dry_run,
        )

    def to_json(self, *, dry_run: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "node": self.node,
            "role": self.role,
            "address": self.address,
            "interface": self.interface,
            "status": self.status,
            "installed": self.installed,
            "user_created": self.user_created,
            "script_changed": self.script_changed,
            "config_changed": self.config_changed,
            "enabled": self.enabled,
            "started": self.started,
            "reloaded": self.reloaded,
            "active": self.active,
            "error": self.error,
        }
        if dry_run:
            doc["would"] = self.planned
            doc["diff"] = self.diff
        return doc


@dataclass
class PairReport:
    """Both nodes of one pair (primary first) and the pair-level error, if any."""

    pair: str
    nodes: list[NodeReport]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(n.error is None for n in self.nodes)

    @property
    def active_on_both(self) -> bool:
        return len(self.nodes) == 2 and all(n.active for n in self.nodes)

    @property
    def exit_code(self) -> int:
        """0 when ok; 5 when every failure was a machine not answering; else 1."""
        if self.ok:
            return EXIT_OK
        codes = {n.error_code for n in self.nodes if n.error}
        return EXIT_UNREACHABLE if codes == {EXIT_UNREACHABLE} else EXIT_FAILED

    @property
    def problems(self) -> str:
        """What went wrong, in one line: the nodes' errors, then the pair's own note."""
        parts = [n.error for n in self.nodes if n.error and n.error not in (self.error or "")]
        return "; ".join([*parts, *([self.error] if self.error else [])])

    def to_json(self, *, dry_run: bool) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "ok": self.ok,
            "active_on_both": self.active_on_both,
            "error": self.error,
            "nodes": [n.to_json(dry_run=dry_run) for n in self.nodes],
        }


@dataclass
class ProvisionReport:
    """Every pair provisioned by one command."""

    pairs: list[PairReport]
    dry_run: bool = False
    notices: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pairs)

    @property
    def failed(self) -> list[str]:
        return [p.pair for p in self.pairs if not p.ok]

    @property
    def exit_code(self) -> int:
        codes = {p.exit_code for p in self.pairs} - {EXIT_OK}
        if not codes:
            return EXIT_OK
        return EXIT_UNREACHABLE if codes == {EXIT_UNREACHABLE} else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "pairs": [p.to_json(dry_run=self.dry_run) for p in self.pairs],
            "notices": self.notices,
        }


class ProvisionFailed(LabctlError):
    """Some pairs failed; one line per failed pair. Exit 5 when all that failed was reach."""

    def __init__(self, report: ProvisionReport) -> None:
        failed = [p for p in report.pairs if not p.ok]
        super().__init__(
            f"provisioning failed for pair(s): {', '.join(p.pair for p in failed)}",
            hint="fix the cause and run again: what is already right is left alone",
        )
        self.exit_code = report.exit_code
        self.details = [p.problems for p in failed]

    def lines(self) -> list[str]:
        return [self.message, *self.details]


def provision(
    profile: Profile,
    pair_names: Sequence[str] = (),
    *,
    dry_run: bool = False,
    connector: Connector | None = None,
    hypervisor: Hypervisor | None = None,
) -> ProvisionReport:
    """Provision the named pairs (all when none are named) and report per pair and node.

    With a (usable) ``hypervisor``, a node it reports absent, stopped, paused or unplugged
    fails its pair at once with what to run, and is not tried over SSH.

    Raises:
        UnknownName: an unknown pair name (before anything is contacted).
    """
    names = list(dict.fromkeys(pair_names)) or list(profile.pairs)
    pairs = {name: profile.nodes(name) for name in names}  # UnknownName for unknown names
    shared = _machines_in_several_pairs(pairs)
    store = host_key_store(profile)
    if connector is None:

        def connector(prof: Profile, nodes: Sequence[Node]) -> dict[str, Remote | LabctlError]:
            return connect_each(prof, nodes, host_keys=store)

    wanted = [n for name, nodes in pairs.items() if name not in shared for n in nodes]
    conditions = survey(profile, hypervisor, [n.name for n in wanted]) if hypervisor else {}
    blocked: dict[str, Remote | LabctlError] = {
        name: GuestUnreachable(f"{name} {cond.reason}", hint=cond.fix)
        for name, cond in conditions.items()
        if cond.blocked
    }
    wanted = [n for n in wanted if n.name not in blocked]
    remotes = (connector(profile, wanted) if wanted else {}) | blocked
    try:
        with ThreadPoolExecutor(max_workers=max(len(pairs), 1)) as pool:
            futures = [
                pool.submit(_provision_pair, profile, name, nodes, remotes, dry_run, shared)
                for name, nodes in pairs.items()
            ]
            reports = [f.result() for f in futures]
    finally:
        close_all(r for r in remotes.values() if not isinstance(r, LabctlError))
    return ProvisionReport(reports, dry_run=dry_run, notices=list(store.notices))


def _machines_in_several_pairs(pairs: dict[str, tuple[Node, Node]]) -> dict[str, str]:
    """Pairs that share a machine (one keepalived.conf per machine cannot serve both)."""
    owner: dict[str, str] = {}
    shared: dict[str, str] = {}
    for name, nodes in pairs.items():
        for node in nodes:
            if node.name in owner and owner[node.name] != name:
                message = (
                    f"{node.name} is in pairs {owner[node.name]} and {name}; labctl writes one "
                    "keepalived.conf per machine, so provision them separately"
                )
                shared[name] = shared[owner[node.name]] = message
            owner.setdefault(node.name, name)
    return shared


def _provision_pair(
    profile: Profile,
    name: str,
    nodes: tuple[Node, Node],
    remotes: dict[str, Remote | LabctlError],
    dry_run: bool,
    shared: dict[str, str],
) -> PairReport:
    secrets = profile.secrets()
    setups: list[NodeSetup] = []
    failed: list[NodeOutcome] = []
    for node in nodes:
        remote = remotes.get(node.name)
        if name in shared:
            failed.append(NodeOutcome(node, error=shared[name]))
        elif isinstance(remote, LabctlError):
            failed.append(
                NodeOutcome(
                    node, error=redact(remote.message, secrets), error_code=remote.exit_code
                )
            )
        elif remote is not None:
            setups.append(NodeSetup(profile, node, remote, dry_run=dry_run))

    def report(error: str | None = None) -> PairReport:
        by_name = {s.name: s.outcome for s in setups} | {o.node.name: o for o in failed}
        nodes_report = [NodeReport.of(by_name[n.name], dry_run=dry_run) for n in nodes]
        return PairReport(name, nodes_report, error)

    if failed:
        return report(f"{name}: not provisioned: " + "; ".join(str(o.error) for o in failed))

    def step(setup: NodeSetup, action: Callable[[], None]) -> bool:
        try:
            action()
            return True
        except LabctlError as exc:
            setup.outcome.error = redact(exc.message, secrets)
            setup.outcome.error_code = exc.exit_code
            log.info("%s: %s", setup.name, setup.outcome.error)
            return False

    # phase 1, both nodes at once: nothing here disturbs a running keepalived
    with ThreadPoolExecutor(max_workers=2) as pool:
        ready = list(pool.map(lambda s: step(s, s.prepare), setups))
    if dry_run:
        for setup in setups:  # plans enable/start/reload; runs nothing
            if setup.outcome.error is None and step(setup, setup.enable):
                step(setup, setup.activate)
        return report()
    if not all(ready):
        for setup in setups:
            step(setup, setup.discard)
        bad = [s.name for s, ok in zip(setups, ready, strict=True) if not ok]
        return report(f"{name}: {' and '.join(bad)} failed; no config was changed on either node")
    # phase 2: commit and enable both, then start/reload primary first (nodes are
    # (primary, standby))
    for setup in setups:
        if not step(setup, setup.commit):
            return report(f"{name}: could not put the new config in place on {setup.name}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        if not all(pool.map(lambda s: step(s, s.enable), setups)):
            return report()
    for setup in setups:
        if not step(setup, setup.activate):
            break
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda s: step(s, s.observe), setups))
    return report()
