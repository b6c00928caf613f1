"""Real VirtualBox 7.2 VMs, powered on in driverless mode (interpreted guests), driven by labctl.

The production VM is what a user has before labctl: a configured Debian machine (systemd, sshd,
a static address on the lab network, Guest Additions). labctl runs inside the sandbox's Python
with ``driver = "pyvbox"`` and ``driverless = true``; its VMs start through the driverless
VBoxManage wrapper (tests/vbox/vmhost.py). Everything is checked from outside labctl too:
VirtualBox's own log and state, and the guest read directly over SSH.
"""

from __future__ import annotations

import time

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

FIGURES: dict[str, float] = {}
PROD = "prod-back"


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


def test_virtualbox_real_vms_up_boots_production_to_ssh(vm_host: VmHost, lab: Lab) -> None:
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


def _timed(action: object) -> float:
    started = time.monotonic()
    action()  # type: ignore[operator]
    return time.monotonic() - started
