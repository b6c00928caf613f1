"""`labctl export ansible` on real guests: the exported playbook provisions exactly what labctl
provisions, in both directions.

A fresh pair whose profile leaves ``interface`` unset (both tools detect it). ansible-core is a
test-only dependency in its own venv (tests/lab/guest_tools.py, shared with bench/); the guests
get python3 and python3-apt for Ansible's modules. The password stays out of the export and
reaches Ansible through the environment.

1. the exported playbook on the fresh guests -> `labctl verify` OK, `labctl provision pair`
   reports every node unchanged, and the files on the machines are labctl's bytes;
2. `ansible-playbook --check` on that pair reports no change;
3. the guests reset to fresh and provisioned by labctl -> `ansible-playbook --check` reports
   no change either.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl import keepalived as ka
from labctl import profile as profile_mod
from labctl.ops import lab as lab_ops
from tests.lab.checks_pair import guest, labctl
from tests.lab.conftest import LabEnv, LabPair, bring_up, write_profile
from tests.lab.guest_tools import (
    ansible_env,
    ansible_venv,
    close_ansible_connections,
    install_in_guests,
    recap,
)

pytestmark = pytest.mark.lab

Capsys = pytest.CaptureFixture[str]
AUTH_PASS = "xP0rt9!z"  # distinctive, so a leak into any exported file is seen

# back to a machine keepalived never touched (the package stays in the apt cache)
RESET = r"""
systemctl stop keepalived >/dev/null 2>&1; systemctl disable keepalived >/dev/null 2>&1
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q keepalived >/dev/null 2>&1
DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y -q >/dev/null 2>&1
userdel keepalived_script >/dev/null 2>&1; groupdel keepalived_script >/dev/null 2>&1
rm -rf /etc/keepalived
! command -v keepalived >/dev/null
"""


@pytest.fixture
def export(tmp_path: Path) -> Iterator[Path]:
    """Where the export goes; the persistent SSH connections of its runs end with the test."""
    yield tmp_path / "export"
    close_ansible_connections(tmp_path)


@pytest.fixture
def detect_pair(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPair]:
    """A fresh pair whose profile does not name the VRRP interface."""
    prof = write_profile(
        lab_env, tmp_path_factory.mktemp("export-pair"), 1, names=[("exp-a", "exp-a-standby")]
    )
    assert prof.path is not None
    text = prof.path.read_text().replace('interface = "host0"\n', "")
    prof.path.write_text(text.replace('auth_pass = "labtest"', f'auth_pass = "{AUTH_PASS}"'))
    prof = profile_mod.load(str(prof.path))
    assert prof.pair("p1").interface is None and prof.auth_pass("p1") == AUTH_PASS
    lab = bring_up(prof)
    try:
        yield LabPair(lab.profile, lab.hv, pair="p1")
    finally:
        lab_ops.destroy(lab.profile, lab.hv)


def playbook(pair: LabPair, export: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = ansible_env(pair.profile, export.parent) | {"LABCTL_AUTH_PASS_P1": AUTH_PASS}
    return subprocess.run(
        [
            str(ansible_venv() / "bin" / "ansible-playbook"),
            "-i",
            "inventory.yml",
            "playbook.yml",
            *extra,
        ],
        cwd=export,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def sha256(pair: LabPair, name: str, path: str) -> str:
    return guest(pair, name, f"sha256sum {path}").split()[0]


def test_exported_playbook_writes_what_labctl_writes(
    detect_pair: LabPair, export: Path, capsys: Capsys
) -> None:
    pair = detect_pair
    nodes = [pair.primary.name, pair.standby.name]
    install_in_guests(pair.profile, pair.hv, nodes, ["python3", "python3-apt"])
    exported = labctl(pair, capsys, "export", "ansible", str(export), "--json")
    assert exported.code == 0, exported.err
    assert exported.json()["secrets_written"] is False
    for path in export.rglob("*"):
        assert not path.is_file() or AUTH_PASS.encode() not in path.read_bytes(), path

    # 1. the exported playbook on fresh guests
    run = playbook(pair, export)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    counts = recap(run.stdout)
    assert set(counts) == set(nodes) and all(c["changed"] > 0 for c in counts.values())

    verified = labctl(pair, capsys, "verify", "--wait", "30", "--json")
    assert verified.code == 0, verified.err
    assert verified.json()["pairs"][0]["holder"] == pair.primary.name

    provisioned = labctl(pair, capsys, "provision", "pair", "--json")
    assert provisioned.code == 0, provisioned.err
    report = provisioned.json()["pairs"][0]["nodes"]
    assert [(n["node"], n["status"], n["interface"]) for n in report] == [
        (name, "unchanged", "host0") for name in nodes
    ]
    assert not any(n["started"] or n["reloaded"] for n in report)
    for node in pair.profile.nodes(pair.pair):
        rendered = ka.render_node(
            pair.profile, pair.pair, node.role, interface="host0", mask_secrets=False
        )
        assert (
            sha256(pair, node.name, ka.CONF_PATH)
            == hashlib.sha256(rendered.conf.encode()).hexdigest()
        )
        assert rendered.check is not None
        assert (
            sha256(pair, node.name, rendered.check.path)
            == hashlib.sha256(rendered.check.content).hexdigest()
        )

    # 2. --check on the pair labctl just called unchanged
    check = playbook(pair, export, "--check")
    assert check.returncode == 0, check.stdout[-3000:]
    assert {h: c["changed"] for h, c in recap(check.stdout).items()} == dict.fromkeys(nodes, 0)

    # 3. the other way round: labctl provisions fresh guests, Ansible finds nothing to change
    for name in nodes:
        guest(pair, name, RESET)
    fresh = labctl(pair, capsys, "provision", "pair", "--json")
    assert fresh.code == 0, fresh.err
    assert [n["status"] for n in fresh.json()["pairs"][0]["nodes"]] == ["installed"] * 2
    check = playbook(pair, export, "--check")
    assert check.returncode == 0, check.stdout[-3000:]
    assert {h: c["changed"] for h, c in recap(check.stdout).items()} == dict.fromkeys(nodes, 0)
