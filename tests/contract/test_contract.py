"""The Hypervisor contract: one suite, run against every backend in CONTRACT_BACKENDS.

Each test states a behaviour labctl's operations rely on. Machines: ``prod`` is a production
machine as the backend has it, ``standby`` is labctl's clone of it, ``foreign`` and ``taken``
are machines labctl did not create.
"""

from __future__ import annotations

import pytest

from labctl.errors import EXIT_FAILED, LabctlError
from labctl.hypervisor import MachineState
from tests.contract.harness import ContractBackend, eventually

SHELL = "/bin/sh"
# the test starts a machine: only backends whose machines can run on this host take part
running_vm = pytest.mark.running_vm


def state(backend: ContractBackend, name: str) -> MachineState:
    return backend.hypervisor.inspect(name).state


def managed_names(backend: ContractBackend) -> set[str]:
    return {m.name for m in backend.hypervisor.list()}


def test_unknown_machine_is_absent(backend: ContractBackend) -> None:
    assert state(backend, "no-such-machine") is MachineState.ABSENT


def test_fresh_machine_is_stopped(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    assert state(backend, "prod") is MachineState.STOPPED


def test_foreign_machine_is_not_labctls(backend: ContractBackend) -> None:
    backend.make_foreign("foreign")
    machine = backend.hypervisor.inspect("foreign")
    assert machine.managed is False
    assert machine.state in (MachineState.STOPPED, MachineState.ABSENT)
    assert "foreign" not in managed_names(backend)


@pytest.mark.parametrize("linked", [False, True], ids=["full", "linked"])
def test_clone_is_a_stopped_managed_copy_with_new_mac_and_cable_out(
    backend: ContractBackend, linked: bool
) -> None:
    backend.make_machine("prod")
    prod_before = backend.hypervisor.inspect("prod")
    prod_mac = backend.mac_of("prod")
    listed_before = managed_names(backend)

    backend.hypervisor.clone("prod", "standby", linked=linked)

    standby = backend.hypervisor.inspect("standby")
    assert (standby.state, standby.managed) == (MachineState.STOPPED, True)
    assert managed_names(backend) == listed_before | {"standby"}
    assert backend.mac_of("standby") != prod_mac
    assert backend.link_up("standby") is False
    # the source is untouched
    assert backend.hypervisor.inspect("prod") == prod_before
    assert backend.mac_of("prod") == prod_mac
    assert backend.link_up("prod") is True


@running_vm
def test_clone_of_running_source_keeps_it_running(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    backend.hypervisor.start("prod")

    backend.hypervisor.clone("prod", "standby")

    assert state(backend, "prod") is MachineState.RUNNING
    assert state(backend, "standby") is MachineState.STOPPED


def test_clone_of_missing_source_fails_and_leaves_no_target(backend: ContractBackend) -> None:
    listed_before = managed_names(backend)
    with pytest.raises(LabctlError) as failure:
        backend.hypervisor.clone("no-such-machine", "standby")
    assert failure.value.exit_code == EXIT_FAILED
    assert state(backend, "standby") is MachineState.ABSENT
    assert managed_names(backend) == listed_before


def test_clone_onto_an_existing_machine_fails_and_keeps_it(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    backend.make_machine("taken")
    taken_before = backend.hypervisor.inspect("taken")
    taken_mac = backend.mac_of("taken")

    with pytest.raises(LabctlError):
        backend.hypervisor.clone("prod", "taken")

    assert backend.hypervisor.inspect("taken") == taken_before
    assert backend.mac_of("taken") == taken_mac


@running_vm
def test_start_pause_resume(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    hv = backend.hypervisor

    hv.start("prod")
    assert state(backend, "prod") is MachineState.RUNNING
    hv.pause("prod")
    assert state(backend, "prod") is MachineState.PAUSED
    hv.resume("prod")
    assert state(backend, "prod") is MachineState.RUNNING


def test_start_of_missing_machine_fails(backend: ContractBackend) -> None:
    with pytest.raises(LabctlError) as failure:
        backend.hypervisor.start("no-such-machine")
    assert failure.value.exit_code == EXIT_FAILED


@running_vm
def test_link_down_keeps_the_machine_running(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    hv = backend.hypervisor
    hv.start("prod")

    hv.set_link("prod", False)

    assert backend.link_up("prod") is False
    assert state(backend, "prod") is MachineState.RUNNING
    # its processes still answer through the side channel
    assert hv.exec_in_guest("prod", [SHELL, "-c", "echo alive"]).stdout == "alive\n"
    hv.set_link("prod", True)
    assert backend.link_up("prod") is True


@running_vm
def test_link_state_is_remembered_for_the_next_start(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    hv = backend.hypervisor
    hv.start("prod")
    hv.set_link("prod", False)
    hv.stop("prod", hard=True)
    eventually(lambda: state(backend, "prod") is MachineState.STOPPED, "prod stopped")

    hv.start("prod")
    assert backend.link_up("prod") is False

    hv.stop("prod", hard=True)
    eventually(lambda: state(backend, "prod") is MachineState.STOPPED, "prod stopped")
    hv.set_link("prod", True)
    hv.start("prod")
    assert backend.link_up("prod") is True


@running_vm
def test_the_clone_boots_with_its_cable_out(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    backend.hypervisor.clone("prod", "standby")

    backend.hypervisor.start("standby")

    assert state(backend, "standby") is MachineState.RUNNING
    assert backend.link_up("standby") is False


@running_vm
@pytest.mark.parametrize("hard", [False, True], ids=["graceful", "hard"])
def test_stop(backend: ContractBackend, hard: bool) -> None:
    backend.make_machine("prod")
    backend.hypervisor.start("prod")

    backend.hypervisor.stop("prod", hard=hard)

    eventually(lambda: state(backend, "prod") is MachineState.STOPPED, "prod stopped")


def test_stop_of_a_stopped_machine_changes_nothing(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    backend.hypervisor.stop("prod", hard=True)
    assert state(backend, "prod") is MachineState.STOPPED


@running_vm
def test_destroy_removes_a_running_clone(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    hv = backend.hypervisor
    listed_before = managed_names(backend)
    hv.clone("prod", "standby")
    hv.start("standby")

    hv.destroy("standby")

    assert state(backend, "standby") is MachineState.ABSENT
    assert managed_names(backend) == listed_before
    assert state(backend, "prod") is MachineState.STOPPED


@running_vm
def test_destroy_never_removes_a_machine_labctl_did_not_create(backend: ContractBackend) -> None:
    backend.make_foreign("foreign")
    hv = backend.hypervisor

    if hv.inspect("foreign").state is MachineState.ABSENT:
        # a backend that sees only its own lab's machines (nspawn) cannot touch it at all
        hv.destroy("foreign")
    else:
        hv.start("foreign")
        with pytest.raises(LabctlError) as failure:
            hv.destroy("foreign")
        assert failure.value.exit_code == EXIT_FAILED
        assert "foreign" in failure.value.message
        assert state(backend, "foreign") is MachineState.RUNNING

    assert backend.exists("foreign")


@running_vm
@pytest.mark.parametrize("exit_code", [0, 3])
def test_exec_in_guest_returns_exit_code_and_output(
    backend: ContractBackend, exit_code: int
) -> None:
    backend.make_machine("prod")
    backend.hypervisor.start("prod")
    argv = [SHELL, "-c", f"echo out; echo err >&2; exit {exit_code}"]

    result = backend.hypervisor.exec_in_guest("prod", argv)

    assert (result.exit_code, result.stdout, result.stderr) == (exit_code, "out\n", "err\n")
    assert result.argv == tuple(argv)


def test_destroy_removes_a_stopped_clone_and_keeps_its_source(backend: ContractBackend) -> None:
    backend.make_machine("prod")
    hv = backend.hypervisor
    listed_before = managed_names(backend)
    hv.clone("prod", "standby", linked=True)

    hv.destroy("standby")

    assert state(backend, "standby") is MachineState.ABSENT
    assert not backend.exists("standby")
    assert managed_names(backend) == listed_before
    assert state(backend, "prod") is MachineState.STOPPED


def test_destroy_refuses_a_stopped_machine_labctl_did_not_create(
    backend: ContractBackend,
) -> None:
    backend.make_foreign("foreign")
    hv = backend.hypervisor
    if hv.inspect("foreign").state is MachineState.ABSENT:
        hv.destroy("foreign")  # a backend that sees only its own lab's machines
    else:
        with pytest.raises(LabctlError) as failure:
            hv.destroy("foreign")
        assert failure.value.exit_code == EXIT_FAILED
        assert "foreign" in failure.value.message
    assert backend.exists("foreign")
