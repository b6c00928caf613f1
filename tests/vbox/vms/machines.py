"""The real-VM tier's production machine and profile (test harness).

``create_production_vm`` makes what the user has before labctl: a registered VM booting the
guest kernel's ISO with the guest disk (configured as this machine) on SATA, NIC 1 on the run's
VDE switch, the serial console logged to a file. ``write_profile`` writes a labctl profile for
it (``driver = "pyvbox"``, ``driverless = true``, the interpreted host's deadlines).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from tests.vbox.cache import cached, recipe_digest
from tests.vbox.guest_disk import GUEST_PASSWORD, INTERFACE, Identity, make_production_vdi
from tests.vbox.sandbox import VBOX_HOME, SandboxError, processes_in
from tests.vbox.vmhost import SWITCH, VmHost

PASSWORD_ENV = "LABCTL_TEST_GUEST_PASSWORD"
PROD = "prod-back"
STANDBY = "prod-back-standby"
FIGURES: dict[str, float] = {}  # bench/vbox_real_vms.py prints them (LABCTL_VM_FIGURES)
REPORTS: dict[str, object] = {}  # labctl's JSON documents by step, kept with the VM logs
# deadlines of an interpreted host (~8 M guest instructions/s): systemd guests take ~10 min
TIMEOUTS = {
    "connect": 120.0, "boot": 1800.0, "command": 1200.0, "guest": 600.0, "stop": 30.0,
    "check": 60.0,  # an interpreted guest logs in in 10-15 s, two at once slower
}  # fmt: skip


@dataclass(frozen=True)
class Lab:
    profile_inside: str  # the profile's path inside the sandbox (driver = "pyvbox")
    vboxmanage_profile: str  # the same lab with driver = "vboxmanage"
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


def _vm_settings(name: str) -> list[list[str]]:
    """The VBoxManage commands (after ``createvm``) that make the production VM; part of the
    saved production VM's recipe."""
    iso, vdi = f"{VBOX_HOME}/boot.iso", f"{VBOX_HOME}/machines/{name}/{name}.vdi"
    return [
        ["modifyvm", name, "--memory", "256", "--cpus", "1", "--ioapic", "on",
         "--boot1", "dvd", "--boot2", "disk", "--boot3", "none", "--boot4", "none",
         "--usb", "off", "--audio-enabled", "off", "--vram", "16",
         "--uart1", "0x3F8", "4", "--uart-mode1", "file", f"{VBOX_HOME}/{name}.serial",
         "--nic1", "generic", "--nictype1", "82540EM", "--nic-generic-drv1", "VDE",
         "--nic-property1", f"network={SWITCH}", "--cableconnected1", "on"],
        ["storagectl", name, "--name", "SATA", "--add", "sata", "--portcount", "1"],
        ["storageattach", name, "--storagectl", "SATA", "--port", "0", "--device", "0",
         "--type", "hdd", "--medium", vdi],
        ["storagectl", name, "--name", "IDE", "--add", "ide"],
        ["storageattach", name, "--storagectl", "IDE", "--port", "0", "--device", "0",
         "--type", "dvddrive", "--medium", iso],
    ]  # fmt: skip


def create_production_vm(host: VmHost, name: str, iso: Path, image: Path, address: str) -> Identity:
    """The user's configured machine, powered off: its disk (in its machine folder) made from
    the guest image with its own identity, the boot ISO, NIC 1 on the run's VDE switch."""
    run, manage = host.run, host.run.manage
    key = lab_key(host)
    manage("createvm", "--name", name, "--ostype", "Debian_64", "--register")
    identity = make_production_vdi(run, image, f"{VBOX_HOME}/machines/{name}/{name}.vdi",
                                   hostname=name, address=address,
                                   lab_pubkey=key.with_suffix(".pub").read_text())  # fmt: skip
    iso_inside = f"{VBOX_HOME}/boot.iso"
    if not run.host_path(iso_inside).exists():
        shutil.copy(iso, run.host_path(iso_inside))
    for command in _vm_settings(name):
        manage(*command)
    return identity


# -- the production VM in a cached saved state --------------------------------------------
# Booting an interpreted systemd guest takes ~10 min; a configured machine that is suspended
# (saved) is an ordinary VirtualBox state. The production VM is booted once per recipe, saved,
# and its machine folder (settings, disk, memory image) cached with the lab key its disk
# trusts; every run registers a copy. Its address is fixed (the memory image holds it).
PRODUCTION_VERSION = 1
PRODUCTION_ADDRESS = 10  # host part on the tier's fixed subnet
VM_SUBNET = 251  # the tier's subnet: 10.250.251.0/24


@dataclass(frozen=True)
class Production:
    identity: Identity
    built: bool
    boot_to_ssh_s: float  # the cold boot when it was built here, else 0
    install_s: float  # registering this run's copy


def production_recipe(host: VmHost, iso: Path, image: Path) -> dict[str, object]:
    return {
        "version": PRODUCTION_VERSION, "name": PROD, "kernel": iso.parent.name,
        "disk": image.parent.name, "layers": [str(p) for p in host.run.build.layers],
        "sandbox": str(host.run.build.root), "address": host.address(PRODUCTION_ADDRESS),
        "settings": _vm_settings(PROD),
    }  # fmt: skip


