"""A driverless VirtualBox host (``lab.virtualbox.driverless``) and guest-control deadlines.

Real VirtualBox without its kernel driver powers VMs on only through the Qt frontend in
driverless mode; the API's launchVMProcess cannot. On such a host the profile says
``driverless = true``: labctl stops requiring /dev/vboxdrv, and the pyvbox driver starts VMs
with ``vboxmanage startvm`` (which the host's VBoxManage, or a wrapper, turns into the
driverless launch). Guest-control sessions get ``timeouts.guest`` to start.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from labctl.errors import EXIT_BACKEND, LabctlError
from labctl.hypervisor import get_hypervisor, vbox_common
from labctl.hypervisor.pyvbox import PyVBoxHypervisor
from labctl.profile import Profile
from tests.contract.backends_vbox import (
    GUEST_PASSWORD,
    GUEST_PASSWORD_ENV,
    GUEST_USER,
    vbox_profile,
)
from tests.fakes.fake_virtualbox import FakeVirtualBoxApi
from tests.fakes.vbox_world import World


@pytest.fixture
def no_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(vbox_common, "KERNEL_DRIVER", tmp_path / "vboxdrv-missing")


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    fake = World(version="7.2.22_Debianr175245")
    fake.create("prod", guest_accounts={GUEST_USER: GUEST_PASSWORD})
    api = FakeVirtualBoxApi(fake)
    monkeypatch.setitem(sys.modules, "virtualbox", api.module)
    monkeypatch.setitem(sys.modules, "virtualbox.library", api.lib)
    monkeypatch.setenv(GUEST_PASSWORD_ENV, GUEST_PASSWORD)
    return fake


def recorder(tmp_path: Path, *, code: int = 0, stderr: str = "") -> Path:
    """A VBoxManage stand-in that records its arguments and exits with ``code``."""
    script = tmp_path / "VBoxManage-driverless"
    script.write_text(
        f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n"
        f"printf '%s\\n' '{stderr}' >&2\nexit {code}\n"
    )
    script.chmod(0o755)
    return script


def pyvbox(**virtualbox: object) -> PyVBoxHypervisor:
    hv = get_hypervisor(vbox_profile("pyvbox", **virtualbox))
    assert isinstance(hv, PyVBoxHypervisor)
    return hv


@pytest.mark.usefixtures("no_driver")
def test_without_the_kernel_driver_starting_is_blocked_unless_the_host_is_driverless() -> None:
    assert "kernel driver is not loaded" in (vbox_common.start_blocker() or "")
    blocked = vbox_profile("vboxmanage")
    assert vbox_common.start_blocker(blocked) is not None
    assert vbox_common.start_blocker(vbox_profile("vboxmanage", driverless=True)) is None


@pytest.mark.usefixtures("no_driver")
def test_driverless_pyvbox_starts_with_vboxmanage_startvm(world: World, tmp_path: Path) -> None:
    wrapper = recorder(tmp_path)
    hv = pyvbox(driverless=True, vboxmanage=str(wrapper))
    hv.start("prod")
    assert (tmp_path / "calls").read_text().split("\n")[0] == "startvm prod --type headless"
    assert hv.host_report().start_blocker is None


@pytest.mark.usefixtures("no_driver")
def test_driverless_start_failure_names_vboxmanage_error(world: World, tmp_path: Path) -> None:
    wrapper = recorder(tmp_path, code=1, stderr="VBoxManage: error: VERR_SUP_DRIVERLESS here")
    with pytest.raises(LabctlError) as failure:
        pyvbox(driverless=True, vboxmanage=str(wrapper)).start("prod")
    assert failure.value.message == "prod did not start: VERR_SUP_DRIVERLESS here"


@pytest.mark.usefixtures("no_driver")
def test_pyvbox_on_a_host_without_driver_is_exit_4_when_not_driverless(world: World) -> None:
    world.fail["startvm"] = "The virtual machine 'prod' has terminated unexpectedly"
    with pytest.raises(LabctlError) as failure:
        pyvbox().start("prod")
    assert failure.value.exit_code == EXIT_BACKEND


def test_guest_session_that_does_not_start_names_timeouts_guest(world: World) -> None:
    hv = get_hypervisor(
        Profile.model_validate(
            {**vbox_profile("pyvbox").model_dump(), "timeouts": {"guest": 7}}
        )
    )
    hv.start("prod")
    world.find("prod").guest_session_starts = False
    with pytest.raises(LabctlError) as failure:
        hv.exec_in_guest("prod", ["/bin/true"])
    assert "timeouts.guest (7 s" in failure.value.message
    assert GUEST_PASSWORD not in failure.value.message


def test_guest_command_on_7x_uses_7x_process_create_and_reads_its_output(world: World) -> None:
    """pyvbox's execute() passes 6.1's processCreateEx parameters, which 7.x rejects
    ("missing 1 required positional argument"): labctl calls it with the working directory."""
    hv = pyvbox()
    hv.start("prod")
    result = hv.exec_in_guest("prod", ["echo", "hello"])
    assert (result.exit_code, result.stdout) == (0, "hello\n")


@pytest.mark.parametrize("bad", [0, -1, "soon"])
def test_timeouts_guest_must_be_seconds(bad: object) -> None:
    data = vbox_profile("pyvbox").model_dump()
    with pytest.raises(ValidationError, match="guest"):
        Profile.model_validate({**data, "timeouts": {"guest": bad}})


def test_no_guest_session_is_opened_before_the_guest_service_runs(world: World) -> None:
    hv = pyvbox()
    hv.start("prod")
    world.find("prod").guest_service_up = False
    with pytest.raises(LabctlError) as failure:
        hv.exec_in_guest("prod", ["/bin/true"])
    assert "Guest Additions service is not running" in failure.value.message
