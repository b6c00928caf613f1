"""CLI wiring of verify, failover and doctor: exit codes, --json, plain output, errors.

The commands run for real down to the machines, which are in-memory fakes: the CLI's
connection and backend hooks are replaced, nothing touches the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl import keepalived as ka
from labctl.cli import checks as cli_mod
from labctl.errors import GuestUnreachable
from labctl.hypervisor import Hypervisor, MachineState
from labctl.ops import drill as drill_op
from labctl.ops.verify import HostKey
from labctl.profile import Node, Profile, Role
from labctl.profile_load import load
from labctl.remote import Remote
from tests.unit.checks_fakes import (
    HOST_KEYS,
    PAIR_PROFILE_WITH_CHECK,
    FakeClock,
    FakeHypervisor,
    FakeMachine,
    FakeRemote,
    SyncExecutor,
)
from tests.unit.conftest import CliResult

PROFILE = PAIR_PROFILE_WITH_CHECK

VIP = "10.249.90.100/24"


class World:
    """The two machines, what answers on the VIP, and the backend."""

    def __init__(self) -> None:
        self.primary = FakeMachine("prod-back", "10.249.90.10/24", vips=[VIP])
        self.primary.vrrp_state = "MASTER"
        self.standby = FakeMachine("prod-back-standby", "10.249.90.20/24")
        self.answers: str | None = "prod-back"
        self.hypervisor = FakeHypervisor()
        self.down: set[str] = set()
        self.connected: list[str] = []
        self.clock = FakeClock()
        self.deadline: float | None = None  # shorter drill deadlines
        self.stuck = False  # the standby never gives the VIP back
        self.deadlines: list[float] = []  # given to each connector
        self.key_timeouts: list[float] = []  # given to each VIP host-key read

    def machine(self, name: str) -> FakeMachine:
        return self.primary if name == "prod-back" else self.standby

    def connector(self, prof: Profile, *, deadline: float) -> Callable[[Node], Remote]:
        self.deadlines.append(deadline)

        def connect(node: Node) -> Remote:
            self.connected.append(node.name)
            if node.name in self.down:
                raise GuestUnreachable(f"{node.name} did not answer SSH within {deadline:g} s")
            return FakeRemote(self.machine(node.name))

        return connect

    def host_key(self, ip: str, port: int, timeout: float) -> HostKey:
        self.key_timeouts.append(timeout)
        if self.answers is None:
            raise OSError("timed out")
        return HostKey(*HOST_KEYS[self.answers])


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    # drills record their fault in the lab's directory: keep it out of the real home
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "home"))
    w = World()
    monkeypatch.setattr(cli_mod, "_node_connector", w.connector)
    monkeypatch.setattr(cli_mod, "_vip_host_key", w.host_key)

    def hypervisor(prof: Profile) -> Hypervisor:
        return w.hypervisor

    monkeypatch.setattr(cli_mod, "_hypervisor", hypervisor)
    yield w


@pytest.fixture
def profile_path(write_profile: Callable[[str], Path]) -> str:
    return str(write_profile(PROFILE))


# ---------------------------------------------------------------------------
# verify


def test_verify_ok_exits_0_with_a_table(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    result = cli("verify", "-p", profile_path)
    assert result.code == 0, result.err
    header, row = result.out.splitlines()[:2]
    assert header.split() == ["PAIR", "VERDICT", "HOLDER", "DATA", "PATH", "PRIMARY", "STANDBY"]
    assert row.split()[:4] == ["back", "OK", "prod-back", VIP]
    assert "prod-back: MASTER (active), holds VIP" in row
    assert result.err == ""


def test_verify_json_document(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    result = cli("-p", profile_path, "verify", "back", "--json")
    document = json.loads(result.out)
    assert (result.code, document["ok"], document["exit_code"]) == (0, True, 0)
    assert document["pairs"][0]["verdict"] == "OK"
    assert "s3cret" not in result.out


def test_verify_split_brain_exits_6_with_one_error_line(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    world.standby.vips, world.standby.vrrp_state = [VIP], "MASTER"
    result = cli("-p", profile_path, "verify")
    assert result.code == 6
    assert result.err == "error: not every pair is OK: back SPLIT_BRAIN\n"
    assert "back: 10.249.90.100/24 is on both nodes" in result.out


def test_verify_unreachable_node_exits_5(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    world.down.add("prod-back")
    result = cli("-p", profile_path, "verify", "--json")
    assert result.code == 5
    document = json.loads(result.out)
    assert document["exit_code"] == 5 and document["pairs"][0]["verdict"] == "UNKNOWN"
    assert "prod-back: UNREACHABLE" in cli("-p", profile_path, "verify").out


@pytest.mark.parametrize(
    ("timeouts", "login", "probe", "host_key"),
    [("", 3.0, 5.0, 2.0), ("[timeouts]\ncheck = 90\n", 90.0, 90.0, 90.0)],
    ids=["defaults", "timeouts.check"],
)
def test_verify_gives_each_node_the_profiles_check_deadlines(
    world: World,
    write_profile: Callable[[str], Path],
    cli: Callable[..., CliResult],
    timeouts: str,
    login: float,
    probe: float,
    host_key: float,
) -> None:
    """A slow guest (an interpreted VirtualBox VM logs in in 10-15 s) needs longer than a
    guest on this host: ``timeouts.check`` sets the login, the probe and the host-key read."""
    path = write_profile(PROFILE + timeouts)
    result = cli("-p", str(path), "verify")
    assert result.code == 0, result.err
    assert world.deadlines == [login]
    assert world.primary.timeouts == [probe] and world.standby.timeouts == [probe]
    assert world.key_timeouts == [host_key]


def test_verify_unknown_pair_is_a_usage_error(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    result = cli("-p", profile_path, "verify", "nope")
    assert result.code == 2
    assert result.err.startswith("error: PAIR: 'nope' is not a pair of lab unit-lab (known: back)")


def test_verify_wait_rejects_negative_seconds(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    result = cli("-p", profile_path, "verify", "--wait", "-1")
    assert result.code == 2 and "--wait" in result.err


# ---------------------------------------------------------------------------
# failover


@pytest.fixture
def simulated_drill(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """Drills run on the world's fake clock; a crash moves the VIP after the master-down time."""
    state: dict[str, float | None] = {"fault": None, "recover": None}

    def update() -> None:
        now = world.clock()
        fault, recover = state["fault"], state["recover"]
        # SIGKILL leaves the primary's VIP in place; the standby holds from master-down
        # until shortly after keepalived is back on the primary
        taken = fault is not None and now - fault >= 3.61
        back = recover is not None and now - recover >= 0.2
        world.standby.vips = [VIP] if taken and (world.stuck or not back) else []

    def on_command(cmd: tuple[str, ...]) -> None:
        if cmd == ("sh", "-c", "kill -KILL $(pidof keepalived)"):
            state["fault"], state["recover"] = world.clock(), None
        if cmd == ("systemctl", "start", "keepalived"):
            state["recover"] = world.clock()
        update()

    world.primary.on_command = on_command
    original = drill_op.Drill

    def make(*args: Any, **kwargs: Any) -> drill_op.Drill:
        def sleep(seconds: float) -> None:
            world.clock.sleep(seconds)
            update()

        if world.deadline is not None:
            kwargs["settle_deadline"] = kwargs["failback_deadline"] = world.deadline
        kwargs.update(clock=world.clock, sleep=sleep, executor=SyncExecutor())
        return original(*args, **kwargs)

    monkeypatch.setattr(drill_op, "Drill", make)
    return world


