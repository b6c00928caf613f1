"""provision() against in-memory machines: exact reports, idempotence, safety, secrets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from labctl import keepalived as ka
from labctl.errors import GuestUnreachable, LabctlError, UnknownName
from labctl.hypervisor import Hypervisor, MachineState
from labctl.ops.provision import ProvisionReport, provision
from labctl.ops.provision_node import BACKUP_PATH, CANDIDATE_PATH, Probe, interpret_config_test
from labctl.profile import Node, Profile, load
from labctl.remote import Remote, Result
from tests.unit.checks_fakes import FakeHypervisor
from tests.unit.provision_fakes import FakeLab, FakeMachine

SECRET = "Zq7#pw1x"
OLD_SECRET = "old-pw99"[:8]
CONF = ka.CONF_PATH
SCRIPT = "/etc/keepalived/check_heartbeat.sh"

PROFILE = f"""
[lab]
name = "unit-lab"
backend = "nspawn"

[machines.web]
address = "10.249.90.11/24"
[machines.db]
address = "10.249.90.12/24"

[pairs.front]
primary = "web"
standby = "web-standby"
standby_address = "10.249.90.21/24"
vrid = 50
vip = ["10.249.90.101/24"]
priority = {{ primary = 101, standby = 100 }}
auth_pass_env = "FRONT_PASS"
[pairs.front.check]
script = "check_heartbeat.sh"

