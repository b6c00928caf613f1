"""A drill's fault is recorded in the lab before it is injected and cleared after recovery;
later commands say so, and `up` / the next `failover` undo it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from labctl.errors import LabctlError
from labctl.hypervisor import MachineState
from labctl.ops import faults
from labctl.ops.drill import Fault, FaultInjector
from labctl.profile import Node, Profile
from labctl.profile_load import parse
from labctl.remote import Remote
from tests.unit.checks_fakes import (
    PAIR_PROFILE_WITH_CHECK,
    FakeMachine,
    FakePartitioner,
    FakeRemote,
)

CHECK = "/etc/keepalived/check_heartbeat.sh"


@pytest.fixture
def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Profile:
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "home"))
    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    return parse(PAIR_PROFILE_WITH_CHECK, path=tmp_path / "lab.toml")


@pytest.fixture
def machines() -> dict[str, FakeMachine]:
    return {
        "prod-back": FakeMachine("prod-back", "10.249.90.10/24", files={CHECK: b"failing"}),
        "prod-back-standby": FakeMachine("prod-back-standby", "10.249.90.20/24"),
    }


def connector(machines: dict[str, FakeMachine]) -> Callable[[Node], Remote]:
    return lambda node: FakeRemote(machines[node.name])


@pytest.mark.parametrize("fault", list(Fault))
def test_the_fault_is_recorded_before_injection_and_cleared_after_recovery(
    profile: Profile, machines: dict[str, FakeMachine], fault: Fault
) -> None:
    journal = faults.journal_for(profile)
    seen: list[list[faults.PendingFault]] = []
    hv = FakePartitioner(on_call=lambda call: seen.append(journal.pending()))
    remotes = {n: FakeRemote(m) for n, m in machines.items()}
    for m in machines.values():
        m.on_command = lambda cmd: seen.append(journal.pending())
    injector = FaultInjector(profile, "back", fault, remotes, hv, journal=journal)
    injector.inject("prod-back", "prod-back-standby")
    assert seen, "the fault did nothing observable"
    (pending,) = seen[0]  # already recorded when the first fault action ran
    assert (pending.pair, pending.fault, pending.faulted) == ("back", str(fault), "prod-back")
    assert faults.notice(profile) == (
        "warning: a drill was interrupted before it recovered its fault "
        f"(`failover back --fault {fault}` on prod-back): "
        "`labctl up` or the next `labctl failover` undoes it"
    )
    injector.recover("prod-back", "prod-back-standby")
    assert journal.pending() == [] and faults.notice(profile) is None


@pytest.mark.parametrize(
    ("fault", "done"),
    [
        ("freeze", "resumed it"),
        ("link", "reconnected its cable"),
        ("partition", "removed the VRRP partition rules"),
        ("health", "restored its check script"),
        ("crash", "started keepalived again"),
        ("stop", "started keepalived again"),
    ],
)
def test_a_recorded_fault_is_undone_and_cleared(
    profile: Profile, machines: dict[str, FakeMachine], fault: str, done: str
) -> None:
    hv = FakePartitioner(
        states={"prod-back": MachineState.PAUSED}, links={"prod-back": False}
    )
    journal = faults.journal_for(profile)
    journal.record(faults.new_record("back", fault, "prod-back", "prod-back-standby"))
    lines = faults.recover_all(profile, hv, connector(machines))
    assert lines == [
        f"prod-back: undid the interrupted `failover back --fault {fault}` on prod-back: {done}"
    ]
    assert journal.pending() == []
    primary = machines["prod-back"]
    if fault == "freeze":
        assert hv.states["prod-back"] is MachineState.RUNNING
    if fault == "link":
        assert hv.links["prod-back"] is True
    if fault == "partition":
        assert ("unblock_vrrp", "prod-back", "prod-back-standby") in hv.calls
    if fault == "health":
        assert primary.files[CHECK] == b"#!/bin/sh\nexit 0\n"
    if fault in ("crash", "stop"):
        assert ("systemctl", "start", "keepalived") in primary.commands


def test_a_fault_that_cannot_be_undone_stays_recorded(
    profile: Profile, machines: dict[str, FakeMachine]
) -> None:
    journal = faults.journal_for(profile)
    journal.record(faults.new_record("back", "freeze", "prod-back", "prod-back-standby"))
    with pytest.raises(LabctlError, match=r"needs the lab.s hypervisor"):
        faults.recover_all(profile, None, connector(machines))
    assert [p.fault for p in journal.pending()] == ["freeze"]

