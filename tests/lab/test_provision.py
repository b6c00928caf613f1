"""`labctl provision pair` on real nspawn guests: real sshd, real paramiko, real keepalived.

One pair is booted for the whole module (guest boots are the expensive part) and provisioned
once, fresh, by the ``fresh_run`` fixture; every other test starts by bringing the pair back to
the base profile, so each test stands on its own whatever the order.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest

from labctl import keepalived as ka
from labctl.cli import run
from labctl.hostkeys import fingerprint
from labctl.ops import lab as lab_ops
from labctl.profile import load
from tests.lab.conftest import LabEnv, LabPair, bring_up, write_profile

CONF = ka.CONF_PATH
SCRIPT = "/etc/keepalived/check_heartbeat.sh"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Labctl = Callable[..., CliResult]


@pytest.fixture
def labctl(capsys: pytest.CaptureFixture[str]) -> Labctl:
    def invoke(*args: str) -> CliResult:
        code = run(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def _vip(pair: LabPair) -> str:
    return str(pair.profile.pair(pair.pair).vip[0])


def _holds_vip(pair: LabPair, name: str) -> bool:
    out = pair.exec(name, ["ip", "-o", "-4", "addr", "show"]).stdout
    return ka.holds(ka.parse_ip_addr(out), _vip(pair))


def _holders(pair: LabPair) -> set[str]:
    return {n.name for n in (pair.primary, pair.standby) if _holds_vip(pair, n.name)}


def _pid(pair: LabPair, name: str) -> int:
    out = pair.exec(name, ["systemctl", "show", "-p", "MainPID", "--value", "keepalived"])
    return int(out.stdout.strip() or 0)


def _active(pair: LabPair, name: str) -> bool:
    out: str = pair.exec(name, ["systemctl", "is-active", "keepalived"]).stdout
    return out.strip() == "active"


def _await(condition: Callable[[], bool], what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline:g} s: {what}")
        time.sleep(0.2)  # polling a condition on the guests


@dataclass
class VipWatch:
    """Samples which node holds the VIP while something runs (side channel, no SSH)."""

    pair: LabPair
    samples: list[set[str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> VipWatch:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(_holders(self.pair))
            self._stop.wait(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(_holders(self.pair))

    def ever_held(self, name: str) -> bool:
        return any(name in s for s in self.samples)


def _variant(pair: LabPair, edit: Callable[[str], str], name: str) -> str:
    """A copy of the pair's profile with one edit (same lab, machines and key); its path."""
    assert pair.profile.path is not None
    source = pair.profile.path
    target = source.with_name(f"{name}.toml")
    target.write_text(edit(source.read_text()))
    load(str(target))  # still a valid profile
    return str(target)


@dataclass
class FreshRun:
    pair: LabPair
    result: CliResult
    watch: VipWatch
    installed_before: dict[str, bool]


@pytest.fixture(scope="module")
def fresh_run(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshRun]:
    prof = write_profile(
        lab_env, tmp_path_factory.mktemp("provision"), 1, names=[("pv-a", "pv-a-standby")]
    )
    lab = bring_up(prof)
    pair = LabPair(lab.profile, lab.hv, pair="p1")
    try:
        installed = {
            n.name: pair.exec(n.name, ["sh", "-c", "command -v keepalived"]).exit_code == 0
            for n in (pair.primary, pair.standby)
        }
        out, err = io.StringIO(), io.StringIO()
        with VipWatch(pair) as watch, redirect_stdout(out), redirect_stderr(err):
            code = run(["provision", "pair", "-p", str(prof.path), "--json"])
        yield FreshRun(pair, CliResult(code, out.getvalue(), err.getvalue()), watch, installed)
    finally:
        lab_ops.destroy(prof, lab.hv)


@pytest.fixture
def pair(fresh_run: FreshRun, labctl: Labctl) -> LabPair:
    """The module's pair, provisioned with the base profile and its VIP on the primary."""
    p = fresh_run.pair
    result = labctl("provision", "pair", "-p", str(p.profile.path))
    assert result.code == 0, result.err
    _await(lambda: _holders(p) == {p.primary.name}, "the VIP on exactly the primary")
    return p


def test_fresh_pair_gets_keepalived_active_on_both_with_vip_on_primary(
    fresh_run: FreshRun,
) -> None:
    p = fresh_run.pair
    assert fresh_run.installed_before == {p.primary.name: False, p.standby.name: False}
    assert fresh_run.result.code == 0, fresh_run.result.err
    (report,) = fresh_run.result.json()["pairs"]
    assert report["ok"] and report["active_on_both"]
    assert [(n["node"], n["status"], n["started"]) for n in report["nodes"]] == [
        (p.primary.name, "installed", True),
        (p.standby.name, "installed", True),
    ]
    for node in (p.primary, p.standby):
        assert _active(p, node.name)
        enabled = p.exec(node.name, ["systemctl", "is-enabled", "keepalived"]).stdout.strip()
        assert enabled == "enabled"
        stat = p.exec(node.name, ["stat", "-c", "%U %G %a", CONF]).stdout.split()
        assert stat == ["root", "root", "640"]
    _await(lambda: _holders(p) == {p.primary.name}, "the VIP on exactly the primary")
    assert not fresh_run.watch.ever_held(p.standby.name)
    assert "labtest" not in fresh_run.result.out + fresh_run.result.err  # the auth_pass


