"""The pyvbox backend against the fake ``virtualbox`` module (VirtualBox cannot run here).

pyvbox itself is not installed for these tests: a fake module shaped like pyvbox 2.1.1 is put
in sys.modules for each test only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from labctl.errors import EXIT_BACKEND, EXIT_FAILED, LabctlError
from labctl.hypervisor import Hypervisor, MachineState, VirtualBoxDetails, get_hypervisor
from labctl.hypervisor.pyvbox import PyVBoxHypervisor
from tests.contract.backends_vbox import (
    GUEST_PASSWORD,
    GUEST_PASSWORD_ENV,
    GUEST_USER,
    vbox_profile,
)
from tests.fakes.fake_virtualbox import FakeProgress, FakeVirtualBoxApi
from tests.fakes.vbox_world import World


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    fake_world = World(version="6.1.50r161033")
    fake_world.create("prod", guest_accounts={GUEST_USER: GUEST_PASSWORD})
    install(monkeypatch, FakeVirtualBoxApi(fake_world))
    monkeypatch.setenv(GUEST_PASSWORD_ENV, GUEST_PASSWORD)
    yield fake_world


def install(monkeypatch: pytest.MonkeyPatch, api: FakeVirtualBoxApi) -> None:
    monkeypatch.setitem(sys.modules, "virtualbox", api.module)
    monkeypatch.setitem(sys.modules, "virtualbox.library", api.lib)


def backend(nic: int = 1) -> PyVBoxHypervisor:
    hv = get_hypervisor(vbox_profile("pyvbox", nic=nic))
    assert isinstance(hv, PyVBoxHypervisor)
    return hv


def test_it_is_a_hypervisor_and_a_virtualbox_details_provider(world: World) -> None:
    # the annotations make mypy check the protocols structurally; isinstance checks at runtime
    hypervisor: Hypervisor = backend()
    details: VirtualBoxDetails = backend()
    assert isinstance(hypervisor, Hypervisor) and isinstance(details, VirtualBoxDetails)


def test_nat_attachment_is_reported_for_the_lab_nic(world: World) -> None:
    world.create("natted", attachment="nat")
    assert backend().nic_attachment("natted") == "nat"
    assert backend().nic_attachment("prod") == "intnet"
    assert backend(nic=2).nic_attachment("prod") == "none"


def test_guest_additions_version_while_running(world: World) -> None:
    hv = backend()
    assert hv.guest_additions("prod") is None
    hv.start("prod")
    assert hv.guest_additions("prod") == "6.1.50 r161033"


def test_missing_guest_additions_is_none(world: World) -> None:
    world.create("bare", guest_additions=None)
    hv = backend()
    hv.start("bare")
    assert hv.guest_additions("bare") is None


@pytest.mark.parametrize("version", ["7.0.14r161095", "7.1.4r165100", "7.2.22_Debianr175245"])
def test_virtualbox_7_states_decode_with_7x_numbering_and_clones_work(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    seven = World(version=version)
    seven.create("prod")
    install(monkeypatch, FakeVirtualBoxApi(seven))
    hv = backend()
    hv.check()
    hv.start("prod")
    # pyvbox's own enum names 7.x's Running (6) "Paused": labctl must not
    assert hv.inspect("prod").state is MachineState.RUNNING
    hv.pause("prod")
    assert hv.inspect("prod").state is MachineState.PAUSED
    hv.resume("prod")
    hv.clone("prod", "standby", linked=True)  # createMachine with 7.0's / 7.1's parameters
    assert hv.inspect("standby").state is MachineState.STOPPED
    assert hv.inspect("standby").managed


@pytest.mark.parametrize("version", ["6.0.24r139119", "7.3.0r180000", "8.0.0r190000"])
def test_an_api_version_labctl_does_not_know_is_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    other = World(version=version)
    other.create("prod")
    install(monkeypatch, FakeVirtualBoxApi(other))
    hv = backend()
    with pytest.raises(LabctlError) as failure:
        hv.check()
    assert failure.value.exit_code == EXIT_BACKEND
    assert version.split("r")[0] in failure.value.message
    assert failure.value.hint is not None and 'driver = "vboxmanage"' in failure.value.hint
    # no call decodes a state with a guessed numbering
    with pytest.raises(LabctlError) as inspect_failure:
        hv.inspect("prod")
    assert inspect_failure.value.exit_code == EXIT_BACKEND


def test_missing_sdk_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    # `import virtualbox` works without VirtualBox's SDK; the first use fails.
    install(monkeypatch, FakeVirtualBoxApi(World(), sdk_present=False))
    with pytest.raises(LabctlError) as failure:
        backend().check()
    assert failure.value.exit_code == EXIT_BACKEND
    assert "vboxapi" in failure.value.message
    assert failure.value.hint is not None and "vboxmanage" in failure.value.hint


def test_pyvbox_not_installed_is_backend_unavailable_with_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "virtualbox", None)  # makes `import virtualbox` fail
    with pytest.raises(LabctlError) as failure:
        backend().check()
    assert failure.value.exit_code == EXIT_BACKEND
    assert failure.value.hint is not None and "labctl[virtualbox]" in failure.value.hint


def test_failed_clone_progress_is_an_error_and_leaves_no_target(world: World) -> None:
    # pyvbox's wait_for_completion() does not raise: only result_code tells.
    world.fail["clonevm"] = "VERR_DISK_FULL"
    with pytest.raises(LabctlError) as failure:
        backend().clone("prod", "standby")
    assert failure.value.exit_code == EXIT_FAILED
    assert "VERR_DISK_FULL" in failure.value.message
    assert set(world.machines) == {"prod"}


def test_failed_start_progress_is_an_error(world: World) -> None:
    world.fail["startvm"] = "VT-x is not available (VERR_VMX_NO_VMX)"
    with pytest.raises(LabctlError) as failure:
        backend().start("prod")
    assert "VERR_VMX_NO_VMX" in failure.value.message
    assert world.find("prod").state == "poweroff"


def test_clone_failing_after_registration_is_removed(world: World) -> None:
    world.fail["setextradata"] = "settings file is read-only"
    with pytest.raises(LabctlError) as failure:
        backend().clone("prod", "standby")
    assert "read-only" in failure.value.message
    assert set(world.machines) == {"prod"}


def test_linked_clone_takes_the_base_snapshot_once(world: World) -> None:
    hv = backend()
    hv.clone("prod", "standby", linked=True)
    hv.clone("prod", "standby2", linked=True)
    assert world.find("prod").snapshots == ["labctl-base"]
    assert hv.inspect("standby2").state is MachineState.STOPPED


@pytest.mark.parametrize("linked", [False, True])
def test_a_clone_of_a_saved_production_boots_cold(world: World, linked: bool) -> None:
    """VirtualBox copies a saved source's memory image into the clone: the standby's first
    start would resume production's running identity. labctl discards it."""
    hv = backend()
    hv.start("prod")
    world.save_state("prod")
    hv.clone("prod", "standby", linked=linked)
    assert world.find("standby").state == "poweroff"
    assert world.find("prod").state == "saved"  # production untouched


