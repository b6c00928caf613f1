"""What the hypervisor says about each machine, asked before any SSH.

A machine that does not exist, is stopped, paused or has its cable out cannot answer SSH; the
commands that talk to machines (verify, doctor, provision, failover) say so at once, with what
to run, instead of after a connection timeout.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labctl.errors import LabctlError
from labctl.hypervisor import Hypervisor, Machine, MachineState, PartialBackend
from labctl.profile import Profile


class Condition(enum.StrEnum):
    """A machine's condition as far as reaching it over SSH goes."""

    RUNNING = "running"
    ABSENT = "absent"
    STOPPED = "stopped"
    PAUSED = "paused"
    LINK_DOWN = "link down"
    UNKNOWN = "unknown"  # the hypervisor could not tell: try SSH


@dataclass(frozen=True)
class MachineCondition:
    """One machine's condition and, when it cannot answer, why and what to run."""

    name: str
    condition: Condition
    reason: str | None = None  # "not created: run `labctl clone prod-front`"
    fix: str | None = None  # "labctl clone prod-front"

    @property
    def blocked(self) -> bool:
        """True when the machine cannot answer SSH, so nothing should wait for it."""
        return self.condition not in (Condition.RUNNING, Condition.UNKNOWN)


def _creator(profile: Profile, name: str) -> str:
    for pair in profile.pairs.values():
        if pair.standby == name:
            return f"labctl clone {pair.primary}"
    return "labctl up"


def lab_link_up(profile: Profile, machine: Machine) -> bool | None:
    """The lab cable's state: the backend's link_up, else (VirtualBox) the lab NIC's cable."""
    if machine.link_up is not None:
        return machine.link_up
    if profile.lab.backend == "virtualbox":
        slot = profile.lab.virtualbox.nic
        for nic in machine.nics:
            if nic.slot == slot:
                return nic.cable
    return None


def judge(profile: Profile, machine: Machine) -> MachineCondition:
    """The condition of one machine from what the hypervisor reported."""
    name = machine.name
    if machine.state is MachineState.ABSENT:
        fix = _creator(profile, name)
        return MachineCondition(name, Condition.ABSENT, f"not created: run `{fix}`", fix)
    if machine.state is MachineState.STOPPED:
        return MachineCondition(name, Condition.STOPPED, "stopped: run `labctl up`", "labctl up")
    if machine.state not in (MachineState.RUNNING, MachineState.PAUSED):
        # e.g. the ssh backend's "unreachable": no hypervisor has seen it; SSH decides
        return MachineCondition(name, Condition.UNKNOWN)
    if machine.state is MachineState.PAUSED:
        return MachineCondition(
            name, Condition.PAUSED, "paused: run `labctl up` (resumes it)", "labctl up"
        )
    if lab_link_up(profile, machine) is False:
        return MachineCondition(
            name,
            Condition.LINK_DOWN,
            "link down (cable out): run `labctl up` (reconnects it)",
            "labctl up",
        )
    return MachineCondition(name, Condition.RUNNING)


def survey(
    profile: Profile, hv: Hypervisor | None, names: Iterable[str]
) -> dict[str, MachineCondition]:
    """Ask the hypervisor about every named machine (concurrently); UNKNOWN without one."""
    wanted = list(dict.fromkeys(names))
    if hv is None:
        return {n: MachineCondition(n, Condition.UNKNOWN) for n in wanted}

    def one(name: str) -> MachineCondition:
        try:
            return judge(profile, hv.inspect(name))
        except LabctlError:
            return MachineCondition(name, Condition.UNKNOWN)

    with ThreadPoolExecutor(max_workers=max(1, len(wanted)), thread_name_prefix="inspect") as pool:
        return dict(zip(wanted, pool.map(one, wanted), strict=True))


def usable_hypervisor(load: Hypervisor | None) -> Hypervisor | None:
    """``load`` when its backend works on this host, else None (then SSH decides alone)."""
    if load is None:
        return None
    if isinstance(load, PartialBackend) and load.unsupported("start") is not None:
        return None  # no hypervisor behind it (ssh backend): it can only ask SSH itself
    try:
        load.check()
    except LabctlError:
        return None
    return load
