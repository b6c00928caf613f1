"""The fake VBoxManage (tests/fakes) checked against the real VBoxManage 7.2, side by side.

Unit and contract tests that need a running VM still use the fake (VMs cannot run here); this
makes sure what the fake prints for the commands labctl uses is what the real program prints:
exit codes, the error lines labctl reads, and the ``--machinereadable`` keys and value formats.
Both sides get the same scenario: a powered-off VM ``prod`` with NIC 1 on an internal network.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl.hypervisor.vboxmanage import parse_machinereadable
from tests.fakes.install import install_vboxmanage
from tests.fakes.vbox_world import opened
from tests.vbox.fixtures import VmMaker

MAC = re.compile(r"^[0-9A-F]{12}$")
LIST_LINE = re.compile(r'^"[^"]+" \{[0-9a-f-]{36}\}$')
# what labctl reads from showvminfo, with the shape of its value
SHOWN = {
    "VMState": re.compile(r"^poweroff$"),
    "nic1": re.compile(r"^intnet$"),
    "intnet1": re.compile(r"^\S+$"),
    "macaddress1": MAC,
    "cableconnected1": re.compile(r"^(on|off)$"),
    "nic2": re.compile(r"^none$"),
    "UUID": re.compile(r"^[0-9a-f-]{36}$"),
}


@dataclass
class Side:
    name: str
    vboxmanage: Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def sides(
    vbox_vms: VmMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[Side]]:
    state = tmp_path / "fake-virtualbox.json"
    monkeypatch.setenv("FAKE_VBOX_STATE", str(state))
    fake = install_vboxmanage(tmp_path / "bin")
    with opened(state) as world:
        world.version = "7.2.22_Debianr175245"
        world.create("prod", attachment="intnet")
    vbox_vms.create("prod", nic=("--nic1", "intnet", "--intnet1", "labnet"))

    def run_fake(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(fake), *args], capture_output=True, text=True)

    yield [
        Side("fake", run_fake),
        Side("real-7.2", lambda *a: vbox_vms.run.manage(*a, check=False)),
    ]


def both(sides: list[Side], *args: str) -> dict[str, subprocess.CompletedProcess[str]]:
    return {side.name: side.vboxmanage(*args) for side in sides}


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in done.stderr.splitlines() if ln.startswith("VBoxManage: error:")]


def test_showvminfo_keys_and_value_shapes(sides: list[Side]) -> None:
    for name, done in both(sides, "showvminfo", "prod", "--machinereadable").items():
        assert done.returncode == 0, (name, done.stderr)
        info = parse_machinereadable(done.stdout)
        for key, shape in SHOWN.items():
            assert shape.match(info.get(key, "")), (name, key, info.get(key))


def test_a_missing_vm_reads_the_same(sides: list[Side]) -> None:
    for name, done in both(sides, "showvminfo", "nosuch", "--machinereadable").items():
        assert done.returncode == 1, name
        lines = error_lines(done)
        assert lines[0] == "VBoxManage: error: Could not find a registered machine named 'nosuch'"
        assert "VBOX_E_OBJECT_NOT_FOUND" in lines[1], name


def test_extradata_and_list_vms_read_the_same(sides: list[Side]) -> None:
    for name, done in both(sides, "getextradata", "prod", "labctl/lab").items():
        assert (done.returncode, done.stdout) == (0, "No value set!\n"), name
    for name, done in both(sides, "setextradata", "prod", "labctl/lab", "x").items():
        assert done.returncode == 0, (name, done.stderr)
    for name, done in both(sides, "getextradata", "prod", "labctl/lab").items():
        assert (done.returncode, done.stdout) == (0, "Value: x\n"), name
    for name, done in both(sides, "list", "vms").items():
        assert all(LIST_LINE.match(line) for line in done.stdout.splitlines()), (name, done.stdout)


def test_snapshot_and_clones_read_the_same(sides: list[Side]) -> None:
    for name, done in both(sides, "snapshot", "prod", "take", "labctl-base").items():
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout.startswith("Snapshot taken. UUID: "), (name, done.stdout)
    for name, done in both(sides, "showvminfo", "prod", "--machinereadable").items():
        info = parse_machinereadable(done.stdout)
        assert info["SnapshotName"] == "labctl-base", name
    clone = ("clonevm", "prod", "--name", "prod-standby", "--register", "--mode", "machine",
             "--options", "link", "--snapshot", "labctl-base")  # fmt: skip
    for name, done in both(sides, *clone).items():
        assert done.returncode == 0, (name, done.stderr)
    for name, done in both(sides, *clone).items():
        assert done.returncode == 1, name
        assert "already exists" in error_lines(done)[0], (name, done.stderr)
    for name, done in both(sides, "unregistervm", "nosuch", "--delete").items():
        assert done.returncode == 1, name
        assert "nosuch" in error_lines(done)[0], (name, done.stderr)
