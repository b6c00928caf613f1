"""Real VirtualBox 7.2 VMs, powered on in driverless mode (interpreted guests), driven by labctl.

The production VM is what a user has before labctl: a configured Debian machine (systemd, sshd,
a static address on the lab network, Guest Additions). labctl runs inside the sandbox's Python
with ``driver = "pyvbox"`` and ``driverless = true``; the VM starts through the driverless
VBoxManage wrapper (tests/vbox/vmhost.py). Everything is checked from outside labctl too:
VirtualBox's own log and state, and the guest read directly over SSH.

Part of the test command (about 10 min warm here: one interpreted systemd boot). The rest of
the flow (clone with its own identity) is in e2e_real_vms.py, run explicitly: it does not fit
the test command's budget on an interpreting host.
"""

from __future__ import annotations

import time

from tests.vbox.guest_disk import ensure_disk_image
from tests.vbox.guest_kernel import ensure_kernel
from tests.vbox.sandbox import VBOX_HOME
from tests.vbox.vmhost import VmHost
from tests.vbox.vms.conftest import GuestArtifacts
from tests.vbox.vms.machines import FIGURES, PROD, Lab, host_key, labctl_env, sh, ssh


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
        assert host_key(client) == lab.prod.host_key_pub
        started = time.monotonic()
        sh(client, "true")
        FIGURES["ssh_command_s"] = time.monotonic() - started
    finally:
        client.close()
