"""`labctl provision pair` wiring: output, --json, --dry-run, exit codes, no secrets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import paramiko
import pytest

from labctl.cli import provision as provision_cli
from labctl.errors import GuestUnreachable, LabctlError
from labctl.hostkeys import HostKeyStore, fingerprint
from labctl.ops import provision as provision_mod
from labctl.profile import Node, Profile
from labctl.remote import Remote
from tests.unit.conftest import CliResult
from tests.unit.provision_fakes import FakeLab
from tests.unit.test_provision import PROFILE, SECRET

Cli = Callable[..., CliResult]


@pytest.fixture
def lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeLab]:
    monkeypatch.setenv("FRONT_PASS", SECRET)
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "home"))
    lab = FakeLab()
    for name, address in (
        ("web", "10.249.90.11/24"),
        ("web-standby", "10.249.90.21/24"),
        ("db", "10.249.90.12/24"),
        ("db-standby", "10.249.90.22/24"),
    ):
        lab.add(name, address)

    def connect_each(
        profile: Profile, nodes: Sequence[Node], **_: object
    ) -> dict[str, Remote | LabctlError]:
        return {n.name: lab.machines[n.name] for n in nodes}

    monkeypatch.setattr(provision_mod, "connect_each", connect_each)
    monkeypatch.setattr(provision_cli, "_hypervisor", lambda prof: None)
    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "lab.toml").write_text(PROFILE.replace("{primary_prio}", "101"))
    yield lab


def test_provision_prints_a_row_per_node_and_pair_state(
    cli: Cli, lab: FakeLab, tmp_path: Path
) -> None:
    result = cli("provision", "pair", "back", "-p", str(tmp_path / "lab.toml"))
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "PAIR  NODE        ROLE     STATUS     KEEPALIVED  ERROR",
        "back  db          primary  installed  started     -",
        "back  db-standby  standby  installed  started     -",
        "pair back: keepalived active on both nodes",
    ]
    assert "db: install keepalived" in result.err  # progress on stderr


def test_provision_json_and_failure_exit_code(cli: Cli, lab: FakeLab, tmp_path: Path) -> None:
    lab.machines["web"].apt_error = "E: Unable to locate package keepalived\n"
    result = cli("provision", "pair", "--json", "-p", str(tmp_path / "lab.toml"))
    assert result.code == 1
    doc = json.loads(result.out)
    assert [(p["pair"], p["ok"], p["active_on_both"]) for p in doc["pairs"]] == [
        ("front", False, False),
        ("back", True, True),
    ]
    assert result.err.splitlines()[-3:-1] == [
        "error: provisioning failed for pair(s): front",
        "error: web: apt-get install keepalived failed (exit 100): "
        "E: Unable to locate package keepalived; "
        "front: web failed; no config was changed on either node",
    ]
    assert SECRET not in result.out + result.err


def test_dry_run_prints_masked_diff_and_touches_nothing(
    cli: Cli, lab: FakeLab, tmp_path: Path
) -> None:
    result = cli("provision", "pair", "back", "--dry-run", "-p", str(tmp_path / "lab.toml"))
    assert result.code == 0, result.err
    assert "+++ db:/etc/keepalived/keepalived.conf (labctl)" in result.out
    assert "+    auth_pass ********" in result.out
    assert "dry run: nothing was changed" in result.out
    assert SECRET not in result.out + result.err
    assert all(m.mutations() == [] for m in lab.machines.values())


def test_unreachable_only_exits_5(
    cli: Cli, lab: FakeLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def connect_each(
        profile: Profile, nodes: Sequence[Node], **_: object
    ) -> dict[str, Remote | LabctlError]:
        return {
            n.name: GuestUnreachable(f"{n.name} did not answer SSH within 90 s")
            if n.name == "db-standby"
            else lab.machines[n.name]
            for n in nodes
        }

    monkeypatch.setattr(provision_mod, "connect_each", connect_each)
    result = cli("provision", "pair", "-p", str(tmp_path / "lab.toml"))
    assert result.code == 5
    assert "error: back: not provisioned: db-standby did not answer SSH within 90 s" in result.err
    assert "pair front: keepalived active on both nodes" in result.out


def test_unknown_pair_exits_2(cli: Cli, lab: FakeLab, tmp_path: Path) -> None:
    result = cli("provision", "pair", "nope", "-p", str(tmp_path / "lab.toml"))
    assert result.code == 2
    assert result.err.startswith("error: PAIR: 'nope' is not a pair of lab")


def test_first_contact_notice_on_stderr_and_in_json(
    cli: Cli, lab: FakeLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = paramiko.ECDSAKey.generate()

    def connect_each(
        profile: Profile, nodes: Sequence[Node], *, host_keys: HostKeyStore, **_: object
    ) -> dict[str, Remote | LabctlError]:
        for n in nodes:  # what SshRemote.open does for a machine seen for the first time
            host_keys.check(n.name, n.ip, key)
        return {n.name: lab.machines[n.name] for n in nodes}

    monkeypatch.setattr(provision_mod, "connect_each", connect_each)
    result = cli("provision", "pair", "back", "--json", "-p", str(tmp_path / "lab.toml"))
    assert result.code == 0, result.err
    fp = fingerprint(key)
    assert (
        f"notice: db: trusting new host key ecdsa-sha2-nistp256 {fp} for 10.249.90.12" in result.err
    )
    assert len(json.loads(result.out)["notices"]) == 2
