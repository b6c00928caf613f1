"""The seed's procedure on real VirtualBox 7.2 VMs (driverless: the guests' CPUs are
interpreted), driven by labctl: the user's saved production VM resumed.

The production VM is what a user has before labctl: a configured Debian machine (systemd, sshd,
a static address on the lab network, Guest Additions), suspended in a saved state (cached per
recipe, booted once; tests/vbox/vms/machines.py). labctl runs inside the sandbox's Python with
``driver = "pyvbox"`` (the API: the only guest control that waits long enough for an
interpreted guest) and ``driverless = true``; VMs start through the driverless VBoxManage
wrapper (tests/vbox/vmhost.py); ``labctl up`` here goes through the VBoxManage driver.
Everything labctl claims is also checked from outside it: VirtualBox's own state and logs, the
guests read directly over SSH. The clone, provision, verify, the drills and destroy continue
this session in flow_after_clone.py, run explicitly: provision does not fit the test
command's budget yet, and the clone's driverless start once timed out (600 s) in a run.

The tests run in file order and share one production VM and one standby (the tier's budget).
"""

from __future__ import annotations

import time
from typing import Any

from tests.vbox.guest_disk import ensure_disk_image
from tests.vbox.guest_kernel import ensure_kernel
from tests.vbox.sandbox import VBOX_HOME
from tests.vbox.vmhost import VmHost
from tests.vbox.vms.conftest import GuestArtifacts
from tests.vbox.vms.machines import (
    FIGURES,
    PROD,
    Lab,
    host_key,
    labctl_env,
    sh,
    ssh,
)

PAIR = "back"


def labctl(host: VmHost, profile: str, *args: str, timeout: float = 2400) -> Any:
    return host.run.labctl("-p", profile, *args, timeout=timeout, env=labctl_env())


def vminfo(host: VmHost, name: str) -> dict[str, str]:
    out = host.run.manage("showvminfo", name, "--machinereadable").stdout
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k.strip('"'): v.strip('"') for k, v in pairs}


def vbox_log(host: VmHost, name: str) -> str:
    return host.run.host_path(f"{VBOX_HOME}/machines/{name}/Logs/VBox.log").read_text()


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


def test_virtualbox_real_vms_up_with_the_vboxmanage_driver_resumes_the_saved_production(
    vm_host: VmHost, lab: Lab
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
