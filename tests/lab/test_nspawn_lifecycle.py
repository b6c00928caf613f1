"""Lab tests: image, create, start, SSH, stop, destroy on real nspawn guests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from labctl import paths
from labctl.cli import run
from labctl.hypervisor import MachineState
from labctl.hypervisor.nspawn import NspawnHypervisor
from labctl.hypervisor.nspawn_image import find_image
from labctl.ops import lab as lab_ops
from tests.lab.conftest import LabEnv, LabPair, MachinesFactory, ProfileFactory

pytestmark = pytest.mark.lab


def _nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmd:
                found.append(cmd)
    return found


def test_image_has_keepalived_cached_but_not_installed(lab_env: LabEnv) -> None:
    image = find_image("bookworm")
    assert image is not None
    rootfs = image.rootfs
    assert list((rootfs / "var/cache/apt/archives").glob("keepalived_*.deb"))
    assert any((rootfs / "var/lib/apt/lists").glob("*Packages*"))
    assert not (rootfs / "usr/sbin/keepalived").exists()
    assert not list((rootfs / "etc/ssh").glob("ssh_host_*"))
    assert (rootfs / "etc/machine-id").read_text() == ""


def test_image_command_reuses_the_cached_image(
    lab_env: LabEnv, make_profile: ProfileFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    prof = make_profile()
    assert run(["lab", "image", "-p", str(prof.path)]) == 0
    out = capsys.readouterr().out
    image = find_image("bookworm")
    assert image is not None
    assert str(image.path) in out and "already built" in out


def test_machine_boots_answers_ssh_and_leaves_nothing_behind(
    lab_env: LabEnv, make_profile: ProfileFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    prof = make_profile(names=[("solo", "solo-standby")])
    ref = str(prof.path)
    hv = NspawnHypervisor(prof)
    machine_dir = hv.machine_dir("solo")

    assert run(["up", "solo", "-p", ref]) == 0
    assert "solo" in capsys.readouterr().out
    assert hv.inspect("solo").state is MachineState.RUNNING
    port = hv.port("solo")
    assert Path(f"/sys/class/net/{port}/master").resolve().name == lab_env.bridge

    # real sshd, the lab key, strict host-key checking against what labctl recorded
    ssh = subprocess.run(
        [
            "ssh",
            "-i",
            str(paths.lab_key_path(prof.lab.name)),
            "-o",
            f"UserKnownHostsFile={paths.known_hosts_path(prof.lab.name)}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "root@" + str(prof.nodes("p1")[0].ip),
            "hostname; cat /etc/machine-id",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ssh.returncode == 0, ssh.stderr
    hostname, machine_id = ssh.stdout.split()
    assert hostname == "solo" and len(machine_id) == 32

    assert run(["status", "--json", "-p", ref]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {m["machine"]: m for m in doc["machines"]}
    assert rows["solo"]["state"] == "running" and rows["solo"]["role"] == "production"
    assert rows["solo-standby"]["state"] == "absent"

    assert run(["down", "-p", ref]) == 0
    assert "solo: stopped" in capsys.readouterr().out
    assert hv.inspect("solo").state is MachineState.STOPPED
    assert not Path(f"/sys/class/net/{port}").exists()
    assert machine_dir.exists()  # down keeps the disk

    assert run(["destroy", "--yes", "-p", ref]) == 0
    assert "solo" in capsys.readouterr().out
    assert not machine_dir.exists()
    assert not paths.lab_dir(prof.lab.name).exists()
    assert hv.table not in _nft_tables()
    assert not _processes_mentioning(str(machine_dir))
    assert not Path(f"/sys/fs/cgroup/freezer/labctl-{hv.unit('solo')}").exists()
    with open("/proc/self/mountinfo") as mounts:
        assert str(machine_dir) not in mounts.read()


def test_up_is_idempotent_and_restarts_stopped_machines(
    lab_env: LabEnv, make_profile: ProfileFactory, lab_machines: MachinesFactory
) -> None:
    prof = make_profile()
    lab = lab_machines(prof, standbys=[])
    name = next(iter(prof.machines))
    first_id = lab.exec(name, ["cat", "/etc/machine-id"]).stdout
    again = lab_ops.up(prof, lab.hv)
    assert again.created == [] and again.started == []
    lab.hv.stop(name, hard=True)
    assert lab.hv.inspect(name).state is MachineState.STOPPED
    restarted = lab_ops.up(prof, lab.hv)
    assert restarted.started == [name]
    assert lab.exec(name, ["cat", "/etc/machine-id"]).stdout == first_id


def test_destroy_without_yes_off_a_terminal_is_refused(
    shared_pair: LabPair, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["destroy", "-p", str(shared_pair.profile.path)]) == 2
    assert "--yes" in capsys.readouterr().err
    assert shared_pair.hv.inspect(shared_pair.primary.name).state is MachineState.RUNNING


def test_up_of_an_unknown_machine_names_it(
    shared_pair: LabPair, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["up", "nosuch", "-p", str(shared_pair.profile.path)]) == 2  # usage error
    assert "'nosuch'" in capsys.readouterr().err


def test_exec_in_guest_works_running_and_stopped(fresh_pair: LabPair) -> None:
    name = fresh_pair.primary.name
    running = fresh_pair.exec(name, ["cat", "/etc/hostname"])
    assert running.exit_code == 0 and running.stdout.strip() == name
    fresh_pair.hv.stop(name, hard=True)
    stopped = fresh_pair.exec(name, ["cat", "/etc/hostname"])
    assert stopped.exit_code == 0 and stopped.stdout.strip() == name
    failing = fresh_pair.exec(name, ["sh", "-c", "echo oops >&2; exit 3"])
    assert failing.exit_code == 3 and failing.stderr.strip() == "oops"
