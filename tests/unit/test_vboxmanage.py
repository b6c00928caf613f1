"""The VBoxManage backend against the fake VBoxManage (VirtualBox cannot run here).

What the contract suite does not cover: VirtualBox-only details (NIC attachment, Guest
Additions), error wrapping, clean-up after a failure half way, guestcontrol's exit codes and
credentials.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labctl.errors import (
    EXIT_BACKEND,
    EXIT_FAILED,
    EXIT_PROFILE,
    GuestControlUnusable,
    LabctlError,
)
from labctl.hypervisor import Hypervisor, MachineState, VirtualBoxDetails, get_hypervisor
from labctl.hypervisor.vboxmanage import VBoxManageHypervisor, parse_machinereadable
from tests.contract.backends_vbox import (
    GUEST_PASSWORD,
    GUEST_PASSWORD_ENV,
    GUEST_USER,
    vbox_profile,
)
from tests.fakes.install import install_vboxmanage
from tests.fakes.vbox_world import World, opened


class FakeHost:
    """The fake VirtualBox host a test drives, with the command lines labctl ran."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "fake-virtualbox.json"
        self.log = tmp_path / "vboxmanage-calls.jsonl"
        self.vboxmanage = install_vboxmanage(tmp_path / "bin")

    def edit(self, change: Callable[[World], object]) -> None:
        with opened(self.state) as world:
            change(world)

    def world(self) -> World:
        return World.from_json(json.loads(self.state.read_text()))

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


