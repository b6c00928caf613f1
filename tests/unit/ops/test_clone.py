"""ops.clone against an in-memory hypervisor: identity before the link, idempotence, clean-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from labctl import paths
from labctl.errors import GuestControlUnusable, OperationFailed, UnknownName
from labctl.hypervisor import ExecResult, MachineState
from labctl.ops import clone as clone_ops
from labctl.ops import lab as lab_ops
from labctl.profile import Profile
from tests.unit.ops.conftest import FakeClock
from tests.unit.ops.fakes import FakeHypervisor

STANDBY = "prod-a-standby"


@pytest.fixture
def running_prod(prof: Profile, hv: FakeHypervisor, clock: FakeClock) -> FakeHypervisor:
    lab_ops.up(prof, hv, ["prod-a"], probe=hv.probe, sleep=clock.sleep)
    hv.calls.clear()
    return hv


def _clone(
    prof: Profile, hv: FakeHypervisor, clock: FakeClock, **kw: bool
) -> clone_ops.CloneResult:
    return clone_ops.clone(prof, hv, "prod-a", probe=hv.probe, sleep=clock.sleep, **kw)


def _record_exec(hv: FakeHypervisor) -> list[list[str]]:
    """Every argv ``hv`` runs in a guest from now on, in order (the runs still happen)."""
    seen: list[list[str]] = []
    real = hv.exec_in_guest

    def spy(name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        seen.append(list(argv))
        return real(name, argv, timeout=timeout)

    hv.exec_in_guest = spy  # type: ignore[method-assign]
    return seen


def test_clone_writes_identity_on_the_stopped_disk_before_connecting_it(
    prof: Profile,
    running_prod: FakeHypervisor,
    clock: FakeClock,
) -> None:
    hv = running_prod
    result = _clone(prof, hv, clock, linked=True)
    assert result.created and result.standby == STANDBY and result.pair == "a"
    standby_calls = [c for c in hv.calls if c[0] != "check" and len(c) > 1 and c[1] != "prod-a"]
    assert [c for c in hv.calls if c[0] == "clone"] == [("clone", "prod-a", STANDBY, "linked")]
    assert standby_calls == [
        ("set_link", STANDBY, "down"),
        ("exec", STANDBY, "identity"),
        ("set_link", STANDBY, "up"),
        ("start", STANDBY),
    ]
    # production is only read from, never stopped or touched
    assert not [c for c in hv.calls if len(c) > 1 and c[1] == "prod-a" and c[0] != "clone"]
    assert hv.inspect("prod-a").state is MachineState.RUNNING
    known = paths.known_hosts_path("unit").read_text()
    assert "10.251.1.20 ssh-ed25519" in known


def test_clone_of_a_healthy_standby_is_a_no_op_that_says_so(
    prof: Profile,
    running_prod: FakeHypervisor,
    clock: FakeClock,
) -> None:
    _clone(prof, running_prod, clock)
    running_prod.calls.clear()
    again = _clone(prof, running_prod, clock)
    assert not again.created and "nothing to do" in again.message
    assert not [c for c in running_prod.calls if c[0] not in ("check",)]


def test_existing_unhealthy_standby_needs_force(
    prof: Profile,
    running_prod: FakeHypervisor,
    clock: FakeClock,
) -> None:
    _clone(prof, running_prod, clock)
    running_prod.stop(STANDBY)
    with pytest.raises(OperationFailed, match="already exists but is stopped") as info:
        _clone(prof, running_prod, clock)
    assert info.value.hint == "labctl clone prod-a --force recreates it"
    assert running_prod.inspect(STANDBY).state is MachineState.STOPPED


def test_force_recreates_with_new_host_keys(
    prof: Profile,
    running_prod: FakeHypervisor,
    clock: FakeClock,
) -> None:
    _clone(prof, running_prod, clock)
    first = paths.known_hosts_path("unit").read_text()
    result = _clone(prof, running_prod, clock, force=True)
    assert result.created
    assert ("destroy", STANDBY) in running_prod.calls
    second = paths.known_hosts_path("unit").read_text()
    standby_lines = [line for line in second.splitlines() if line.startswith("10.251.1.20 ")]
    assert len(standby_lines) == 2 and not set(standby_lines) & set(first.splitlines())


def test_cloning_a_missing_machine_fails_without_creating_anything(
    prof: Profile,
    hv: FakeHypervisor,
    clock: FakeClock,
) -> None:
    with pytest.raises(OperationFailed, match="cannot clone prod-a: no such machine") as info:
        _clone(prof, hv, clock)
    assert info.value.exit_code == 1
    assert hv.inspect(STANDBY).state is MachineState.ABSENT


def test_a_production_without_a_pair_is_named(
    prof: Profile,
    hv: FakeHypervisor,
    clock: FakeClock,
) -> None:
    with pytest.raises(UnknownName, match=r"PRODUCTION: 'prod-b' is not the primary"):
        clone_ops.clone(prof, hv, "prod-b", probe=hv.probe, sleep=clock.sleep)


def test_a_clone_failing_halfway_is_removed(
    prof: Profile,
    running_prod: FakeHypervisor,
    clock: FakeClock,
) -> None:
    running_prod.identity_exit = 1
    with pytest.raises(OperationFailed, match="identity failed"):
        _clone(prof, running_prod, clock)
    assert running_prod.inspect(STANDBY).state is MachineState.ABSENT
    assert "10.251.1.20" not in (
        paths.known_hosts_path("unit").read_text()
        if paths.known_hosts_path("unit").exists()
        else ""
    )


def test_backends_without_offline_edits_get_identity_with_the_cable_unplugged(
    prof: Profile,
    running_prod: FakeHypervisor,
    clock: FakeClock,
) -> None:
    hv = running_prod
    hv.edits_stopped_disks = False
    _clone(prof, hv, clock)
    standby_calls = [c for c in hv.calls if len(c) > 1 and c[1] == STANDBY and c[0] != "clone"]
    identity = standby_calls.index(("exec", STANDBY, "identity"))
    link_up = standby_calls.index(("set_link", STANDBY, "up"))
    assert standby_calls[0] == ("set_link", STANDBY, "down")
    assert standby_calls.index(("start", STANDBY)) < identity < link_up


def test_clone_cli_json(
    prof: Profile,
    running_prod: FakeHypervisor,
    cli_with: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    monkeypatch.setattr(lab_ops, "ssh_banner", running_prod.probe)
    monkeypatch.setattr(clone_ops, "ssh_banner", running_prod.probe)
    code, out, _err = cli_with("clone", "prod-a", "--linked", "--json", "-p", str(prof.path))
    assert code == 0, _err
    doc = json.loads(out)
    assert doc["standby"] == STANDBY and doc["linked"] is True and doc["created"] is True


def test_a_standby_that_ignores_the_power_button_is_powered_off_after_timeouts_stop(
    prof: Profile,
    running_prod: FakeHypervisor,
    clock: FakeClock,
) -> None:
    """Real VirtualBox guests may ignore acpipowerbutton (no acpid; logind not watching the
    button): the restart after the identity must not wait timeouts.boot and fail."""
    hv = running_prod
    hv.edits_stopped_disks = False
    hv.ignores_graceful_stop.add(STANDBY)
    started = clock.now
    result = _clone(prof, hv, clock)
    assert result.created
    stops = [c for c in hv.calls if c[0] == "stop" and c[1] == STANDBY]
    assert stops == [("stop", STANDBY, "graceful"), ("stop", STANDBY, "hard")]
    # the fake clock: the graceful stop was given timeouts.stop, not timeouts.boot
    assert prof.timeouts.stop - 1 < clock.now - started <= prof.timeouts.stop


def test_identity_restart_services_takes_the_identity_in_place_without_a_reboot(
    prof: Profile, running_prod: FakeHypervisor, clock: FakeClock
) -> None:
    """lab.virtualbox.identity_restart = "services": no second boot (minutes on a slow host);
    the identity script restarts what holds the old identity, then the cable goes in."""
    hv = running_prod
    hv.edits_stopped_disks = False
    seen = _record_exec(hv)
    vbox = prof.lab.virtualbox.model_copy(update={"identity_restart": "services"})
    live = prof.model_copy(update={"lab": prof.lab.model_copy(update={"virtualbox": vbox})})
    assert _clone(live, hv, clock).created
    standby_calls = [c for c in hv.calls if len(c) > 1 and c[1] == STANDBY and c[0] != "clone"]
    assert [c for c in standby_calls if c[0] in ("stop", "start", "set_link")] == [
        ("set_link", STANDBY, "down"),
        ("start", STANDBY),
        ("set_link", STANDBY, "up"),
        ("start", STANDBY),  # a no-op: it runs
    ]
    identity = next(argv for argv in seen if len(argv) > 3 and argv[3] == "identity")
    assert identity[-1] == "live"
    script = identity[2]
    for restarted in ("systemd-journald", "systemd-networkd", "ssh.service"):
        assert restarted in script.split('if [ "$live" = live ]')[1]


def test_guest_control_that_cannot_work_fails_the_clone_at_once_and_removes_it(
    prof: Profile, running_prod: FakeHypervisor, clock: FakeClock
) -> None:
    """VBoxManage's fixed 30 s guest-session limit on a slow guest: no retrying until
    timeouts.boot, the clear error, and no half-made standby."""
    hv = running_prod
    hv.edits_stopped_disks = False

    def unusable(name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        hv.calls.append(("exec", name, argv[0]))
        raise GuestControlUnusable(f"{name}: VBoxManage guestcontrol gives a guest session 30 s")

    hv.exec_in_guest = unusable  # type: ignore[method-assign]
    started = clock.now
    with pytest.raises(GuestControlUnusable, match="30 s"):
        _clone(prof, hv, clock)
    assert [c for c in hv.calls if c[0] == "exec"] == [("exec", STANDBY, "true")]
    assert clock.now - started < 1
    assert hv.inspect(STANDBY).state is MachineState.ABSENT


def test_a_clean_up_that_fails_too_never_hides_why_the_clone_failed(
    prof: Profile, running_prod: FakeHypervisor, clock: FakeClock
) -> None:
    hv = running_prod
    hv.identity_exit = 3

    def broken_destroy(name: str) -> None:
        raise OperationFailed(f"reading the disks of {name} failed")

    hv.destroy = broken_destroy  # type: ignore[method-assign]
    with pytest.raises(OperationFailed) as failure:
        _clone(prof, hv, clock)
    assert "writing its identity failed (exit 3)" in failure.value.message
    assert f"removing the half-made {STANDBY} failed" in failure.value.message


def test_identity_configures_the_lab_interface(
    prof: Profile, running_prod: FakeHypervisor, clock: FakeClock
) -> None:
    """The pair's interface (VirtualBox guests: eth0, enp0s3...); an nspawn pair without one:
    host0."""
    seen = _record_exec(running_prod)
    _clone(prof, running_prod, clock)
    identity = next(argv for argv in seen if len(argv) > 3 and argv[3] == "identity")
    assert identity[9:] == ["host0", ""]  # the interface; not live (nspawn edits the disk)
    pair = next(iter(prof.pairs.values()))
    named = prof.model_copy(
        update={"pairs": {"a": pair.model_copy(update={"interface": "enp0s3"})}}
    )
    assert lab_ops.lab_interface(named, pair.standby) == "enp0s3"
    vbox = named.model_copy(
        update={
            "lab": prof.lab.model_copy(update={"backend": "virtualbox"}),
            "pairs": {"a": pair},
        }
    )
    assert lab_ops.lab_interface(vbox, pair.standby) == ""
