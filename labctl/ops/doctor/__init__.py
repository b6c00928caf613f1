"""`labctl doctor`: checks before anything breaks, each an OK/WARN/FAIL line with a fix.

What is checked, and how:

* backend: the profile's hypervisor backend loads and ``check()`` passes.
* per machine, from the hypervisor first: a machine that is absent, stopped, paused or has its
  cable out FAILs at once with the command that fixes it, and is not tried over SSH.
* profile: it loaded and validated (the CLI reports an invalid profile before this runs).
* per machine, over SSH (one command each): reachable with a trusted host key (the connect
  helper refuses unknown-changed keys); keepalived installed and its version (2.2.7's config
  test is unreliable: WARN); the script user exists (FAIL when keepalived is already configured
  without it: keepalived then silently drops the check); the VRRP interface exists and carries
  the machine's address; VirtualBox only: the lab NIC is not attached to NAT (VRRP does not
  cross it) and Guest Additions run (the freeze/link drills and exec side channel need them).
* per pair: the check script and every directory above it root-owned and not group/world
  writable; each VIP inside the interface's subnet; the VIP not answered by anything before the
  pair is up (or only by the node holding it), found by an ARP probe from a node that does not
  hold it (bash's /dev/tcp triggers the ARP request; ``ip neigh`` shows who answered); the VRID
  not used by anyone else on the segment, by listening for VRRP adverts for a few seconds on a
  node with a raw socket; the installed configs of both nodes agree on VRID, VIPs, advert_int,
  version and authentication (a mismatch is a lasting split brain), and match the profile;
  each node hears the adverts its reachable peer sends (both listen at once; a peer that sends
  while the other hears nothing means the network drops VRRP: use unicast; see
  ops/doctor_adverts.py).

The listener is a few lines of Perl run with the guest's ``perl`` (Debian's perl-base is
Essential: present even on minbase guests, which have no tcpdump or python). Running it on a
node works for every backend, because the node is on the segment by definition; listening on
the host would only work where the host is on the lab segment (nspawn).

JSON shape (``labctl doctor --json``), stable; keys are never removed, only added::

    {"ok": false, "exit_code": 6,
     "counts": {"OK": 12, "WARN": 2, "FAIL": 1},
     "checks": [{"subject": "prod-back",      # lab | machine name | pairs.NAME
                 "check": "script user",
                 "status": "FAIL",             # OK | WARN | FAIL
                 "detail": "keepalived_script does not exist ...",
                 "fix": "labctl provision pair back"}]}   # null when nothing to do
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from labctl.hypervisor import Hypervisor
from labctl.ops.doctor import backend
from labctl.ops.doctor.machine import BUGGY_VERSIONS, MachineChecks, MachineFacts, parse_facts
from labctl.ops.doctor.pair import (
    LISTEN_SECONDS,
    LISTENER,
    Advert,
    ConfFacts,
    PairChecks,
    arp_probe_script,
    conf_facts,
    parse_adverts,
    parse_neigh,
)
from labctl.ops.doctor.report import Check, DoctorReport, Status
from labctl.ops.machines import Condition, survey
from labctl.ops.verify import UNREACHABLE_ERRORS
from labctl.profile import Node, Profile
from labctl.remote import Remote

__all__ = [
    "BUGGY_VERSIONS",
    "LISTENER",
    "LISTEN_SECONDS",
    "Advert",
    "Check",
    "ConfFacts",
    "Doctor",
    "DoctorReport",
    "MachineFacts",
    "Status",
    "arp_probe_script",
    "conf_facts",
    "doctor",
    "parse_adverts",
    "parse_facts",
    "parse_neigh",
]


@dataclass
class Doctor:
    """Runs every check. Args: profile, connect (node -> Remote, raises when unreachable),
    hypervisor (a zero-argument factory; it may raise BackendUnavailable)."""

    profile: Profile
    connect: Callable[[Node], Remote]
    hypervisor: Callable[[], Hypervisor]
    listen_seconds: int = LISTEN_SECONDS
    command_timeout: float = 30.0
    checks: list[Check] = field(default_factory=list)

    def add(
        self, subject: str, check: str, status: Status, detail: str, fix: str | None = None
    ) -> None:
        self.checks.append(Check(subject, check, status, detail, fix))

    def run(self) -> DoctorReport:
        hv, backend_checks = backend.check(self.hypervisor)
        self.checks.extend(backend_checks)
        self.add(
            "lab",
            "profile",
            Status.OK,
            f"{self.profile.path}: {len(self.profile.machines)} machines, "
            f"{len(self.profile.pairs)} pairs",
        )
        machines = self._machines()
        conditions = survey(self.profile, hv, machines)
        for name, cond in conditions.items():
            if cond.blocked:
                # the hypervisor already says it cannot answer: no SSH attempt, no timeout
                self.add(name, "machine", Status.FAIL, cond.reason or str(cond), cond.fix)
                machines.pop(name)
            elif cond.condition is Condition.RUNNING:
                self.add(name, "machine", Status.OK, "running, cable connected")
        machine_checks = MachineChecks(self.profile, self.connect, self.command_timeout)
        pair_checks = PairChecks(self.profile, self.listen_seconds, self.command_timeout)
        with ThreadPoolExecutor(
            max_workers=max(1, len(machines)), thread_name_prefix="doctor"
        ) as pool:
            answers = pool.map(machine_checks.gather, machines.values())
            gathered = dict(zip(machines, answers, strict=True))
        facts: dict[str, MachineFacts] = {}
        remotes: dict[str, Remote] = {}
        try:
            for name, (remote, got, error) in gathered.items():
                if remote is None or got is None:
                    self.add(
                        name,
                        "ssh",
                        Status.FAIL,
                        f"not reachable: {error}",
                        "start it (labctl up / labctl clone) and check its host key",
                    )
                    continue
                remotes[name], facts[name] = remote, got
                self.add(name, "ssh", Status.OK, "reachable, host key trusted")
                machine_checks.machine_checks(machines[name], got, hv)
            self.checks.extend(machine_checks.checks)
            with ThreadPoolExecutor(
                max_workers=max(1, len(self.profile.pairs)), thread_name_prefix="doctor-pair"
            ) as pool:
                found_per_pair = list(
                    pool.map(lambda p: pair_checks.checks(p, facts, remotes), self.profile.pairs)
                )
            for found in found_per_pair:
                self.checks.extend(found)
        finally:
            for remote in remotes.values():
                with contextlib.suppress(*UNREACHABLE_ERRORS):
                    remote.close()
        return DoctorReport(tuple(self.checks))

    # -- machines ------------------------------------------------------------

    def _machines(self) -> dict[str, Node]:
        found: dict[str, Node] = {}
        for pair in self.profile.pairs:
            for node in self.profile.nodes(pair):
                found.setdefault(node.name, node)
        for name, spec in self.profile.machines.items():
            found.setdefault(name, Node("", name, spec.address, "primary"))
        return found


def doctor(
    profile: Profile,
    connect: Callable[[Node], Remote],
    hypervisor: Callable[[], Hypervisor],
    *,
    listen_seconds: int = LISTEN_SECONDS,
) -> DoctorReport:
    """Run every check; never raises for what it finds (that is the report)."""
    return Doctor(profile, connect, hypervisor, listen_seconds=listen_seconds).run()