VBOXMANAGE = "VBoxManage"  # found on PATH, where the fixture puts the fake


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    fake = FakeHost(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.vboxmanage.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VBOX_STATE", str(fake.state))
    monkeypatch.setenv("FAKE_VBOX_LOG", str(fake.log))
    monkeypatch.setenv(GUEST_PASSWORD_ENV, GUEST_PASSWORD)
    fake.edit(lambda w: w.create("prod", guest_accounts={GUEST_USER: GUEST_PASSWORD}))
    yield fake


def backend(nic: int = 1) -> VBoxManageHypervisor:
    hv = get_hypervisor(vbox_profile("vboxmanage", vboxmanage=VBOXMANAGE, nic=nic))
    assert isinstance(hv, VBoxManageHypervisor)
    return hv


def test_it_is_a_hypervisor_and_a_virtualbox_details_provider(host: FakeHost) -> None:
    # the annotations make mypy check the protocols structurally; isinstance checks at runtime
    hypervisor: Hypervisor = backend()
    details: VirtualBoxDetails = backend()
    assert isinstance(hypervisor, Hypervisor) and isinstance(details, VirtualBoxDetails)


def test_nat_attachment_is_reported_for_the_lab_nic(host: FakeHost) -> None:
    host.edit(lambda w: w.create("natted", attachment="nat"))
    assert backend().nic_attachment("natted") == "nat"
    assert backend().nic_attachment("prod") == "intnet"


def test_nic_setting_selects_the_adapter(host: FakeHost) -> None:
    # adapter 2 is not enabled on the fake's machines
    assert backend(nic=2).nic_attachment("prod") == "none"


def test_guest_additions_version_while_running(host: FakeHost) -> None:
    hv = backend()
    assert hv.guest_additions("prod") is None  # stopped: nothing reported
    hv.start("prod")
    assert hv.guest_additions("prod") == "6.1.50 r161033"


def test_missing_guest_additions_is_none(host: FakeHost) -> None:
    host.edit(lambda w: w.create("bare", guest_additions=None))
    hv = backend()
    hv.start("bare")
    assert hv.guest_additions("bare") is None


def test_missing_vboxmanage_is_backend_unavailable_with_install_hint() -> None:
    hv = get_hypervisor(vbox_profile("vboxmanage", vboxmanage="VBoxManage-not-installed"))
    with pytest.raises(LabctlError) as failure:
        hv.check()
    assert failure.value.exit_code == EXIT_BACKEND
    assert "VBoxManage-not-installed" in failure.value.message
    assert failure.value.hint is not None and "install VirtualBox" in failure.value.hint


def test_missing_vboxmanage_path_fails_every_call_the_same_way(tmp_path: Path) -> None:
    missing = tmp_path / "VBoxManage"
    hv = get_hypervisor(vbox_profile("vboxmanage", vboxmanage=str(missing)))
    with pytest.raises(LabctlError) as failure:
        hv.inspect("prod")
    assert failure.value.exit_code == EXIT_BACKEND


def test_vboxmanage_that_is_not_executable_is_backend_unavailable(tmp_path: Path) -> None:
    not_executable = tmp_path / "VBoxManage"
    not_executable.write_text("#!/bin/sh\n")
    hv = get_hypervisor(vbox_profile("vboxmanage", vboxmanage=str(not_executable)))
    with pytest.raises(LabctlError) as failure:
        hv.check()
    assert failure.value.exit_code == EXIT_BACKEND
    assert "Permission denied" in failure.value.message


def test_check_passes_with_a_working_vboxmanage(host: FakeHost) -> None:
    backend().check()
    assert ["--version"] in host.calls()


def test_vboxmanage_errors_are_wrapped_with_its_message(host: FakeHost) -> None:
    host.edit(lambda w: w.fail.update(startvm="VT-x is not available (VERR_VMX_NO_VMX)"))
    with pytest.raises(LabctlError) as failure:
        backend().start("prod")
    assert failure.value.exit_code == EXIT_FAILED
    assert "VERR_VMX_NO_VMX" in failure.value.message
    assert "startvm" in failure.value.message


def test_unknown_machine_is_absent_not_an_error(host: FakeHost) -> None:
    assert backend().inspect("ghost").state is MachineState.ABSENT


@pytest.mark.parametrize("linked", [False, True])
def test_a_clone_of_a_saved_production_boots_cold(host: FakeHost, linked: bool) -> None:
    """VirtualBox copies a saved source's memory image into the clone: the standby's first
    start would resume production's running identity. labctl discards it."""
    hv = backend()
    hv.start("prod")
    host.edit(lambda world: world.save_state("prod"))
    hv.clone("prod", "standby", linked=linked)
    assert host.world().find("standby").state == "poweroff"
    assert host.world().find("prod").state == "saved"
    assert ["discardstate", "standby"] in host.calls()


def test_a_clone_gets_serial_log_files_of_its_own(host: FakeHost) -> None:
    """clonevm copies a file-mode UART's path: both machines would write one log."""
    logs = {"1": "/logs/prod.log", "2": "/logs/console.txt"}
    host.edit(lambda w: w.find("prod").serial_files.update(logs))
    backend().clone("prod", "standby", linked=True)
    assert host.world().find("standby").serial_files == {
        "1": "/logs/standby.log", "2": "/logs/standby-console.txt",
    }  # fmt: skip
    assert host.world().find("prod").serial_files == logs
    (modify,) = [c for c in host.calls() if c[:1] == ["modifyvm"]]  # one settings change
    assert modify[2:4] == ["--cableconnected1", "off"]


def test_clone_failing_half_way_leaves_no_target(host: FakeHost) -> None:
    host.edit(lambda w: w.fail.update(modifyvm="settings file is read-only"))
    with pytest.raises(LabctlError) as failure:
        backend().clone("prod", "standby")
    assert "read-only" in failure.value.message
    assert "standby" not in host.world().machines
    assert ["unregistervm", "standby", "--delete"] in host.calls()


def test_clone_that_vboxmanage_refuses_leaves_no_target(host: FakeHost) -> None:
    host.edit(lambda w: w.fail.update(clonevm="not enough disk space"))
    with pytest.raises(LabctlError):
        backend().clone("prod", "standby")
    assert set(host.world().machines) == {"prod"}


def test_linked_clones_share_one_base_snapshot(host: FakeHost) -> None:
    hv = backend()
    hv.clone("prod", "standby", linked=True)
    hv.clone("prod", "standby2", linked=True)
    snapshot_takes = [c[:4] for c in host.calls() if c[:1] == ["snapshot"]]
    assert snapshot_takes == [["snapshot", "prod", "take", "labctl-base"]]
    clones = [c for c in host.calls() if c[:1] == ["clonevm"]]
    assert all(c[-4:] == ["--options", "link", "--snapshot", "labctl-base"] for c in clones)


def test_graceful_stop_returns_before_the_guest_is_down(host: FakeHost) -> None:
    # The backend never waits: ops await STOPPED with their own deadline.
    hv = backend()
    hv.start("prod")
    hv.stop("prod")
    assert hv.inspect("prod").state is MachineState.RUNNING
    assert hv.inspect("prod").state is MachineState.STOPPED


def test_destroy_refuses_a_machine_of_another_lab(host: FakeHost) -> None:
    host.edit(lambda w: w.create("other", extradata={"labctl/lab": "another-lab"}))
    with pytest.raises(LabctlError) as failure:
        backend().destroy("other")
    assert "another-lab" in failure.value.message
    assert "other" in host.world().machines


def test_destroy_waits_for_a_powered_off_vm_to_let_go_of_its_session(host: FakeHost) -> None:
    """Real 7.2: right after ``controlvm poweroff`` the VM's process still holds its session
    and unregistervm fails "while it is locked"; destroy waits until showvminfo names no
    session (the fake VM lets go after three reads)."""
    hv = backend()
    host.edit(lambda w: w.create("standby", state="running", lock_lingers=3,
                                 extradata={"labctl/lab": hv.lab}))  # fmt: skip
    naps: list[float] = []
    hv._sleep = naps.append
    hv.destroy("standby")
    assert "standby" not in host.world().machines
    assert naps == [hv.RELEASE_POLL] * 2  # read locked twice after the power-off, then free
    verbs = [c[0] for c in host.calls()]
    assert verbs[-1] == "unregistervm" and "controlvm" in verbs


def test_exec_passes_the_password_in_a_file_never_on_the_command_line(host: FakeHost) -> None:
    hv = backend()
    hv.start("prod")
    result = hv.exec_in_guest("prod", ["/bin/sh", "-c", "echo ok"])
    assert result.exit_code == 0
    runs = [c for c in host.calls() if c[:1] == ["guestcontrol"]]
    assert len(runs) == 1
    assert "--passwordfile" in runs[0] and "--password" not in runs[0]
    assert all(GUEST_PASSWORD not in arg for call in host.calls() for arg in call)
    assert runs[0][runs[0].index("--username") + 1] == GUEST_USER
    assert runs[0][runs[0].index("--") + 1 :] == ["/bin/sh", "-c", "echo ok"]


def test_exec_of_a_bare_command_name_runs_it_from_the_guests_path(host: FakeHost) -> None:
    """Guest Additions start absolute paths only (VERR_FILE_NOT_FOUND for ``true``)."""
    hv = backend()
    hv.start("prod")
    result = hv.exec_in_guest("prod", ["echo", "found"])
    assert (result.exit_code, result.stdout, result.argv) == (0, "found\n", ("echo", "found"))
    run = next(c for c in host.calls() if c[:1] == ["guestcontrol"])
    assert run[run.index("--exe") + 1] == "/usr/bin/env"


@pytest.mark.parametrize(("guest_code", "reported"), [(1, 1), (93, 93), (94, 94), (200, 94)])
def test_exec_decodes_guestcontrol_exit_codes(
    host: FakeHost, guest_code: int, reported: int
) -> None:
    hv = backend()
    hv.start("prod")
    result = hv.exec_in_guest("prod", ["/bin/sh", "-c", f"exit {guest_code}"])
    assert result.exit_code == reported
    assert ("94 or higher" in result.stderr) is (guest_code >= 94)


def test_exec_with_a_wrong_password_fails_without_showing_it(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GUEST_PASSWORD_ENV, "wrong-secret")
    hv = backend()
    hv.start("prod")
    with pytest.raises(LabctlError) as failure:
        hv.exec_in_guest("prod", ["/bin/true"])
    assert failure.value.exit_code == EXIT_FAILED
    assert "not able to logon" in failure.value.message
    assert "wrong-secret" not in failure.value.message


def test_exec_without_the_password_variable_is_a_profile_error(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(GUEST_PASSWORD_ENV)
    hv = backend()
    hv.start("prod")
    with pytest.raises(LabctlError) as failure:
        hv.exec_in_guest("prod", ["/bin/true"])
    assert failure.value.exit_code == EXIT_PROFILE
    assert failure.value.message.startswith("lab.virtualbox.guest_password_env:")
    assert GUEST_PASSWORD_ENV in failure.value.message


def test_a_guest_session_slower_than_vboxmanages_30_s_is_a_clear_final_error(
    host: FakeHost,
) -> None:
    """VBoxManage waits a fixed 30 s for a guest session (an interpreted guest takes 25-73 s):
    labctl names the limit and the driver that has none, and nothing retries it."""
    hv = backend()
    hv.start("prod")
    host.edit(lambda world: setattr(world.machines["prod"], "guest_session_starts", False))
    with pytest.raises(GuestControlUnusable) as failure:
        hv.exec_in_guest("prod", ["/bin/true"])
    assert "30 s" in failure.value.message and "prod" in failure.value.message
    assert failure.value.hint is not None and 'driver = "pyvbox"' in failure.value.hint
    assert failure.value.exit_code == EXIT_FAILED


def test_exec_on_a_stopped_machine_fails(host: FakeHost) -> None:
    with pytest.raises(LabctlError) as failure:
        backend().exec_in_guest("prod", ["/bin/true"])
    assert "stopped" in failure.value.message


def test_parse_machinereadable_unescapes_values_and_quoted_keys() -> None:
    text = 'name="a \\"b\\" c\\\\d"\n"SATA-0-0"="/vms/disk.vdi"\nmemory=1024\nno equals sign\n'
    assert parse_machinereadable(text) == {
        "name": 'a "b" c\\d',
        "SATA-0-0": "/vms/disk.vdi",
        "memory": "1024",
    }


def test_unknown_machine_state_is_an_error(host: FakeHost) -> None:
    def odd(world: World) -> None:
        world.find("prod").state = "somethingnew"

    host.edit(odd)
    with pytest.raises(LabctlError) as failure:
        backend().inspect("prod")
    assert "somethingnew" in failure.value.message
