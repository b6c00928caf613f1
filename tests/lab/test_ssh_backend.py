"""`lab.backend = "ssh"` on real guests: nspawn machines addressed as existing machines.

The pair is booted by the nspawn backend (the test's hypervisor), then driven only through a
second profile with ``backend = "ssh"``, a lab name of its own (so its host keys are trusted
on first use, as on real servers) and the nspawn lab's key as ``ssh.key``. Through it:
status, provision, verify, doctor, crash and partition drills (nftables inside the guests)
work; hypervisor-only commands exit 4 and leave the machines alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labctl import profile as profile_mod
from labctl.hypervisor import MachineState
from tests.lab.checks_pair import ensure_ok, guest, labctl
from tests.lab.conftest import LabEnv, LabPair
from tests.lab.guest_tools import install_in_guests
from tests.lab.test_failover import drill

pytestmark = pytest.mark.lab

Capsys = pytest.CaptureFixture[str]


def ssh_profile(pair: LabPair, directory: Path) -> LabPair:
    """The same machines and pairs, seen as existing machines (backend "ssh")."""
    assert pair.profile.path is not None
    text = pair.profile.path.read_text()
    text = re.sub(r"\[lab\.nspawn\]\n(?:[^\[\n][^\n]*\n|\n)*", "", text)
    text = text.replace('backend = "nspawn"', 'backend = "ssh"')
    text = re.sub(r'(?m)^name = "([^"]+)"$', r'name = "\1-ssh"', text, count=1)
    text = text.replace("[ssh]\n", f'[ssh]\nkey = "{pair.key}"\n', 1)
    (directory / "check_heartbeat.sh").write_bytes(
        (pair.profile.path.parent / "check_heartbeat.sh").read_bytes()
    )
    path = directory / "ssh.toml"
    path.write_text(text)
    prof = profile_mod.load(str(path))
    assert prof.lab.backend == "ssh" and prof.ssh.key == str(pair.key)
    return LabPair(prof, pair.hv, pair=pair.pair)


def test_existing_machines_over_ssh(
    fresh_pair: LabPair, lab_env: LabEnv, tmp_path: Path, capsys: Capsys
) -> None:
    nodes = [fresh_pair.primary.name, fresh_pair.standby.name]
    # the in-guest partition needs nft inside the machines (real servers usually have it)
    install_in_guests(fresh_pair.profile, fresh_pair.hv, nodes, ["nftables"])
    pair = ssh_profile(fresh_pair, tmp_path)

    status = labctl(pair, capsys, "status", "--json")
    assert status.code == 0, status.err
    assert status.json()["backend"] == "ssh"
    assert {m["machine"]: (m["state"], m["managed"]) for m in status.json()["machines"]} == {
        name: ("running", False) for name in nodes
    }

    # what needs a hypervisor: exit 4, one line, and the machines keep running
    for args in (
        ["destroy", "--yes"],
        ["down"],
        ["clone", pair.primary.name],
        ["failover", pair.pair, "--fault", "freeze"],
    ):
        refused = labctl(pair, capsys, *args)
        assert refused.code == 4, (args, refused.err)
        assert len(refused.err.splitlines()) == 1 and 'lab.backend "ssh"' in refused.err
    assert all(pair.hv.inspect(n).state is MachineState.RUNNING for n in nodes)

    provisioned = labctl(pair, capsys, "provision", "pair", "--json")
    assert provisioned.code == 0, provisioned.err
    notices = provisioned.json()["notices"]  # new lab name: host keys trusted on first use
    assert len(notices) == 2 and all("first use" in n for n in notices)
    statuses = [n["status"] for n in provisioned.json()["pairs"][0]["nodes"]]
    assert statuses == ["installed", "installed"]

    verified = labctl(pair, capsys, "verify", "--wait", "30", "--json")
    assert verified.code == 0, verified.err
    assert verified.json()["pairs"][0]["verdict"] == "OK"

    doctor = labctl(pair, capsys, "doctor", "--json")
    checks = doctor.json()["checks"]
    assert doctor.code == 0, [c for c in checks if c["status"] == "FAIL"]
    backend = [c for c in checks if c["check"] == "backend"]
    assert backend and backend[0]["status"] == "OK" and "ssh" in backend[0]["detail"]

    ensure_ok(pair, capsys)
    crash = drill(pair, capsys, "crash")
    assert crash["overlap"] > 0  # SIGKILL left the VIP on the crashed primary

    partition = drill(pair, capsys, "partition")
    assert partition["overlap"] > 0  # both answered over SSH, both holding
    assert fresh_pair.hv.vrrp_blocked() == set()  # not on the bridge: inside the guests
    for name in nodes:
        assert "labctl_drill" not in guest(pair, name, "nft list tables")
