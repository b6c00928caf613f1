"""The seed's procedure on real VirtualBox 7.2 VMs (driverless: the guests' CPUs are
interpreted), driven by labctl, up to the standby with its own identity.

The production VM is what a user has before labctl: a configured Debian machine (systemd, sshd,
a static address on the lab network, Guest Additions), suspended in a saved state (cached per
recipe, booted once; tests/vbox/vms/machines.py). labctl runs inside the sandbox's Python with
``driver = "pyvbox"`` (the API: the only guest control that waits long enough for an
interpreted guest) and ``driverless = true``; VMs start through the driverless VBoxManage
wrapper (tests/vbox/vmhost.py); ``labctl up`` here goes through the VBoxManage driver.
Everything labctl claims is also checked from outside it: VirtualBox's own state and logs, the
guests read directly over SSH. Provision, verify, the drills and destroy continue this session
in flow_after_clone.py (run explicitly: provision does not fit the test command's budget yet).

The tests run in file order and share one production VM and one standby (the tier's budget).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.vbox.guest_disk import ensure_disk_image
from tests.vbox.guest_kernel import ensure_kernel
from tests.vbox.sandbox import VBOX_HOME
from tests.vbox.vmhost import VmHost
from tests.vbox.vms.conftest import GuestArtifacts
from tests.vbox.vms.machines import (
    FIGURES,
    PROD,
    STANDBY,
    Lab,
    host_key,
    labctl_env,
    sh,
    ssh,
)

PAIR = "back"


@dataclass
class CloneJob:
    proc: subprocess.Popen[str]
    started: float


def labctl(host: VmHost, profile: str, *args: str, timeout: float = 2400) -> Any:
    return host.run.labctl("-p", profile, *args, timeout=timeout, env=labctl_env())


def vminfo(host: VmHost, name: str) -> dict[str, str]:
    out = host.run.manage("showvminfo", name, "--machinereadable").stdout
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k.strip('"'): v.strip('"') for k, v in pairs}


def vbox_log(host: VmHost, name: str) -> str:
    return host.run.host_path(f"{VBOX_HOME}/machines/{name}/Logs/VBox.log").read_text()


@pytest.fixture(scope="module")
def clone_job(vm_host: VmHost, lab: Lab) -> Iterator[CloneJob]:
    """``labctl clone prod-back --linked`` started from the saved production VM; yields once
    the standby runs (its first boot, cable out), so the tests below overlap with its boot."""
    proc = subprocess.Popen(
        vm_host.run.argv("python3", "-m", "labctl", "--debug", "-p", lab.profile_inside,
                         "clone", PROD,
                         "--linked", "--json", env=labctl_env()),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    job = CloneJob(proc, time.monotonic())
    try:
        while proc.poll() is None and STANDBY not in vm_host.running_vms():
            time.sleep(1)
        yield job
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_guest_artifacts_are_cached_by_recipe(vm_host: VmHost, guest: GuestArtifacts) -> None:
    """The kernel and disk are built once per recipe: asking again returns the same files."""
    FIGURES["kernel_build_s"] = guest.kernel.seconds
    FIGURES["disk_build_s"] = guest.disk.seconds
    again_kernel, again_disk = ensure_kernel(vm_host.run.build), ensure_disk_image()
    assert (again_kernel.built, again_disk.built) == (False, False)
    assert again_kernel.iso == guest.kernel.iso and again_disk.path == guest.disk.path
    config = (guest.kernel.path.parent / "config").read_text()
    for option in ("CONFIG_KERNEL_LZ4=y", "CONFIG_VBOXGUEST=y", "CONFIG_E1000=y"):
        assert option in config


def test_virtualbox_real_vms_clone_boots_the_standby_cold_with_its_cable_out(
    vm_host: VmHost, lab: Lab, clone_job: CloneJob
) -> None:
    """The standby of a saved production VM: VirtualBox copied the memory image, labctl threw
    it away -- its first start is a cold boot (no saved state loaded), on a new MAC, with the
    lab NIC's cable out while it still has production's identity."""
    assert clone_job.proc.poll() is None, clone_job.proc.communicate()
    standby, prod = vminfo(vm_host, STANDBY), vminfo(vm_host, PROD)
    assert standby["cableconnected1"] == "off"
    assert standby["macaddress1"] != prod["macaddress1"]
    assert prod["VMState"] == "saved"  # production is not touched by the clone
    log = vbox_log(vm_host, STANDBY)
    assert "Falling back on IEM: Driverless mode" in log
    assert "SSM: File header" not in log  # no saved state was loaded: a cold boot


def test_virtualbox_real_vms_up_with_the_vboxmanage_driver_resumes_the_saved_production(
    vm_host: VmHost, lab: Lab, clone_job: CloneJob
) -> None:
    """``labctl up`` (VBoxManage driver, through the driverless startvm) on a suspended machine
    resumes it: the guest answers as itself and its uptime spans the time before the save."""
    started = time.monotonic()
    done = labctl(vm_host, lab.vboxmanage_profile, "up", PROD)
    FIGURES["prod_resume_to_ssh_s"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert vminfo(vm_host, PROD)["VMState"] == "running"
    assert "SSM: File header" in vbox_log(vm_host, PROD)  # restored from the saved state
    client, login = ssh(lab, lab.prod.address)
    FIGURES["ssh_login_s"] = login
    try:
        assert sh(client, "cat /etc/machine-id").strip() == lab.prod.machine_id
        assert sh(client, "hostname").strip() == PROD
        assert host_key(client) == lab.prod.host_key_pub
        uptime = float(sh(client, "cut -d' ' -f1 /proc/uptime"))
        assert uptime > time.monotonic() - started + 60  # it had booted before it was saved
        started = time.monotonic()
        sh(client, "true")
        FIGURES["ssh_command_s"] = time.monotonic() - started
    finally:
        client.close()


def test_virtualbox_real_vms_clone_has_its_own_identity(
    vm_host: VmHost, lab: Lab, clone_job: CloneJob
) -> None:
    """The standby: hostname, machine-id, host key and address of its own (read from the guest
    directly), set through guest control while its cable was out, then plugged in."""
    out, err = clone_job.proc.communicate(timeout=3600)
    FIGURES["clone_s"] = time.monotonic() - clone_job.started
    assert clone_job.proc.returncode == 0, out + err
    result = json.loads(out)
    assert (result["standby"], result["created"], result["linked"]) == (STANDBY, True, True)
    assert vminfo(vm_host, STANDBY)["cableconnected1"] == "on"
    client, login = ssh(lab, lab.standby_address)
    FIGURES["ssh_login_standby_s"] = login
    try:
        assert sh(client, "hostname").strip() == STANDBY
        machine_id = sh(client, "cat /etc/machine-id").strip()
        assert len(machine_id) == 32 and machine_id != lab.prod.machine_id
        assert host_key(client) != lab.prod.host_key_pub
        addrs = sh(client, "ip -o -4 addr show dev eth0")
        assert lab.standby_address in addrs and lab.prod.address not in addrs
    finally:
        client.close()
    # production answers as itself still: nothing of the clone reached its address
    client, _login = ssh(lab, lab.prod.address)
    try:
        assert host_key(client) == lab.prod.host_key_pub
    finally:
        client.close()
