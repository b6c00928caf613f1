"""The seed's flow on real VirtualBox 7.2 VMs (interpreted guests): clone with its own identity.

Not collected by the test command (the name does not match test_*.py): on this 2-core host
without VirtualBox's kernel driver the clone alone (cold boot, identity through guest control,
restart, SSH) takes far longer than the test command's budget. Run it explicitly:

    sudo .venv/bin/pytest tests/vbox/vms/e2e_real_vms.py      (or: python -m bench.vbox_real_vms)

``labctl clone prod-back --linked`` is started while production is powered off (the clone's
first boot is a cold boot from the powered-off base snapshot); production is started next to it
once the standby runs, so both slow boots overlap. Identity is checked from outside labctl:
MACs from showvminfo, hostname, machine-id and host key read from the guest directly.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.vbox.vmhost import VmHost
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


@dataclass
class CloneJob:
    proc: subprocess.Popen[str]
    started: float


@pytest.fixture(scope="module")
def clone_job(vm_host: VmHost, lab: Lab) -> Iterator[CloneJob]:
    if PROD in vm_host.running_vms():  # a cold clone: from production powered off
        vm_host.run.manage("controlvm", PROD, "poweroff")
        while PROD in vm_host.running_vms():
            time.sleep(0.5)
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


def test_virtualbox_real_vms_production_up_beside_the_cloning(
    vm_host: VmHost, lab: Lab, clone_job: CloneJob
) -> None:
    started = time.monotonic()
    done = vm_host.run.labctl("-p", lab.profile_inside, "up", PROD, timeout=2400,
                              env=labctl_env())  # fmt: skip
    FIGURES["prod_boot_to_ssh_beside_clone_s"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr


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
        assert host_key(client) != lab.prod.host_key_pub
        addrs = sh(client, "ip -o -4 addr show dev eth0")
        assert lab.standby_address in addrs and lab.prod.address not in addrs
    finally:
        client.close()
