"""The real-VM tier's production machine and profile (test harness).

``create_production_vm`` makes what the user has before labctl: a registered VM booting the
guest kernel's ISO with the guest disk (configured as this machine) on SATA, NIC 1 on the run's
VDE switch, the serial console logged to a file. ``write_profile`` writes a labctl profile for
it (``driver = "pyvbox"``, ``driverless = true``, the interpreted host's deadlines).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from tests.vbox.guest_disk import GUEST_PASSWORD, INTERFACE, Identity, make_production_vdi
from tests.vbox.sandbox import VBOX_HOME
from tests.vbox.vmhost import SWITCH, VmHost

PASSWORD_ENV = "LABCTL_TEST_GUEST_PASSWORD"
PROD = "prod-back"
STANDBY = "prod-back-standby"
FIGURES: dict[str, float] = {}  # bench/vbox_real_vms.py prints them (LABCTL_VM_FIGURES)
# deadlines of an interpreted host (~8 M guest instructions/s): systemd guests take ~10 min
TIMEOUTS = {"connect": 120.0, "boot": 1800.0, "command": 1200.0, "guest": 600.0, "stop": 30.0}


@dataclass(frozen=True)
class Lab:
    profile_inside: str  # the profile's path inside the sandbox
    key: Path  # host path of the lab's private key (the production disk trusts it)
    prod: Identity
    standby_address: str
    vip: str


def lab_key(host: VmHost) -> Path:
    key = host.run.host_path(f"{VBOX_HOME}/lab/id_ed25519")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labctl-vm-tier",
                        "-f", str(key)], check=True)  # fmt: skip
    return key


def create_production_vm(host: VmHost, name: str, iso: Path, image: Path, address: str) -> Identity:
    run, manage = host.run, host.run.manage
    key = lab_key(host)
    vdi = f"{VBOX_HOME}/disks/{name}.vdi"
    run.host_path(f"{VBOX_HOME}/disks").mkdir(parents=True, exist_ok=True)
    identity = make_production_vdi(run, image, vdi, hostname=name, address=address,
                                   lab_pubkey=key.with_suffix(".pub").read_text())  # fmt: skip
    iso_inside = f"{VBOX_HOME}/boot.iso"
    if not run.host_path(iso_inside).exists():
        shutil.copy(iso, run.host_path(iso_inside))
    manage("createvm", "--name", name, "--ostype", "Debian_64", "--register")
    manage("modifyvm", name, "--memory", "256", "--cpus", "1", "--ioapic", "on",
           "--boot1", "dvd", "--boot2", "disk", "--boot3", "none", "--boot4", "none",
           "--usb", "off", "--audio-enabled", "off", "--vram", "16",
           "--uart1", "0x3F8", "4", "--uart-mode1", "file", f"{VBOX_HOME}/{name}.serial",
           "--nic1", "generic", "--nictype1", "82540EM", "--nic-generic-drv1", "VDE",
           "--nic-property1", f"network={SWITCH}", "--cableconnected1", "on")  # fmt: skip
    manage("storagectl", name, "--name", "SATA", "--add", "sata", "--portcount", "1")
    manage("storageattach", name, "--storagectl", "SATA", "--port", "0", "--device", "0",
           "--type", "hdd", "--medium", vdi)  # fmt: skip
    manage("storagectl", name, "--name", "IDE", "--add", "ide")
    manage("storageattach", name, "--storagectl", "IDE", "--port", "0", "--device", "0",
           "--type", "dvddrive", "--medium", iso_inside)  # fmt: skip
    return identity


def write_profile(host: VmHost, prod: Identity, *, standby_address: str, vip: str) -> Lab:
    key = lab_key(host)
    inside = f"{VBOX_HOME}/lab/profile.toml"
    timeouts = "\n".join(f"{k} = {v}" for k, v in TIMEOUTS.items())
    host.run.host_path(inside).write_text(f"""\
[lab]
name = "vmtier"
backend = "virtualbox"

[lab.virtualbox]
driver = "pyvbox"
driverless = true
vboxmanage = "/usr/local/bin/VBoxManage-driverless"
nic = 1
guest_user = "root"
guest_password_env = "{PASSWORD_ENV}"

[ssh]
user = "root"
key = "{host.run.inside_path(key)}"

[timeouts]
{timeouts}

[machines.{prod.hostname}]
address = "{prod.address}"

[pairs.back]
primary = "{prod.hostname}"
standby = "{prod.hostname}-standby"
standby_address = "{standby_address}"
interface = "{INTERFACE}"
vrid = 51
vip = ["{vip}"]
priority = {{ primary = 101, standby = 100 }}
advert_int = 1
auth_pass = "vmtier"
""")
    return Lab(inside, key, prod, standby_address, vip)


def labctl_env() -> dict[str, str]:
    return {PASSWORD_ENV: GUEST_PASSWORD, "LABCTL_HOME": f"{VBOX_HOME}/labctl-home"}


def ssh(lab: Lab, address: str) -> tuple[paramiko.SSHClient, float]:
    """A root SSH session to ``address`` with the lab key (host side, not labctl's), and how
    long connecting and logging in took."""
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


def host_key(client: paramiko.SSHClient) -> str:
    transport = client.get_transport()
    assert transport is not None
    key = transport.get_remote_server_key()
    return f"{key.get_name()} {key.get_base64()}"
