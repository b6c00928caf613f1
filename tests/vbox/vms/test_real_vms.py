"""Real VirtualBox 7.2 VMs, powered on in driverless mode (interpreted guests), driven by labctl.

The production VM is what a user has before labctl: a configured Debian machine (systemd, sshd,
a static address on the lab network, Guest Additions). labctl runs inside the sandbox's Python
with ``driver = "pyvbox"`` and ``driverless = true``; its VMs start through the driverless
VBoxManage wrapper (tests/vbox/vmhost.py). Everything is checked from outside labctl too:
VirtualBox's own log and state, and the guest read directly over SSH.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from tests.vbox.guest_disk import ensure_disk_image
from tests.vbox.guest_kernel import ensure_kernel
from tests.vbox.sandbox import VBOX_HOME
from tests.vbox.vmhost import VmHost
from tests.vbox.vms.conftest import GuestArtifacts
from tests.vbox.vms.machines import (
    Lab,
    create_production_vm,
    labctl_env,
    write_profile,
)

FIGURES: dict[str, float] = {}  # bench/vbox_real_vms.py prints them (LABCTL_VM_FIGURES)
PROD = "prod-back"
STANDBY = "prod-back-standby"


def ssh(lab: Lab, address: str) -> tuple[paramiko.SSHClient, float]:
    """A root SSH session to ``address`` with the lab key (host side, not labctl's), and how long
    connecting and logging in took."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    started = time.monotonic()
    client.connect(address.split("/")[0], username="root", key_filename=str(lab.key),
                   timeout=120, banner_timeout=300, auth_timeout=300,
                   look_for_keys=False, allow_agent=False)  # fmt: skip
    return client, time.monotonic() - started


def sh(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=600)
    out = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
    return out


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[dict[str, float]]:
    yield FIGURES
    target = os.environ.get("LABCTL_VM_FIGURES")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2) + "\n")


@pytest.fixture(scope="module")
def lab(vm_host: VmHost, guest: GuestArtifacts) -> Lab:
    prod = create_production_vm(vm_host, PROD, guest.kernel.iso, guest.disk.path,
                                vm_host.address(10))  # fmt: skip
    return write_profile(vm_host, prod, standby_address=vm_host.address(20),
                         vip=vm_host.address(30))  # fmt: skip


def test_guest_artifacts_are_cached_by_recipe(vm_host: VmHost, guest: GuestArtifacts) -> None:
    """The kernel and disk are built once per recipe: asking again returns the same files."""
    FIGURES["kernel_build_s"] = guest.kernel.seconds
    FIGURES["disk_build_s"] = guest.disk.seconds
    build = vm_host.run.build
    again_kernel, again_disk = ensure_kernel(build), ensure_disk_image()
    assert (again_kernel.built, again_disk.built) == (False, False)
    assert again_kernel.iso == guest.kernel.iso and again_disk.path == guest.disk.path
    assert guest.kernel.iso.stat().st_size > 0
    config = (guest.kernel.path.parent / "config").read_text()
    for option in ("CONFIG_KERNEL_LZ4=y", "CONFIG_VBOXGUEST=y", "CONFIG_E1000=y"):
        assert option in config


@dataclass
class CloneJob:
    proc: subprocess.Popen[str]
    started: float


@pytest.fixture(scope="module")
def clone_job(vm_host: VmHost, lab: Lab) -> Iterator[CloneJob]:
    """``labctl clone prod-back --linked`` started while production is still powered off (the
    clone's first boot is a cold boot from the powered-off base snapshot); production is
    started next to it once the standby runs, so both slow boots overlap."""
    proc = subprocess.Popen(
        vm_host.run.argv("python3", "-m", "labctl", "-p", lab.profile_inside, "clone", PROD,
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


def test_virtualbox_real_vms_up_boots_production_to_ssh(
    vm_host: VmHost, lab: Lab, clone_job: CloneJob
) -> None:
    """``labctl up`` (pyvbox, driverless host) powers the user's VM on and waits for SSH; the
    machine that answers is the configured one."""
    started = time.monotonic()
    done = vm_host.run.labctl("-p", lab.profile_inside, "up", PROD, timeout=2400,
                              env=labctl_env())  # fmt: skip
    FIGURES["prod_boot_to_ssh_s"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert PROD in vm_host.running_vms()
    log = vm_host.run.host_path(f"{VBOX_HOME}/machines/{PROD}/Logs/VBox.log").read_text()
    assert "Falling back on IEM: Driverless mode" in log
    client, login = ssh(lab, lab.prod.address)
    FIGURES["ssh_login_s"] = login
    try:
        assert sh(client, "cat /etc/machine-id").strip() == lab.prod.machine_id
        assert sh(client, "hostname").strip() == PROD
        host_key = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        assert f"{host_key.get_name()} {host_key.get_base64()}" == lab.prod.host_key_pub
        FIGURES["ssh_command_s"] = _timed(lambda: sh(client, "true"))
    finally:
        client.close()


def test_virtualbox_real_vms_clone_has_its_own_identity(
    vm_host: VmHost, lab: Lab, clone_job: CloneJob
) -> None:
    """The standby: a linked clone with its own MAC (showvminfo), hostname, machine-id and host
    key (read from the guest directly), answering SSH at its own address."""
    out, err = clone_job.proc.communicate(timeout=3600)
    FIGURES["clone_s"] = time.monotonic() - clone_job.started
    assert clone_job.proc.returncode == 0, out + err
    info = {
        n: dict(line.split("=", 1) for line in vm_host.run.manage(
            "showvminfo", n, "--machinereadable").stdout.splitlines() if "=" in line)
        for n in (PROD, STANDBY)
    }  # fmt: skip
    assert info[STANDBY]["macaddress1"] != info[PROD]["macaddress1"]
    assert info[STANDBY]["cableconnected1"] == '"on"'
    client, login = ssh(lab, lab.standby_address)
    FIGURES["ssh_login_standby_s"] = login
    try:
        assert sh(client, "hostname").strip() == STANDBY
        machine_id = sh(client, "cat /etc/machine-id").strip()
        assert machine_id and machine_id != lab.prod.machine_id
        key = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        assert f"{key.get_name()} {key.get_base64()}" != lab.prod.host_key_pub
        addrs = sh(client, "ip -o -4 addr show dev eth0")
        assert lab.standby_address in addrs and lab.prod.address not in addrs
    finally:
        client.close()


def _timed(action: object) -> float:
    started = time.monotonic()
    action()  # type: ignore[operator]
    return time.monotonic() - started