def test_second_run_is_unchanged_same_pid_vip_stays(pair: LabPair, labctl: Labctl) -> None:
    pids = {n.name: _pid(pair, n.name) for n in (pair.primary, pair.standby)}
    conf = pair.exec(pair.primary.name, ["stat", "-c", "%Y %i", CONF]).stdout
    with VipWatch(pair) as watch:
        result = labctl("provision", "pair", "-p", str(pair.profile.path), "--json")
    assert result.code == 0, result.err
    nodes = result.json()["pairs"][0]["nodes"]
    assert [(n["status"], n["started"], n["reloaded"]) for n in nodes] == [
        ("unchanged", False, False),
        ("unchanged", False, False),
    ]
    assert {n.name: _pid(pair, n.name) for n in (pair.primary, pair.standby)} == pids
    assert pair.exec(pair.primary.name, ["stat", "-c", "%Y %i", CONF]).stdout == conf
    assert all(s == {pair.primary.name} for s in watch.samples)


def test_priority_change_reloads_same_pid_vip_never_moves(pair: LabPair, labctl: Labctl) -> None:
    changed = _variant(pair, lambda t: t.replace("primary = 101", "primary = 150"), "prio")
    pids = {n.name: _pid(pair, n.name) for n in (pair.primary, pair.standby)}
    old = pair.exec(pair.primary.name, ["cat", CONF]).stdout
    with VipWatch(pair) as watch:
        result = labctl("provision", "pair", "-p", changed, "--json")
    assert result.code == 0, result.err
    primary, standby = result.json()["pairs"][0]["nodes"]
    assert (primary["status"], primary["reloaded"], primary["started"]) == ("changed", True, False)
    assert (standby["status"], standby["reloaded"]) == ("unchanged", False)
    assert {n.name: _pid(pair, n.name) for n in (pair.primary, pair.standby)} == pids
    assert all(s == {pair.primary.name} for s in watch.samples)
    assert "priority 150" in pair.exec(pair.primary.name, ["cat", CONF]).stdout
    assert pair.exec(pair.primary.name, ["cat", f"{CONF}.labctl-prev"]).stdout == old


def test_config_keepalived_rejects_leaves_old_config_running(pair: LabPair, labctl: Labctl) -> None:
    bad = _variant(
        pair, lambda t: t.replace('interface = "host0"', 'interface = "nosuch0"'), "badif"
    )
    before = {n.name: pair.exec(n.name, ["cat", CONF]).stdout for n in (pair.primary, pair.standby)}
    pids = {n.name: _pid(pair, n.name) for n in (pair.primary, pair.standby)}
    result = labctl("provision", "pair", "-p", bad)
    assert result.code == 1
    assert "interface nosuch0 for vrrp_instance VI_p1 doesn't exist" in result.out
    assert "keepalived -t exited" in result.out
    assert "error: provisioning failed for pair(s): p1" in result.err.splitlines()
    for node in (pair.primary, pair.standby):
        assert pair.exec(node.name, ["cat", CONF]).stdout == before[node.name]
        assert _active(pair, node.name) and _pid(pair, node.name) == pids[node.name]
        leftovers = pair.exec(node.name, ["ls", "-A", "/etc/keepalived"]).stdout.split()
        assert not [f for f in leftovers if "labctl-new" in f]
    assert _holders(pair) == {pair.primary.name}


def test_check_script_is_root_0755_and_running(pair: LabPair) -> None:
    for node in (pair.primary, pair.standby):
        out = pair.exec(node.name, ["stat", "-c", "%U %a", "/etc/keepalived", SCRIPT]).stdout
        assert out.split("\n")[:2] == ["root 755", "root 755"]
    # the check watches sshd: stopping it on the primary lowers its priority below the standby
    pair.exec(pair.primary.name, ["systemctl", "stop", "ssh"])
    try:
        _await(lambda: _holders(pair) == {pair.standby.name}, "the VIP moves to the standby")
    finally:
        pair.exec(pair.primary.name, ["systemctl", "start", "ssh"])
    _await(lambda: _holders(pair) == {pair.primary.name}, "the VIP returns to the primary")