[pairs.back]
primary = "db"
standby = "db-standby"
standby_address = "10.249.90.22/24"
interface = "eth0"
vrid = 51
vip = ["10.249.90.102/24"]
priority = {{ primary = {{primary_prio}}, standby = 100 }}
auth_pass = "{SECRET}"
"""


def _write(tmp_path: Path, primary_prio: int = 101) -> Profile:
    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    path = tmp_path / "lab.toml"
    path.write_text(PROFILE.replace("{primary_prio}", str(primary_prio)))
    return load(str(path))


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FRONT_PASS", SECRET)
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "home"))


@pytest.fixture
def lab() -> FakeLab:
    lab = FakeLab()
    lab.add("web", "10.249.90.11/24")
    lab.add("web-standby", "10.249.90.21/24")
    lab.add("db", "10.249.90.12/24")
    lab.add("db-standby", "10.249.90.22/24")
    return lab


def _run(
    profile: Profile,
    lab: FakeLab,
    pairs: Sequence[str] = (),
    *,
    dry_run: bool = False,
    hypervisor: Hypervisor | None = None,
) -> ProvisionReport:
    def connector(prof: Profile, nodes: Sequence[Node]) -> dict[str, Remote | LabctlError]:
        out: dict[str, Remote | LabctlError] = {}
        for n in nodes:
            if n.name in lab.unreachable:
                out[n.name] = GuestUnreachable(lab.unreachable[n.name])
            else:
                out[n.name] = lab.machines[n.name]
        return out

    return provision(profile, pairs, dry_run=dry_run, connector=connector, hypervisor=hypervisor)


def _nodes(report: ProvisionReport) -> dict[str, tuple[str, str]]:
    return {n.node: (n.status, n.service) for p in report.pairs for n in p.nodes}


def test_fresh_pairs_are_installed_configured_and_started_primary_first(
    tmp_path: Path, lab: FakeLab
) -> None:
    report = _run(_write(tmp_path), lab)
    assert report.ok
    assert _nodes(report) == {
        "web": ("installed", "started"),
        "web-standby": ("installed", "started"),
        "db": ("installed", "started"),
        "db-standby": ("installed", "started"),
    }
    assert [p.active_on_both for p in report.pairs] == [True, True]
    for pair, primary, standby in (("front", "web", "web-standby"), ("back", "db", "db-standby")):
        starts = [m for m, what in lab.events if what == "start" and m in (primary, standby)]
        assert starts == [primary, standby], pair
    web = lab.machines["web"]
    conf = web.files[CONF]
    assert (conf.mode, conf.owner) == (0o640, "root:root")
    assert f"auth_pass {SECRET}" in conf.data.decode()  # only the machine gets the secret
    assert "interface eth0" in conf.data.decode()  # detected: front sets no interface
    assert "priority 101" in conf.data.decode()
    assert "priority 100" in lab.machines["web-standby"].files[CONF].data.decode()
    script = web.files[SCRIPT]
    assert (script.mode, script.owner, script.data) == (0o755, "root:root", b"#!/bin/sh\nexit 0\n")
    assert "keepalived_script" in web.users and web.enabled
    assert CANDIDATE_PATH not in web.files and BACKUP_PATH not in web.files
    # the db pair has no check: no script pushed there
    assert SCRIPT not in lab.machines["db"].files


def test_second_run_touches_nothing(tmp_path: Path, lab: FakeLab) -> None:
    profile = _write(tmp_path)
    _run(profile, lab)
    pids = {name: m.pid for name, m in lab.machines.items()}
    for m in lab.machines.values():
        m.commands.clear()
        m.writes.clear()
        m.reads.clear()
    report = _run(profile, lab)
    assert report.ok
    assert set(_nodes(report).values()) == {("unchanged", "running")}
    assert all(m.mutations() == [] for m in lab.machines.values())
    assert {name: m.pid for name, m in lab.machines.items()} == pids
    # one probe per machine decides it: no file is read, no further command runs
    assert all(len(m.commands) == 1 and m.reads == [] for m in lab.machines.values())


def test_priority_change_reloads_without_restart(tmp_path: Path, lab: FakeLab) -> None:
    _run(_write(tmp_path), lab)
    db = lab.machines["db"]
    pid, old = db.pid, db.files[CONF].data
    report = _run(_write(tmp_path, primary_prio=150), lab, ["back"])
    assert _nodes(report) == {"db": ("changed", "reloaded"), "db-standby": ("unchanged", "running")}
    assert db.pid == pid  # reloaded, not restarted
    assert db.loaded is not None and b"priority 150" in db.loaded
    assert db.files[BACKUP_PATH].data == old and db.files[BACKUP_PATH].mode == 0o640
    assert [what for m, what in lab.events if m == "db"][-1] == "reload"


def test_rejected_config_changes_nothing_on_either_node(tmp_path: Path, lab: FakeLab) -> None:
    profile = _write(tmp_path)
    _run(profile, lab)
    before = {n: (m.files[CONF].data, m.pid) for n, m in lab.machines.items()}
    events = len(lab.events)
    lab.machines["db"].config_test = lambda data: (
        4,
        "(/etc/keepalived/x: Line 14) Unknown keyword 'prioritty'\n",
    )
    report = _run(_write(tmp_path, primary_prio=150), lab)
    back = next(p for p in report.pairs if p.pair == "back")
    front = next(p for p in report.pairs if p.pair == "front")
    assert front.ok and not back.ok and report.failed == ["back"]
    primary = back.nodes[0]
    assert primary.status == "failed"
    assert primary.error is not None
    assert "keepalived -t exited 4" in primary.error
    assert "Unknown keyword 'prioritty'" in primary.error
    assert back.error == "back: db failed; no config was changed on either node"
    assert {n: (m.files[CONF].data, m.pid) for n, m in lab.machines.items()} == before
    assert all(CANDIDATE_PATH not in m.files for m in lab.machines.values())
    assert lab.events[events:] == []  # no start, no reload anywhere


def test_bad_interface_is_rejected_with_keepalived_message(tmp_path: Path, lab: FakeLab) -> None:
    profile = _write(tmp_path)
    _run(profile, lab, ["back"])
    text = (tmp_path / "lab.toml").read_text().replace('interface = "eth0"', 'interface = "eht0"')
    (tmp_path / "lab.toml").write_text(text)
    report = _run(load(str(tmp_path / "lab.toml")), lab, ["back"])
    assert not report.ok
    errors = [n.error or "" for n in report.pairs[0].nodes]
    assert all("interface eht0 for vrrp_instance VI_x doesn't exist" in e for e in errors)
    assert all(
        m.active and b"interface eth0" in m.files[CONF].data
        for n, m in lab.machines.items()
        if n.startswith("db")
    )


def test_143_with_a_printed_error_is_a_rejection(tmp_path: Path, lab: FakeLab) -> None:
    lab.machines["web"].config_test = lambda data: (
        143,
        "(x: Line 14) number '500' outside range [1, 255]\nTerminated\n",
    )
    report = _run(_write(tmp_path), lab, ["front"])
    assert not report.ok
    assert "outside range" in (report.pairs[0].nodes[0].error or "")
    assert all(CONF not in m.files for m in lab.machines.values())
    assert sorted(lab.events) == [("web", "install"), ("web-standby", "install")]


def test_apt_failure_shows_its_stderr_tail(tmp_path: Path, lab: FakeLab) -> None:
    lab.machines["web-standby"].apt_error = "E: Unable to locate package keepalived\n"
    report = _run(_write(tmp_path), lab, ["front"])
    node = report.pairs[0].nodes[1]
    assert node.status == "failed"
    assert node.error == (
        "web-standby: apt-get install keepalived failed (exit 100): "
        "E: Unable to locate package keepalived"
    )
    assert not any(what == "start" for _, what in lab.events)


def test_unreachable_node_fails_its_pair_only(tmp_path: Path, lab: FakeLab) -> None:
    lab.unreachable["db-standby"] = "db-standby did not answer SSH within 90 s"
    report = _run(_write(tmp_path), lab)
    assert report.failed == ["back"]
    back = next(p for p in report.pairs if p.pair == "back")
    assert back.error == "back: not provisioned: db-standby did not answer SSH within 90 s"
    assert lab.machines["db"].commands == []  # its partner was not touched either
    assert next(p for p in report.pairs if p.pair == "front").active_on_both


def test_interface_detection_failure_names_what_was_found(tmp_path: Path, lab: FakeLab) -> None:
    lab.machines["web"].address = "10.249.90.99/24"
    report = _run(_write(tmp_path), lab, ["front"])
    error = report.pairs[0].nodes[0].error or ""
    assert error.startswith("web: no interface carries its address 10.249.90.11 (found: lo ")
    assert "eth0 10.249.90.99/24" in error


def test_dry_run_shows_masked_diffs_and_changes_nothing(tmp_path: Path, lab: FakeLab) -> None:
    profile = _write(tmp_path)
    _run(profile, lab, ["back"])
    db = lab.machines["db"]
    # a hand-edited file with some other password: its value must not leak either
    db.files[CONF].data = db.files[CONF].data.replace(SECRET.encode(), OLD_SECRET.encode())
    for m in lab.machines.values():
        m.commands.clear()
        m.writes.clear()
    report = _run(profile, lab, dry_run=True)
    assert all(m.mutations() == [] for m in lab.machines.values())
    web = report.pairs[0].nodes[0]
    assert web.planned == [
        "install keepalived",
        "create system user keepalived_script",
        "make /etc/keepalived root-owned 0755",
        f"install check script {SCRIPT} (root, 0755)",
        f"write {CONF}",
        "enable keepalived",
        "start keepalived",
    ]
    assert report.pairs[1].nodes[0].planned == [f"write {CONF}", "reload keepalived"]
    assert report.pairs[1].nodes[1].planned == []
    assert [n.status for p in report.pairs for n in p.nodes] == [
        "would install",
        "would install",
        "would change",
        "unchanged",
    ]
    assert web.diff.startswith(f"--- web:{CONF} (none)\n+++ web:{CONF} (labctl)\n")
    assert f"+    auth_pass {ka.MASK}\n" in web.diff
    db_diff = report.pairs[1].nodes[0].diff
    assert f"-    auth_pass {ka.MASK} (old value)\n+    auth_pass {ka.MASK}\n" in db_diff
    assert report.pairs[1].nodes[1].diff == ""  # db-standby is already right
    text = json.dumps(report.to_json())
    assert SECRET not in text and OLD_SECRET not in text


def test_secrets_never_in_reports_or_errors(tmp_path: Path, lab: FakeLab) -> None:
    lab.machines["web"].config_test = lambda data: (4, data.decode()[-300:])  # echoes the file
    report = _run(_write(tmp_path), lab)
    text = json.dumps(report.to_json())
    assert "auth_pass" in text and SECRET not in text


def test_json_shape(tmp_path: Path, lab: FakeLab) -> None:
    doc = _run(_write(tmp_path), lab, ["back"]).to_json()
    assert doc["ok"] is True and doc["dry_run"] is False and doc["notices"] == []
    (pair,) = doc["pairs"]
    assert {k: pair[k] for k in ("pair", "ok", "active_on_both", "error")} == {
        "pair": "back",
        "ok": True,
        "active_on_both": True,
        "error": None,
    }
    assert pair["nodes"][0] == {
        "node": "db",
        "role": "primary",
        "address": "10.249.90.12",
        "interface": "eth0",
        "status": "installed",
        "installed": True,
        "user_created": True,
        "script_changed": False,
        "config_changed": True,
        "enabled": True,
        "started": True,
        "reloaded": False,
        "active": True,
        "error": None,
    }


def test_unknown_pair_is_a_usage_error_before_any_connection(
    tmp_path: Path, lab: FakeLab
) -> None:
    with pytest.raises(UnknownName, match=r"PAIR: 'nope' is not a pair"):
        _run(_write(tmp_path), lab, ["nope"])
    assert all(m.commands == [] for m in lab.machines.values())


def _result(code: int, err: str) -> Result:
    return Result(("keepalived", "-t"), code, "", err)


@pytest.mark.parametrize(
    ("code", "err", "accepted"),
    [
        # outputs recorded from keepalived 2.2.7 on Debian 12
        (143, "Terminated\n", True),
        (0, "", True),
        (
            5,
            "(/tmp/good.conf: Line 10) Unable to set default user for vrrp script chk_x - "
            "removing\n",
            False,
        ),
        (
            5,
            "(/tmp/badif.conf: Line 13) WARNING - interface nosuch0 for vrrp_instance VI_a "
            "doesn't exist\nNon-existent interface specified in configuration\n",
            False,
        ),
        (
            143,
            "(/tmp/badvrid.conf: Line 14) number '500' outside range [1, 255]\nTerminated\n",
            False,
        ),
        (143, "(/tmp/typo.conf: Line 15) Unknown keyword 'prioritty'\nTerminated\n", False),
        (0, "Config files missing '/tmp/missing.conf'.\n", False),
        (6, "", False),
    ],
)
def test_config_test_is_judged_by_behaviour(code: int, err: str, accepted: bool) -> None:
    verdict = interpret_config_test(_result(code, err))
    assert (verdict is None) == accepted
    if not accepted:
        assert verdict is not None and verdict.startswith(f"keepalived -t exited {code}")


def test_fake_machine_refuses_unknown_commands() -> None:
    with pytest.raises(AssertionError, match="does not know"):
        FakeMachine("m", "10.0.0.1/24").run(["reboot"])


# the probe's real output on a Debian 12 guest (captured from a lab run), before and after
PROBE_FRESH = """installed=0
user=0
MainPID=0
ActiveState=inactive
UnitFileState=
---
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: host0    inet 10.251.65.2/24 brd 10.251.65.255 scope global host0\\       valid_lft forever
"""
PROBE_PROVISIONED = """installed=1
user=1
MainPID=346
ActiveState=active
UnitFileState=enabled
stat 0 755 /etc/keepalived
stat 0 755 /etc/keepalived/check_heartbeat.sh
25d8ede125ea52647c986b1e496c45cc1525d6bf99a81d251f457e9fb8de53f8  /etc/keepalived/check_heartbeat.sh
079d9745f784109ffbd0c43cc8bf9a9be2031c97c0ac7c0b7c0b243cd7fab57b  /etc/keepalived/keepalived.conf
---
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: host0    inet 10.251.65.2/24 brd 10.251.65.255 scope global host0\\       valid_lft forever
"""


def test_probe_reads_a_fresh_and_a_provisioned_machine() -> None:
    fresh = Probe.parse(PROBE_FRESH, script=SCRIPT, conf=CONF)
    assert (fresh.installed, fresh.user_exists, fresh.active, fresh.enabled, fresh.pid) == (
        False,
        False,
        False,
        False,
        0,
    )
    assert (fresh.dir_mode, fresh.script_mode, fresh.conf_sha, fresh.script_sha) == (
        None,
        None,
        "",
        "",
    )
    assert [(a.ifname, str(a.interface)) for a in fresh.addrs] == [
        ("lo", "127.0.0.1/8"),
        ("host0", "10.251.65.2/24"),
    ]
    done = Probe.parse(PROBE_PROVISIONED, script=SCRIPT, conf=CONF)
    assert (done.installed, done.user_exists, done.active, done.enabled, done.pid) == (
        True,
        True,
        True,
        True,
        346,
    )
    assert (done.dir_mode, done.script_mode) == ((0, 0o755), (0, 0o755))
    assert done.conf_sha.startswith("079d9745") and done.script_sha.startswith("25d8ede1")
    # a pair without a check script: the script's lines are not taken for anything else
    no_check = Probe.parse(PROBE_PROVISIONED, script="", conf=CONF)
    assert (no_check.script_mode, no_check.script_sha) == (None, "")


def test_a_node_the_hypervisor_reports_absent_fails_its_pair_without_ssh(
    tmp_path: Path, lab: FakeLab
) -> None:
    hv = FakeHypervisor(states={"db-standby": MachineState.ABSENT})
    report = _run(_write(tmp_path), lab, hypervisor=hv)
    back = next(p for p in report.pairs if p.pair == "back")
    front = next(p for p in report.pairs if p.pair == "front")
    assert back.error is not None
    assert "db-standby not created: run `labctl clone db`" in back.error
    assert lab.machines["db-standby"].commands == []
    assert lab.machines["db"].commands == []  # its pair is not half provisioned
    assert front.active_on_both
    assert not report.ok