def test_a_clone_gets_serial_log_files_of_its_own(world: World) -> None:
    """clone_to copies a file-mode UART's path: both machines would write one log."""
    world.find("prod").serial_files.update({"1": "/logs/prod.log", "3": "C:\\logs\\com.txt"})
    backend().clone("prod", "standby")
    assert world.find("standby").serial_files == {
        "1": "/logs/standby.log", "3": "C:\\logs\\standby-com.txt",
    }  # fmt: skip
    assert world.find("prod").serial_files["1"] == "/logs/prod.log"


def test_exec_of_a_bare_command_name_runs_it_from_the_guests_path(world: World) -> None:
    """Guest Additions start absolute paths only (VERR_FILE_NOT_FOUND for ``true``)."""
    hv = backend()
    hv.start("prod")
    result = hv.exec_in_guest("prod", ["echo", "found"])
    assert (result.exit_code, result.stdout) == (0, "found\n")


def test_a_progress_whose_wait_returns_early_is_waited_for_until_it_completed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    hv = backend()
    hv.start("prod")
    monkeypatch.setattr(FakeProgress, "early_returns", 2)
    hv.stop("prod", hard=True)
    assert world.find("prod").state == "poweroff"


def test_graceful_stop_returns_before_the_guest_is_down(world: World) -> None:
    hv = backend()
    hv.start("prod")
    hv.stop("prod")
    assert hv.inspect("prod").state is MachineState.RUNNING
    assert hv.inspect("prod").state is MachineState.STOPPED


def test_exec_with_a_wrong_password_fails_without_showing_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GUEST_PASSWORD_ENV, "wrong-secret")
    hv = backend()
    hv.start("prod")
    with pytest.raises(LabctlError) as failure:
        hv.exec_in_guest("prod", ["/bin/true"])
    assert failure.value.exit_code == EXIT_FAILED
    assert "wrong-secret" not in failure.value.message


def test_destroy_refuses_a_machine_of_another_lab(world: World) -> None:
    world.create("other", extradata={"labctl/lab": "another-lab"})
    with pytest.raises(LabctlError) as failure:
        backend().destroy("other")
    assert "another-lab" in failure.value.message
    assert "other" in world.machines
