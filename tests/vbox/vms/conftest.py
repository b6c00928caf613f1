"""Fixtures of the real-VM tier: VirtualBox 7.2 VMs powered on in driverless mode (harness).

``vm_host`` (session) -> :class:`VmHost`: the sandbox with its VM layer, the guest kernel (boot
ISO) and guest disk image (all cached, built on first use, the kernel and the disk at once; a
failed build FAILS the tier, never skips it), the run's private subnet, Xvfb, the VDE switch and
tap, the driverless VBoxManage wrapper. At the end every VM of the run is powered off,
unregistered and deleted and every process, mount and the tap removed; the VMs' logs are copied
to ``$LABCTL_VBOX_LOGS`` (default /var/tmp/labctl-vbox-logs, the last run's only) first.
``guest`` (session) -> :class:`GuestArtifacts`: what was built and how long it took.
``lab`` (session) -> :class:`Lab`: the production VM ``prod-back`` (the user's configured
machine, in a saved state: booted once per recipe and cached) and the labctl profiles for it
and its pair. The tier's subnet is fixed (``10.250.{VM_SUBNET}.0/24``): the saved machine keeps
its address.
Figures measured by the tests (``FIGURES``) are written to ``$LABCTL_VM_FIGURES`` at the end.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.conftest import _allocate_subnet
from tests.vbox.fixtures import registered_vms
from tests.vbox.guest_disk import DiskImage, ensure_disk_image
from tests.vbox.guest_kernel import Kernel, ensure_kernel
from tests.vbox.sandbox import SandboxError, SandboxRun, ensure_sandbox, ensure_vm_layer
from tests.vbox.vmhost import VmHost
from tests.vbox.vms.machines import (
    FIGURES,
    REPORTS,
    VM_SUBNET,
    Lab,
    ensure_production,
    write_profile,
)

# the last run's VM logs (VBox.log, the driverless frontends'), kept for diagnosis
LOGS_KEPT = Path(os.environ.get("LABCTL_VBOX_LOGS", "/var/tmp/labctl-vbox-logs"))
REQUIRED = ("debootstrap", "chroot", "mount", "umount", "mkfs.ext4", "debugfs", "ip",
            "ssh-keygen")  # fmt: skip


@dataclass(frozen=True)
class GuestArtifacts:
    kernel: Kernel
    disk: DiskImage
    layer_seconds: float


GUEST: dict[str, GuestArtifacts] = {}


@pytest.fixture(scope="session")
def vm_host() -> Iterator[VmHost]:
    problems = [] if os.geteuid() == 0 else ["the real-VM tier needs root"]
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if not os.path.exists("/dev/net/tun"):
        problems.append("no /dev/net/tun (the VDE switch's host tap)")
    if problems:
        pytest.fail("real-VM prerequisites: " + "; ".join(problems), pytrace=False)
    try:
        started = time.monotonic()
        build = ensure_vm_layer(ensure_sandbox())
        layer_seconds = time.monotonic() - started
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # CPU-bound next to I/O-bound
            kernel_job = pool.submit(ensure_kernel, build)
            disk_job = pool.submit(ensure_disk_image)
            kernel, disk = kernel_job.result(), disk_job.result()
        GUEST["artifacts"] = GuestArtifacts(kernel, disk, layer_seconds)
        run = SandboxRun.open(build)
    except SandboxError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        with _allocate_subnet(only=VM_SUBNET) as subnet:
            host = VmHost.open(run, subnet)
            try:
                yield host
            finally:
                host.power_off_all()
                with contextlib.suppress(OSError):  # diagnosis only: never blocks clean-up
                    host.keep_logs(LOGS_KEPT)
                    (LOGS_KEPT / "reports.json").write_text(json.dumps(REPORTS, indent=1) + "\n")
                for name in registered_vms(run):  # clones first: they hold the base's disk
                    tag = run.manage("getextradata", name, "labctl/lab").stdout.strip()
                    if tag != "No value set!":
                        run.manage("unregistervm", name, "--delete", check=False)
                for name in registered_vms(run):
                    run.manage("unregistervm", name, "--delete", check=False)
                host.close()
    finally:
        run.close()


@pytest.fixture(scope="session")
def guest(vm_host: VmHost) -> GuestArtifacts:
    return GUEST["artifacts"]


@pytest.fixture(scope="session")
def lab(vm_host: VmHost, guest: GuestArtifacts) -> Lab:
    """The user's production VM, suspended (a cached saved state), and the lab's profiles."""
    try:
        prod = ensure_production(vm_host, guest.kernel.iso, guest.disk.path)
    except SandboxError as exc:
        pytest.fail(str(exc), pytrace=False)
    FIGURES["prod_install_s"] = prod.install_s
    if prod.built:
        FIGURES["prod_cold_boot_to_ssh_s"] = prod.boot_to_ssh_s
    return write_profile(vm_host, prod.identity, standby_address=vm_host.address(20),
                         vip=vm_host.address(30))  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def figures() -> Iterator[dict[str, float]]:
    yield FIGURES
    target = os.environ.get("LABCTL_VM_FIGURES")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2) + "\n")