def ensure_production(host: VmHost, iso: Path, image: Path) -> Production:
    """The production VM registered in this run, in saved state (booted once per recipe)."""
    run = host.run
    recipe = production_recipe(host, iso, image)
    boot: dict[str, float] = {}

    def build(staging: Path) -> None:
        identity = create_production_vm(host, PROD, iso, image, host.address(PRODUCTION_ADDRESS))
        started = time.monotonic()
        run.run("/usr/local/bin/VBoxManage-driverless", "startvm", PROD, timeout=900)
        _wait_for_ssh(identity.address, deadline=TIMEOUTS["boot"])
        boot["boot_to_ssh_s"] = time.monotonic() - started
        # let the boot finish before the memory image is taken (a quiet machine to resume)
        client, _login = ssh_key(lab_key(host), identity.address)
        try:
            client.exec_command("systemctl is-system-running --wait", timeout=1200)[1].read()
        finally:
            client.close()
        run.manage("controlvm", PROD, "savestate")
        # the frontend still holds the session for a moment after "saved" (a clone's snapshot
        # then fails: "Failed to get a console object from the direct session")
        _wait_frontend_gone(host, PROD, deadline=120)
        folder = run.host_path(f"{VBOX_HOME}/machines/{PROD}")
        subprocess.run(["cp", "-a", "--sparse=always", str(folder), str(staging / "machine")],
                       check=True)  # fmt: skip
        key = lab_key(host)
        shutil.copy(key, staging / "id_ed25519")
        shutil.copy(key.with_suffix(".pub"), staging / "id_ed25519.pub")
        (staging / "identity.json").write_text(json.dumps(identity.__dict__) + "\n")

    entry = cached(f"production-{recipe_digest(recipe)}", recipe, build)
    identity = Identity(**json.loads((entry.path / "identity.json").read_text()))
    started = time.monotonic()
    if not entry.built:  # this run's copy of the saved machine
        folder = run.host_path(f"{VBOX_HOME}/machines/{PROD}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--sparse=always", str(entry.path / "machine"), str(folder)],
                       check=True)  # fmt: skip
        key = run.host_path(f"{VBOX_HOME}/lab/id_ed25519")
        key.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(entry.path / "id_ed25519", key)
        shutil.copy(entry.path / "id_ed25519.pub", key.with_suffix(".pub"))
        key.chmod(0o600)
        shutil.copy(iso, run.host_path(f"{VBOX_HOME}/boot.iso"))
        run.manage("registervm", f"{VBOX_HOME}/machines/{PROD}/{PROD}.vbox")
    return Production(identity, entry.built, boot.get("boot_to_ssh_s", 0.0),
                      time.monotonic() - started)  # fmt: skip


def _wait_frontend_gone(host: VmHost, name: str, *, deadline: float) -> None:
    marker = f"--startvm\0{name}\0".encode()
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        alive = False
        for pid in processes_in(host.run.root):
            with contextlib.suppress(OSError):
                alive = alive or marker in Path(f"/proc/{pid}/cmdline").read_bytes()
        if not alive:
            return
        time.sleep(0.5)
    raise SandboxError(f"the frontend of {name} did not exit within {deadline:g} s of savestate")


def _wait_for_ssh(address: str, *, deadline: float) -> None:
    ip, until = address.split("/")[0], time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection((ip, 22), timeout=2) as sock:
                sock.settimeout(30)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > until:
            raise SandboxError(f"the production VM did not answer SSH at {ip} "
                               f"within {deadline:g} s")  # fmt: skip
        time.sleep(2)


def write_profile(host: VmHost, prod: Identity, *, standby_address: str, vip: str) -> Lab:
    """The lab's profile (pyvbox driver) and the same lab through the VBoxManage driver."""
    key = lab_key(host)
    inside = f"{VBOX_HOME}/lab/profile.toml"
    timeouts = "\n".join(f"{k} = {v}" for k, v in TIMEOUTS.items())
    for path, driver in ((inside, "pyvbox"), (inside.replace(".toml", "-vboxmanage.toml"),
                                              "vboxmanage")):  # fmt: skip
        host.run.host_path(path).write_text(f"""\
[lab]
name = "vmtier"
backend = "virtualbox"

[lab.virtualbox]
driver = "{driver}"
driverless = true
# a boot costs minutes here: the standby takes its identity without a second one
identity_restart = "services"
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
    return Lab(inside, inside.replace(".toml", "-vboxmanage.toml"), key, prod, standby_address,
               vip)  # fmt: skip


def labctl_env() -> dict[str, str]:
    return {PASSWORD_ENV: GUEST_PASSWORD, "LABCTL_HOME": f"{VBOX_HOME}/labctl-home"}


def ssh(lab: Lab, address: str) -> tuple[paramiko.SSHClient, float]:
    """A root SSH session to ``address`` with the lab key (host side, not labctl's), and how
    long connecting and logging in took."""
    return ssh_key(lab.key, address)


def ssh_key(key: Path, address: str) -> tuple[paramiko.SSHClient, float]:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    started = time.monotonic()
    client.connect(address.split("/")[0], username="root", key_filename=str(key),
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
