"""Session fixtures for real VirtualBox 7.2 (the sandbox of tests/vbox/sandbox.py).

``vbox_sandbox`` (session) -> :class:`SandboxRun`: builds the cached sandbox on first use
(a failed build FAILS the tier, never skips it), opens the run's overlay, and at the end
removes every VM, ends every VirtualBox process of the run by PID and removes its mounts.
``vbox_vms`` (function) -> :class:`VmMaker`: creates VMs with the real VBoxManage the way a
user's production VM looks (disk, SATA, NIC 1 on a VDE switch), and unregisters and deletes
every VM registered during the test afterwards.

Import both into a conftest.py to use them (tests/vbox/conftest.py, tests/contract/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from labctl.hypervisor.vboxmanage import parse_machinereadable
from tests.vbox.sandbox import VBOX_HOME, SandboxError, SandboxRun, ensure_sandbox

REQUIRED = ("debootstrap", "chroot", "mount", "umount")
BUILD_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="session")
def vbox_sandbox() -> Iterator[SandboxRun]:
    problems = []
    if os.geteuid() != 0:
        problems.append("the VirtualBox sandbox needs root (chroot, mounts)")
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        problems.append(f"missing {', '.join(missing)} (apt-get install debootstrap)")
    if problems:
        pytest.fail("VirtualBox sandbox prerequisites: " + "; ".join(problems), pytrace=False)
    started = time.monotonic()
    try:
        build = ensure_sandbox()
        BUILD_SECONDS["build"] = build.seconds
        run = SandboxRun.open(build)
    except SandboxError as exc:
        pytest.fail(str(exc), pytrace=False)
    BUILD_SECONDS["ready"] = time.monotonic() - started
    try:
        yield run
    finally:
        for name in registered_vms(run):
            run.manage("unregistervm", name, "--delete", check=False)
        run.close()


def registered_vms(run: SandboxRun) -> list[str]:
    out = run.manage("list", "vms").stdout
    return [line.rpartition(" ")[0].strip().strip('"') for line in out.splitlines() if line]


@dataclass
class VmMaker:
    """Creates VMs in the sandbox with the real VBoxManage (outside labctl)."""

    run: SandboxRun

    def create(
        self, name: str, *, nic: tuple[str, ...] | None = None, disk_mb: int = 8,
        dvd: bool = False,
    ) -> None:  # fmt: skip
        """A powered-off VM with a small VDI on SATA port 0 and NIC 1 (default: generic VDE);
        ``dvd``: an ISO in a DVD drive on IDE too (as users keep their installer's)."""
        manage = self.run.manage
        manage("createvm", "--name", name, "--ostype", "Debian_64", "--register")
        disk = f"{VBOX_HOME}/disks/{name}.vdi"
        manage("createmedium", "disk", "--filename", disk, "--size", str(disk_mb))
        manage("storagectl", name, "--name", "SATA", "--add", "sata", "--portcount", "1")
        manage("storageattach", name, "--storagectl", "SATA", "--port", "0", "--device", "0",
               "--type", "hdd", "--medium", disk)  # fmt: skip
        nic_args = nic or (
            "--nic1", "generic", "--nictype1", "82540EM", "--nic-generic-drv1", "VDE",
            "--nic-property1", "network=/run/labctl-vde-test",
        )  # fmt: skip
        manage("modifyvm", name, "--memory", "128", *nic_args)
        if dvd:
            iso = self.run.host_path(f"{VBOX_HOME}/disks/{name}.iso")
            subprocess.run(["dd", "if=/dev/zero", f"of={iso}", "bs=2048", "count=32"],
                           check=True, capture_output=True)  # fmt: skip
            manage("storagectl", name, "--name", "IDE", "--add", "ide")
            manage("storageattach", name, "--storagectl", "IDE", "--port", "0", "--device",
                   "0", "--type", "dvddrive", "--medium", self.run.inside_path(iso))  # fmt: skip

    def info(self, name: str) -> dict[str, str]:
        return parse_machinereadable(
            self.run.manage("showvminfo", name, "--machinereadable").stdout
        )

    def exists(self, name: str) -> bool:
        return self.run.manage("showvminfo", name, "--machinereadable", check=False).returncode == 0

    def extradata(self, name: str, key: str) -> str | None:
        out = self.run.manage("getextradata", name, key).stdout.strip()
        return out.removeprefix("Value: ") if out.startswith("Value: ") else None


@pytest.fixture
def vbox_vms(vbox_sandbox: SandboxRun) -> Iterator[VmMaker]:
    before = set(registered_vms(vbox_sandbox))
    maker = VmMaker(vbox_sandbox)
    try:
        yield maker
    finally:
        remove_vms(maker, set(registered_vms(vbox_sandbox)) - before)


def remove_vms(maker: VmMaker, names: set[str]) -> None:
    """Unregister and delete VMs, clones (tagged by labctl) before the VMs they came from."""
    tagged = {n for n in names if maker.extradata(n, "labctl/lab") is not None}
    for name in [*sorted(tagged), *sorted(names - tagged)]:
        maker.run.manage("unregistervm", name, "--delete", check=False)
    for name in names:  # what a failed deletion left on disk
        shutil.rmtree(maker.run.host_path(f"{VBOX_HOME}/machines/{name}"), ignore_errors=True)