def _add_admin(pair: LabPair, sudoers: str) -> None:
    script = (
        "id labadmin >/dev/null 2>&1 || useradd -m -s /bin/bash labadmin; "
        "install -d -m 700 -o labadmin -g labadmin /home/labadmin/.ssh; "
        "install -m 600 -o labadmin -g labadmin /root/.ssh/authorized_keys "
        "/home/labadmin/.ssh/authorized_keys; "
        f"printf '%s\\n' '{sudoers}' > /etc/sudoers.d/labadmin; chmod 440 /etc/sudoers.d/labadmin"
    )
    for node in (pair.primary, pair.standby):
        result = pair.exec(node.name, ["sh", "-c", script])
        assert result.exit_code == 0, result.stderr


def test_non_root_user_with_passwordless_sudo(pair: LabPair, labctl: Labctl) -> None:
    _add_admin(pair, "labadmin ALL=(ALL) NOPASSWD: ALL")
    as_admin = _variant(
        pair,
        lambda t: t.replace('user = "root"', 'user = "labadmin"').replace(
            "primary = 101", "primary = 140"
        ),
        "sudo",
    )
    pid = _pid(pair, pair.primary.name)
    result = labctl("provision", "pair", "-p", as_admin, "--json")
    assert result.code == 0, result.err
    primary = result.json()["pairs"][0]["nodes"][0]
    assert (primary["status"], primary["reloaded"]) == ("changed", True)
    stat = pair.exec(pair.primary.name, ["stat", "-c", "%U %G %a", CONF]).stdout.split()
    assert stat == ["root", "root", "640"]
    assert "priority 140" in pair.exec(pair.primary.name, ["cat", CONF]).stdout
    assert _pid(pair, pair.primary.name) == pid


def test_sudo_that_wants_a_password_is_a_clear_error(pair: LabPair, labctl: Labctl) -> None:
    _add_admin(pair, "labadmin ALL=(ALL) ALL")
    as_admin = _variant(pair, lambda t: t.replace('user = "root"', 'user = "labadmin"'), "pw")
    result = labctl("provision", "pair", "-p", as_admin)
    assert result.code == 1
    assert f"{pair.primary.name}: user 'labadmin' needs passwordless sudo" in result.err


def test_changed_host_key_is_refused(pair: LabPair, labctl: Labctl, tmp_path: Path) -> None:
    record = pair.known_hosts
    original = record.read_text()
    ip = pair.ip(pair.primary.name)
    real = [ln.split() for ln in original.splitlines() if ln.split()[:1] == [ip]]
    assert real, f"the nspawn backend recorded no key for {ip}"
    # an impostor key of the same type as the recorded one, so the machine offers its real
    # key of that type and both fingerprints are comparable
    kind = real[0][1]
    keygen_type = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(kind, "ecdsa")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", keygen_type, "-N", "", "-f", str(tmp_path / "impostor")],
        check=True,
    )
    forged_type, forged_blob = (tmp_path / "impostor.pub").read_text().split()[:2]
    others = [ln for ln in original.splitlines() if ln.split()[:1] != [ip]]
    record.write_text("\n".join([*others, f"{ip} {forged_type} {forged_blob}"]) + "\n")
    try:
        result = labctl("provision", "pair", "-p", str(pair.profile.path))
    finally:
        record.write_text(original)
    assert result.code == 1
    forged_fp = fingerprint(
        paramiko.PKey.from_type_string(forged_type, base64.b64decode(forged_blob))
    )
    real_fp = fingerprint(paramiko.PKey.from_type_string(kind, base64.b64decode(real[0][2])))
    assert f"{pair.primary.name} ({ip}): host key changed" in result.err
    assert f"it offered {kind} {real_fp}" in result.err
    assert f"the trusted key is {forged_type} {forged_fp}" in result.err


def test_unreachable_machine_exits_5_within_the_deadline(
    pair: LabPair, lab_env: LabEnv, labctl: Labctl
) -> None:
    nobody = lab_env.address()  # on the lab's subnet, never given to a machine
    standby_address = pair.profile.pair(pair.pair).standby_address
    lost = _variant(
        pair,
        lambda t: t.replace(
            f'standby_address = "{standby_address}"', f'standby_address = "{nobody}"'
        ).replace("boot = 60", "boot = 4"),
        "lost",
    )
    assert load(lost).timeouts.boot == 4
    pid = _pid(pair, pair.primary.name)
    start = time.monotonic()
    result = labctl("provision", "pair", "-p", lost)
    elapsed = time.monotonic() - start
    assert result.code == 5, (result.out, result.err)
    # what was tried, and for how long (the elapsed time is for the reader, not asserted)
    assert (
        f"{pair.standby.name} did not answer SSH within 4 s: tried "
        f"root@{nobody.split('/')[0]}:22" in result.err
    ), f"after {elapsed:.1f} s"
    assert _pid(pair, pair.primary.name) == pid  # its partner was left alone
