"""The seed's procedure on real VirtualBox 7.2 VMs (driverless: the guests' CPUs are
interpreted), driven by labctl: the user's saved production VM resumed, cloned into its hot
standby, both provisioned with keepalived, verified, broken by failover drills under both
drivers, and the standby destroyed.

The production VM is what a user has before labctl: a configured Debian machine (systemd, sshd,
a static address on the lab network, Guest Additions), suspended in a saved state (cached per
recipe, booted once; tests/vbox/vms/machines.py). labctl runs inside the sandbox's Python with
``driver = "pyvbox"`` (the API: the only guest control that waits long enough for an
interpreted guest) and ``driverless = true``; VMs start through the driverless VBoxManage
wrapper (tests/vbox/vmhost.py); ``labctl up``, the second pair of drills, guest control and
destroy go through the VBoxManage driver. Everything labctl claims is also checked from outside
it: VirtualBox's own state and logs, the guests read directly over SSH. The figures:
``python -m bench.vbox_real_vms``; labctl's drill documents are kept with the VM logs.

The tests run in file order and share one production VM and one standby (the tier's budget).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.drill_events import shown_during_fault
from tests.vbox.guest_disk import ensure_disk_image
from tests.vbox.guest_kernel import ensure_kernel
from tests.vbox.sandbox import VBOX_HOME
from tests.vbox.vmhost import VmHost
from tests.vbox.vms.conftest import GuestArtifacts
from tests.vbox.vms.machines import (
    FIGURES,
    PROD,
    REPORTS,
    STANDBY,
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


def disk_chain(host: VmHost, location: str) -> list[str]:
    """The locations from a disk down to its base, read with ``showmediuminfo``."""
    chain: list[str] = []
    medium = location
    while medium != "base":
        out = host.run.manage("showmediuminfo", "disk", medium).stdout
        fields = dict(re.findall(r"^([A-Za-z ]+):\s+(.*)$", out, re.M))
        chain.append(fields["Location"])
        medium = fields["Parent UUID"]
    return chain


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


@dataclass
class CloneJob:
    proc: subprocess.Popen[str]
    started: float


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
    log = vbox_log(vm_host, STANDBY)
    assert "Falling back on IEM: Driverless mode" in log
    assert "SSM: File header" not in log  # no saved state was loaded: a cold boot


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


def test_virtualbox_real_vms_provision_then_verify_puts_the_vip_on_the_primary(
    vm_host: VmHost, lab: Lab
) -> None:
    """keepalived installed offline from the guests' apt cache, configured, started; verify
    sees the VIP on the primary only and reaches it over the VDE segment (its SSH host key is
    the primary's)."""
    started = time.monotonic()
    done = labctl(vm_host, lab.profile_inside, "provision", "pair", PAIR)
    FIGURES["provision_s"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    started = time.monotonic()
    done = labctl(vm_host, lab.profile_inside, "verify", "--wait", "300", "--json")
    FIGURES["verify_s"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    (pair,) = json.loads(done.stdout)["pairs"]
    assert (pair["verdict"], pair["holder"]) == ("OK", PROD)
    (vip,) = pair["vips"]
    assert vip["holders"] == [PROD] and vip["answered_by"] == PROD
    states = {n["name"]: (n["vrrp_state"], n["service"]) for n in pair["nodes"]}
    assert states == {PROD: ("MASTER", "active"), STANDBY: ("BACKUP", "active")}
    client, _login = ssh(lab, lab.vip)  # from outside labctl: the VIP is the primary
    try:
        assert host_key(client) == lab.prod.host_key_pub
    finally:
        client.close()


def drill(host: VmHost, profile: str, fault: str) -> dict[str, Any]:
    started = time.monotonic()
    done = labctl(host, profile, "failover", PAIR, "--fault", fault, "--json")
    report: dict[str, Any] = json.loads(done.stdout)
    driver = "vboxmanage" if profile.endswith("vboxmanage.toml") else "pyvbox"
    REPORTS[f"failover_{fault}_{driver}"] = report  # the samples, for a failure's diagnosis
    assert done.returncode == 0, (report["problems"], done.stderr)
    assert report["ok"] and report["final_holders"] == [PROD]
    assert len(report["trials"]) == 1
    trial: dict[str, Any] = report["trials"][0]
    assert (trial["faulted"], trial["peer"]) == (PROD, STANDBY)
    # the standby took over while the fault lasted, then the primary took the VIP back
    assert trial["takeover"] is not None and 0 < trial["takeover"] < trial["recovered_at"]
    assert trial["settled_on"] == PROD and trial["failback"] is not None
    # the frozen / unplugged primary could not be asked: unreachable, never "not holding"
    shown = shown_during_fault(trial, PROD)
    assert shown[-1] is None and False not in shown, trial["events"]
    FIGURES[f"failover_{fault}_{driver}_takeover_s"] = trial["takeover"]
    FIGURES[f"failover_{fault}_{driver}_theory_s"] = report["theory"]
    FIGURES[f"failover_{fault}_{driver}_drill_s"] = time.monotonic() - started
    return trial


def test_virtualbox_real_vms_freeze_drill_pauses_the_primary(vm_host: VmHost, lab: Lab) -> None:
    trial = drill(vm_host, lab.profile_inside, "freeze")
    assert trial["released"] is None  # paused: it could not remove the VIP itself


def test_virtualbox_real_vms_link_drill_unplugs_the_primary(vm_host: VmHost, lab: Lab) -> None:
    drill(vm_host, lab.profile_inside, "link")
    assert vminfo(vm_host, PROD)["cableconnected1"] == "on"  # plugged back in


def test_virtualbox_real_vms_vboxmanage_driver_inspects_pauses_and_unplugs(
    vm_host: VmHost, lab: Lab
) -> None:
    """The VBoxManage driver on the same VMs: status reads both (and their VDE NICs), the
    freeze drill pauses through controlvm, the link drill unplugs through setlinkstate."""
    done = labctl(vm_host, lab.vboxmanage_profile, "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    states = {m["machine"]: m["state"] for m in status["machines"]}
    assert states == {PROD: "running", STANDBY: "running"}
    drill(vm_host, lab.vboxmanage_profile, "freeze")
    drill(vm_host, lab.vboxmanage_profile, "link")
    done = labctl(vm_host, lab.profile_inside, "verify", "--wait", "60", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["pairs"][0]["holder"] == PROD


_EXEC = """
import json, sys, time
from labctl.errors import LabctlError
from labctl.hypervisor import get_hypervisor
from labctl.profile import load
hv = get_hypervisor(load(sys.argv[1]))
started = time.monotonic()
try:
    r = hv.exec_in_guest(sys.argv[2], ["hostname"], timeout=120)
    doc = {"code": r.exit_code, "out": r.stdout, "err": r.stderr}
except LabctlError as exc:
    doc = {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}
print(json.dumps({**doc, "seconds": time.monotonic() - started}))
"""


def test_virtualbox_real_vms_vboxmanage_guest_control_runs_or_names_its_30_s_limit(
    vm_host: VmHost, lab: Lab
) -> None:
    """VBoxManage guestcontrol waits a fixed 30 s for a guest session; an interpreted guest
    may need longer. Either the command ran in the standby (its hostname back), or labctl says
    exactly that and points at the pyvbox driver -- never a retry, never a hang."""
    done = vm_host.run.run("python3", "-c", _EXEC, lab.vboxmanage_profile, STANDBY,
                           env=labctl_env(), timeout=300)  # fmt: skip
    doc = json.loads(done.stdout)
    FIGURES["vboxmanage_guestcontrol_s"] = doc["seconds"]
    if "error" in doc:
        assert doc["error"] == "GuestControlUnusable", doc
        assert "30 s" in doc["message"] and 'driver = "pyvbox"' in doc["hint"]
        assert doc["seconds"] < 90
    else:
        assert (doc["code"], doc["out"]) == (0, f"{STANDBY}\n"), doc


def test_virtualbox_real_vms_destroy_removes_the_standby_and_keeps_production(
    vm_host: VmHost, lab: Lab
) -> None:
    """``labctl destroy --yes`` (VBoxManage driver): the clone and its differencing disk are
    gone; the user's production VM stays registered with its own disk."""
    disks_before = vm_host.run.manage("list", "hdds").stdout
    standby_disk = vminfo(vm_host, STANDBY)["SATA-0-0"]
    assert standby_disk in disks_before
    done = labctl(vm_host, lab.vboxmanage_profile, "destroy", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    registered = vm_host.run.manage("list", "vms").stdout
    assert f'"{PROD}"' in registered and f'"{STANDBY}"' not in registered
    assert standby_disk not in vm_host.run.manage("list", "hdds").stdout
    assert not vm_host.run.host_path(standby_disk).exists()
    assert not vm_host.run.host_path(f"{VBOX_HOME}/machines/{STANDBY}").exists()
    # production runs on its own disk still: since the linked clone it writes to a differencing
    # image of the snapshot labctl-base (kept for later clones) over its own base disk
    chain = disk_chain(vm_host, vminfo(vm_host, PROD)["SATA-0-0"])
    assert chain[-1].endswith(f"/{PROD}.vdi"), chain
    assert all(vm_host.run.host_path(disk).exists() for disk in chain), chain
    snapshots = vm_host.run.manage("snapshot", PROD, "list", "--machinereadable").stdout
    assert 'SnapshotName="labctl-base"' in snapshots
