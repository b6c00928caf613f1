"""Errors as real VirtualBox 7.2 prints them: the right exit code, one clear line."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from labctl.errors import EXIT_BACKEND, EXIT_FAILED, LabctlError
from labctl.hypervisor import MachineState
from tests.vbox.real import Driver

HOLD_LOCK = """
import sys, virtualbox, virtualbox.library as lib
machine = virtualbox.VirtualBox().find_machine(sys.argv[1])
session = virtualbox.Session()
machine.lock_machine(session, lib.LockType.write)
print("locked", flush=True)
sys.stdin.read()
session.unlock_machine()
"""


@contextmanager
def session_locked(driver: Driver, name: str) -> Iterator[None]:
    """Another VirtualBox client holds ``name``'s session (as the GUI's settings dialog does)."""
    holder = subprocess.Popen(
        driver.run.argv("python3", "-c", HOLD_LOCK, name),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def one_line(exc: LabctlError) -> str:
    assert "\n" not in exc.message, exc.message
    return exc.message


def test_a_missing_vm_is_absent_and_acting_on_it_fails_naming_it(driver: Driver) -> None:
    assert driver.hv.inspect("nosuch").state is MachineState.ABSENT
    acts: list[Callable[[], None]] = [
        lambda: driver.hv.start("nosuch"),
        lambda: driver.hv.set_link("nosuch", False),
    ]
    for act in acts:
        with pytest.raises(LabctlError) as failure:
            act()
        assert failure.value.exit_code == EXIT_FAILED
        assert "'nosuch'" in one_line(failure.value)


def test_a_vm_locked_by_another_session_is_a_clear_failure_and_stays_as_it_was(
    driver: Driver,
) -> None:
    driver.vms.create("prod")
    driver.hv.clone("prod", "prod-standby")

    with session_locked(driver, "prod-standby"):
        acts: list[Callable[[], None]] = [
            lambda: driver.hv.set_link("prod-standby", True),
            lambda: driver.hv.destroy("prod-standby"),
        ]
        for act in acts:
            with pytest.raises(LabctlError) as failure:
                act()
            assert failure.value.exit_code == EXIT_FAILED
            assert "locked" in one_line(failure.value)

    assert driver.vms.exists("prod-standby")
    assert driver.vms.info("prod-standby")["cableconnected1"] == "off"


def test_start_without_the_kernel_driver_is_exit_4_with_virtualboxs_reason(
    driver: Driver,
) -> None:
    driver.vms.create("prod")

    with pytest.raises(LabctlError) as failure:
        driver.hv.start("prod")

    assert failure.value.exit_code == EXIT_BACKEND
    message = one_line(failure.value)
    assert "terminated unexpectedly during startup" in message  # VirtualBox's own words
    assert "/dev/vboxdrv" in message
    assert failure.value.hint is not None and "vboxdrv" in failure.value.hint
    assert driver.vms.info("prod")["VMState"] == "poweroff"


def test_destroying_a_clone_another_vm_was_linked_from_is_refused_before_anything_changes(
    driver: Driver,
) -> None:
    driver.vms.create("prod")
    driver.hv.clone("prod", "prod-standby")
    # the user makes a linked clone of labctl's standby, by hand
    driver.run.manage("snapshot", "prod-standby", "take", "mine")
    driver.run.manage("clonevm", "prod-standby", "--name", "kid", "--options", "link",
                      "--snapshot", "mine", "--register")  # fmt: skip

    with pytest.raises(LabctlError) as failure:
        driver.hv.destroy("prod-standby")

    assert failure.value.exit_code == EXIT_FAILED
    message = one_line(failure.value)
    assert "kid" in message and "nothing was changed" in message
    assert driver.vms.exists("prod-standby") and driver.vms.exists("kid")
    driver.run.manage("unregistervm", "kid", "--delete")
    driver.hv.destroy("prod-standby")  # with the linked clone gone, destroy works
    assert not driver.vms.exists("prod-standby")
