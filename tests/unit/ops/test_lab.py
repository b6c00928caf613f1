"""ops.lab against an in-memory hypervisor: order, waiting, trust records, clean-up."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labctl import paths
from labctl.errors import EXIT_UNREACHABLE, GuestUnreachable, OperationFailed
from labctl.hypervisor import MachineState
from labctl.ops import lab as lab_ops
from labctl.profile import Profile
from tests.unit.ops.conftest import FakeClock
from tests.unit.ops.fakes import FakeHypervisor, FakeMachine


def test_up_creates_gives_identity_before_first_start_and_records_host_keys(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock
) -> None:
    result = lab_ops.up(prof, hv, probe=hv.probe, sleep=clock.sleep)
    assert result.created == ["prod-a", "prod-b"] and result.started == ["prod-a", "prod-b"]
    for name in ("prod-a", "prod-b"):
        calls = [c for c in hv.calls if len(c) > 1 and c[1] == name]
        assert calls[:3] == [("create", name), ("exec", name, "identity"), ("start", name)]
    known = paths.known_hosts_path("unit").read_text().splitlines()
    by_address = {ip: sorted(line.split()[1] for line in known if line.startswith(ip + " "))
                  for ip in ("10.251.1.10", "10.251.1.11")}
    assert by_address == {ip: ["ssh-ed25519", "ssh-rsa"] for ip in by_address}
    assert len(set(known)) == 4  # each machine its own keys (created concurrently)
    assert paths.lab_key_path("unit").exists()
    assert [s.state for s in result.machines] == ["running", "running"]


def test_up_twice_changes_nothing(prof: Profile, hv: FakeHypervisor, clock: FakeClock) -> None:
    lab_ops.up(prof, hv, probe=hv.probe, sleep=clock.sleep)
    again = lab_ops.up(prof, hv, probe=hv.probe, sleep=clock.sleep)
    assert again.created == [] and again.started == []


def test_up_resumes_a_paused_machine(prof: Profile, hv: FakeHypervisor, clock: FakeClock) -> None:
    lab_ops.up(prof, hv, ["prod-a"], probe=hv.probe, sleep=clock.sleep)
    hv.pause("prod-a")
    lab_ops.up(prof, hv, ["prod-a"], probe=hv.probe, sleep=clock.sleep)
    assert hv.inspect("prod-a").state is MachineState.RUNNING


def test_up_of_a_missing_standby_points_to_clone(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock
) -> None:
    with pytest.raises(OperationFailed) as info:
        lab_ops.up(prof, hv, ["prod-a-standby"], probe=hv.probe, sleep=clock.sleep)
    assert info.value.hint == "labctl clone prod-a"


def test_up_of_an_unknown_machine_names_the_argument(
    cli_with: Callable[..., tuple[int, str, str]], prof: Profile
) -> None:
    code, _out, err = cli_with("up", "nosuch", "-p", str(prof.path))
    assert code == 2
    assert "error: MACHINE: 'nosuch' is not a machine of lab unit" in err


def test_up_gives_up_after_the_boot_deadline_with_exit_5(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock
) -> None:
    with pytest.raises(GuestUnreachable) as info:
        lab_ops.up(prof, hv, ["prod-a"], probe=lambda *_: _refuse(), sleep=clock.sleep)
    assert info.value.exit_code == EXIT_UNREACHABLE
    assert "within 20s" in info.value.message
    assert 0 < sum(clock.sleeps) <= 20


def _refuse() -> str:
    raise ConnectionRefusedError("refused")


def test_wait_for_ssh_retries_until_the_banner_comes(clock: FakeClock) -> None:
    answers: Iterator[BaseException | str] = iter(
        [ConnectionRefusedError(), TimeoutError(), "SSH-2.0-x"]
    )

    def probe(_ip: str, _port: int, _timeout: float) -> str:
        item = next(answers)
        if isinstance(item, BaseException):
            raise item
        return item

    banner = lab_ops.wait_for_ssh(
        "m", "10.0.0.1/24", port=22, deadline=10, probe=probe, sleep=clock.sleep
    )
    assert banner == "SSH-2.0-x" and len(clock.sleeps) == 2


def test_a_failed_identity_removes_the_new_machine(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock
) -> None:
    hv.identity_exit = 1
    with pytest.raises(OperationFailed, match=r"identity failed.*disk full"):
        lab_ops.up(prof, hv, ["prod-a"], probe=hv.probe, sleep=clock.sleep)
    assert hv.inspect("prod-a").state is MachineState.ABSENT


def test_down_stops_gracefully_and_kills_what_does_not_stop(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock
) -> None:
    lab_ops.up(prof, hv, probe=hv.probe, sleep=clock.sleep)
    hv.ignores_graceful_stop.add("prod-b")
    result = lab_ops.down(prof, hv, deadline=5, sleep=clock.sleep)
    assert result.stopped == ["prod-a"] and result.killed == ["prod-b"]
    assert ("stop", "prod-b", "hard") in hv.calls
    assert ("stop", "prod-a", "hard") not in hv.calls
    assert all(m.state is MachineState.STOPPED for m in hv.list())


def test_status_json_shape(
    prof: Profile,
    hv: FakeHypervisor,
    clock: FakeClock,
    cli_with: Callable[..., tuple[int, str, str]],
) -> None:
    lab_ops.up(prof, hv, ["prod-a"], probe=hv.probe, sleep=clock.sleep)
    code, out, _err = cli_with("status", "--json", "-p", str(prof.path))
    assert code == 0
    doc = json.loads(out)
    assert doc["lab"] == "unit" and doc["backend"] == "nspawn"
    assert doc["machines"] == [
        {
            "machine": "prod-a",
            "role": "production",
            "state": "running",
            "address": "10.251.1.10/24",
            "managed": True,
        },
        {
            "machine": "prod-b",
            "role": "production",
            "state": "absent",
            "address": "10.251.1.11/24",
            "managed": False,
        },
        {
            "machine": "prod-a-standby",
            "role": "standby",
            "state": "absent",
            "address": "10.251.1.20/24",
            "managed": False,
        },
    ]


def test_status_table(
    prof: Profile,
    hv: FakeHypervisor,
    clock: FakeClock,
    cli_with: Callable[..., tuple[int, str, str]],
) -> None:
    lab_ops.up(prof, hv, ["prod-b"], probe=hv.probe, sleep=clock.sleep)
    code, out, _err = cli_with("status", "-p", str(prof.path))
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["MACHINE", "ROLE", "STATE", "ADDRESS"]
    assert ["prod-b", "production", "running", "10.251.1.11/24"] in lines


def test_destroy_removes_only_managed_machines_and_the_lab_data(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock, home: Path
) -> None:
    lab_ops.up(prof, hv, probe=hv.probe, sleep=clock.sleep)
    hv.machines["prod-a"].managed = False
    destroyed = lab_ops.destroy(prof, hv)
    assert destroyed == ["prod-b"]
    assert ("destroy", "prod-a") not in hv.calls
    assert hv.torn_down
    assert paths.lab_dir("unit").exists()  # prod-a is still there: keep the lab's keys
    hv.machines["prod-a"].managed = True
    lab_ops.destroy(prof, hv)
    assert not paths.lab_dir("unit").exists()


def test_destroy_needs_yes_when_not_interactive(
    cli_with: Callable[..., tuple[int, str, str]], prof: Profile, hv: FakeHypervisor
) -> None:
    code, _out, err = cli_with("destroy", "-p", str(prof.path))
    assert code == 2 and "--yes" in err
    assert not any(c[0] == "destroy" for c in hv.calls)


def test_record_host_keys_replaces_only_that_address(home: Path) -> None:
    lab_ops.record_host_keys("unit", "10.0.0.1/24", ["ssh-ed25519 OLD c"])
    lab_ops.record_host_keys("unit", "10.0.0.2", ["ssh-ed25519 OTHER c"])
    lab_ops.record_host_keys("unit", "10.0.0.1", ["ssh-ed25519 NEW c", "ssh-rsa RSA c"])
    assert paths.known_hosts_path("unit").read_text().splitlines() == [
        "10.0.0.2 ssh-ed25519 OTHER",
        "10.0.0.1 ssh-ed25519 NEW",
        "10.0.0.1 ssh-rsa RSA",
    ]


def test_lab_commands_have_help(cli_with: Callable[..., tuple[int, str, str]]) -> None:
    for command in (["lab", "image"], ["up"], ["down"], ["status"], ["destroy"], ["clone"]):
        code, out, _err = cli_with(*command, "--help")
        assert code == 0 and "--profile" in out


def test_a_machine_that_dies_while_booting_fails_at_once(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock
) -> None:
    def probe(_ip: str, _port: int, _timeout: float) -> str:
        hv.machines["prod-a"].state = MachineState.STOPPED  # nspawn exited
        raise ConnectionRefusedError("refused")

    with pytest.raises(GuestUnreachable, match="stopped while booting"):
        lab_ops.up(prof, hv, ["prod-a"], probe=probe, sleep=clock.sleep)
    assert clock.sleeps == []


def test_up_starts_existing_standbys_resumes_and_reconnects(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock
) -> None:
    lab_ops.up(prof, hv, probe=hv.probe, sleep=clock.sleep)
    standby = next(iter(prof.pairs.values())).standby
    hv.machines[standby] = FakeMachine(standby, hv.addresses[standby])  # stopped
    hv.machines["prod-a"].state = MachineState.PAUSED
    hv.machines["prod-b"].link_up = False
    result = lab_ops.up(prof, hv, probe=hv.probe, sleep=clock.sleep)
    assert result.started == [standby]
    assert result.resumed == ["prod-a"]
    assert result.reconnected == ["prod-b"]
    assert {s.machine: s.state for s in result.machines} == {
        "prod-a": "running", "prod-b": "running", standby: "running"}
    again = lab_ops.up(prof, hv, probe=hv.probe, sleep=clock.sleep)
    assert not again.changed