def test_failover_crash_json(
    simulated_drill: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    result = cli("-p", profile_path, "failover", "back", "--fault", "crash", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["ok"] and document["fault"] == "crash"
    assert document["trials"][0]["faulted"] == "prod-back"
    assert "trial 1: VIP on prod-back; injecting crash there" in result.err  # progress


def test_failover_plain_table(
    simulated_drill: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    result = cli("-p", profile_path, "failover", "back", "--fault", "crash", "--trials", "2")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("failover back --fault crash (seconds after injection")
    assert lines[1].split()[:3] == ["TRIAL", "HOLDER", "->"]
    assert lines[2].split()[:4] == ["1", "prod-back", "->", "prod-back-standby"]
    assert any(line.startswith("takeover: min ") for line in lines)
    assert lines[-1] == "the pair ended with the VIP on prod-back"


def test_failover_that_ends_split_says_so_and_exits_6(
    simulated_drill: World,
    profile_path: str,
    cli: Callable[..., CliResult],
) -> None:
    simulated_drill.stuck = True
    simulated_drill.deadline = 3.0
    result = cli("-p", profile_path, "failover", "back", "--fault", "crash")
    assert result.code == 6
    assert "the pair did NOT end with the VIP on exactly one node" in result.err


def test_failover_freeze_needs_the_backend(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    world.hypervisor.unavailable = "systemd-nspawn not found"
    result = cli("-p", profile_path, "failover", "back", "--fault", "freeze")
    assert result.code == 4
    assert result.err.splitlines() == ["error: systemd-nspawn not found", "hint: install it"]


def test_failover_unreachable_node_exits_5_before_breaking_anything(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    world.down.add("prod-back-standby")
    result = cli("-p", profile_path, "failover", "back", "--fault", "crash")
    assert result.code == 5
    assert world.primary.commands == []


def test_failover_rejects_an_unknown_fault(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    result = cli("-p", profile_path, "failover", "back", "--fault", "meteor")
    assert result.code == 2 and "'meteor' is not one of" in result.err


# ---------------------------------------------------------------------------
# doctor


def _provisioned(world: World, profile_path: str) -> None:
    prof = load(profile_path)
    roles: list[tuple[Role, FakeMachine]] = [("primary", world.primary), ("standby", world.standby)]
    for role, m in roles:
        m.files[ka.CONF_PATH] = ka.render_node(prof, "back", role, mask_secrets=False).conf.encode()
        m.stats = {
            "/etc": ("root", "755"),
            "/etc/keepalived": ("root", "755"),
            "/etc/keepalived/check_heartbeat.sh": ("root", "755"),
        }
    world.standby.neigh["10.249.90.100"] = world.primary.mac


def test_doctor_healthy_lab_exits_0(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    _provisioned(world, profile_path)
    result = cli("-p", profile_path, "doctor")
    assert result.code == 0, result.out + result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["STATUS", "SUBJECT", "CHECK", "DETAIL", "FIX"]
    assert lines[-1].endswith(", 0 FAIL")


def test_doctor_failure_exits_6_and_names_it(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    _provisioned(world, profile_path)
    world.standby.script_user = False
    result = cli("-p", profile_path, "doctor", "--json")
    assert result.code == 6
    assert result.err == "error: 1 check(s) failed: prod-back-standby script user\n"
    document = json.loads(result.out)
    assert document["counts"]["FAIL"] == 1
    assert "s3cret" not in result.out


def test_doctor_with_an_unusable_backend_still_checks_the_machines(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    _provisioned(world, profile_path)
    world.hypervisor = FakeHypervisor(unavailable="not root")
    document = json.loads(cli("-p", profile_path, "doctor", "--json").out)
    statuses = {(c["subject"], c["check"]): c["status"] for c in document["checks"]}
    assert statuses[("lab", "backend")] == "FAIL"
    assert statuses[("prod-back", "ssh")] == "OK"


def test_doctor_invalid_profile_exits_3(
    world: World, write_profile: Callable[[str], Path], cli: Callable[..., CliResult]
) -> None:
    path = write_profile(PROFILE.replace("vrid = 51", "vrid = 300"))
    result = cli("-p", str(path), "doctor")
    assert result.code == 3 and "pairs.back.vrid: must be 1..255" in result.err


# ---------------------------------------------------------------------------
# the hypervisor is asked first


@pytest.mark.parametrize(
    ("state", "link", "shown", "reason"),
    [
        (MachineState.ABSENT, True, "absent", "not created: run `labctl clone prod-back`"),
        (MachineState.STOPPED, True, "stopped", "stopped: run `labctl up`"),
        (MachineState.PAUSED, True, "paused", "paused: run `labctl up` (resumes it)"),
        (MachineState.RUNNING, False, "link down",
         "link down (cable out): run `labctl up` (reconnects it)"),
    ],
)
def test_verify_reports_what_the_hypervisor_says_without_ssh(
    world: World,
    profile_path: str,
    cli: Callable[..., CliResult],
    state: MachineState,
    link: bool,
    shown: str,
    reason: str,
) -> None:
    world.hypervisor.states["prod-back-standby"] = state
    world.hypervisor.links["prod-back-standby"] = link
    world.answers = None  # a probe of the VIP would time out: it must not be made
    result = cli("verify", "--json", "-p", profile_path)
    assert result.code == 5
    (pair,) = json.loads(result.out)["pairs"]
    assert pair["verdict"] == "UNKNOWN"
    assert f"prod-back-standby {reason}" in pair["reasons"]
    standby = pair["nodes"][1]
    assert (standby["reachable"], standby["machine_state"], standby["error"]) == (
        False, shown, reason)
    assert pair["nodes"][0]["machine_state"] == "running"
    assert pair["vips"][0]["data_path_error"].startswith("not probed")
    assert "prod-back-standby" not in world.connected
    table = cli("verify", "-p", profile_path)
    assert f"prod-back-standby: {shown.upper()}" in table.out
    assert f"back: prod-back-standby {reason}" in table.out


def test_failover_refuses_a_paused_node_at_once_with_the_fix(
    world: World, profile_path: str, cli: Callable[..., CliResult]
) -> None:
    world.hypervisor.states["prod-back-standby"] = MachineState.PAUSED
    result = cli("-p", profile_path, "failover", "back", "--fault", "crash")
    assert result.code == 5
    assert result.err.splitlines() == [
        "error: prod-back-standby paused: run `labctl up` (resumes it)",
        "hint: labctl up",
    ]
    assert world.connected == []


def test_machine_conditions_from_virtualbox_nics_and_the_ssh_backend(tmp_path: Path) -> None:
    from labctl.hypervisor import Machine, Nic
    from labctl.ops import machines
    from labctl.profile_load import parse

    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    prof = parse(PROFILE.replace('backend = "nspawn"', 'backend = "virtualbox"'),
                 path=tmp_path / "lab.toml")
    unplugged = Machine("prod-back", MachineState.RUNNING,
                        nics=(Nic(1, "intnet", "080027000001", cable=False),))
    assert machines.judge(prof, unplugged).condition is machines.Condition.LINK_DOWN
    plugged = Machine("prod-back", MachineState.RUNNING,
                      nics=(Nic(1, "intnet", "080027000001", cable=True),))
    assert machines.judge(prof, plugged).condition is machines.Condition.RUNNING
    unseen = Machine("prod-back", MachineState.UNREACHABLE)
    assert not machines.judge(prof, unseen).blocked


def test_a_fault_left_by_a_killed_drill_is_announced_and_undone_by_the_next_failover(
    simulated_drill: World,
    profile_path: str,
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from labctl import profile as profile_mod
    from labctl.ops import faults

    world = simulated_drill
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "home"))
    prof = profile_mod.load(profile_path)
    faults.journal_for(prof).record(
        faults.new_record("back", "freeze", "prod-back-standby", "prod-back"))
    world.hypervisor.states["prod-back-standby"] = MachineState.PAUSED
    status = cli("-p", profile_path, "verify")
    assert status.err.splitlines()[0].startswith(
        "warning: a drill was interrupted before it recovered its fault "
        "(`failover back --fault freeze` on prod-back-standby)")
    result = cli("-p", profile_path, "failover", "back", "--fault", "crash")
    assert result.code == 0, result.err
    assert ("prod-back-standby: undid the interrupted `failover back --fault freeze` on "
            "prod-back-standby: resumed it") in result.err
    assert world.hypervisor.states["prod-back-standby"] is MachineState.RUNNING
    assert faults.journal_for(prof).pending() == []
    assert "warning" not in cli("-p", profile_path, "verify").err
