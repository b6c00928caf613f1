"""`labctl verify` on real guests: every verdict produced for real, exit codes, JSON.

All tests share one provisioned pair (tests/lab/checks_pair.py); each one breaks it in its own
way and puts it back, checking that verify is OK again before the next test.
"""

from __future__ import annotations

import pytest

from tests.lab.checks_pair import (
    await_verify,
    ensure_ok,
    flush_host_arp,
    guest,
    labctl,
    vip,
)
from tests.lab.conftest import LabPair

pytestmark = pytest.mark.lab

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def pair(checks_pair: LabPair) -> LabPair:
    return checks_pair


def test_ok_after_provisioning(pair: LabPair, capsys: Capsys) -> None:
    result = labctl(pair, capsys, "verify", "--wait", "30", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["ok"] is True
    (p,) = document["pairs"]
    assert (p["verdict"], p["holder"]) == ("OK", pair.primary.name)
    assert p["vips"] == [
        {
            "vip": vip(pair),
            "holders": [pair.primary.name],
            "answered_by": pair.primary.name,  # the VIP's SSH host key is the primary's
            "data_path_error": None,
        }
    ]
    states = {n["name"]: (n["vrrp_state"], n["service"]) for n in p["nodes"]}
    assert states == {
        pair.primary.name: ("MASTER", "active"),
        pair.standby.name: ("BACKUP", "active"),
    }
    assert "labtest" not in result.out  # the pair's auth_pass


def test_plain_output_names_the_verdict_and_holder(pair: LabPair, capsys: Capsys) -> None:
    result = labctl(pair, capsys, "verify")
    assert result.code == 0
    header, row = result.out.splitlines()[:2]
    assert header.split()[:3] == ["PAIR", "VERDICT", "HOLDER"]
    assert row.split()[:3] == [pair.pair, "OK", pair.primary.name]


def test_no_holder_with_keepalived_stopped_on_both(pair: LabPair, capsys: Capsys) -> None:
    try:
        guest(pair, pair.standby.name, "systemctl stop keepalived")
        guest(pair, pair.primary.name, "systemctl stop keepalived")
        result = labctl(pair, capsys, "verify", "--json")
        assert result.code == 6
        p = result.json()["pairs"][0]
        assert p["verdict"] == "NO_HOLDER"
        assert [n["service"] for n in p["nodes"]] == ["inactive", "inactive"]
        assert "error: not every pair is OK: p1 NO_HOLDER" in result.err
    finally:
        guest(pair, pair.primary.name, "systemctl start keepalived")
        guest(pair, pair.standby.name, "systemctl start keepalived")
    ensure_ok(pair, capsys)


def test_mismatch_when_the_vip_is_added_by_hand_to_the_backup(
    pair: LabPair, capsys: Capsys
) -> None:
    try:
        guest(pair, pair.standby.name, f"ip addr add {vip(pair)} dev host0")
        result = labctl(pair, capsys, "verify", "--json")
        assert result.code == 6
        p = result.json()["pairs"][0]
        assert p["verdict"] == "MISMATCH"
        assert p["vips"][0]["holders"] == [pair.primary.name, pair.standby.name]
        assert f"{pair.standby.name} holds it but keepalived there is BACKUP" in " ".join(
            p["reasons"]
        )
    finally:
        guest(pair, pair.standby.name, f"ip addr del {vip(pair)} dev host0 || true")
        flush_host_arp(pair)
    ensure_ok(pair, capsys)


def test_split_brain_during_a_partition(pair: LabPair, capsys: Capsys) -> None:
    try:
        pair.hv.block_vrrp(pair.primary.name, pair.standby.name)
        p = await_verify(pair, capsys, lambda p: p["verdict"] != "OK")
        if p["verdict"] != "SPLIT_BRAIN":  # the standby needs one master-down interval
            p = await_verify(pair, capsys, lambda p: p["verdict"] == "SPLIT_BRAIN")
        assert p["vips"][0]["holders"] == [pair.primary.name, pair.standby.name]
        assert [n["vrrp_state"] for n in p["nodes"]] == ["MASTER", "MASTER"]
        assert labctl(pair, capsys, "verify").code == 6
    finally:
        pair.hv.unblock_vrrp(pair.primary.name, pair.standby.name)
    ensure_ok(pair, capsys)


def test_split_brain_with_mismatched_auth_pass(pair: LabPair, capsys: Capsys) -> None:
    conf = "/etc/keepalived/keepalived.conf"
    try:
        guest(
            pair,
            pair.standby.name,
            f"cp -p {conf} {conf}.labtest && "
            f"sed -i 's/auth_pass .*/auth_pass other12/' {conf} && systemctl reload keepalived",
        )
        p = await_verify(pair, capsys, lambda p: p["verdict"] == "SPLIT_BRAIN")
        assert [n["vrrp_state"] for n in p["nodes"]] == ["MASTER", "MASTER"]
    finally:
        guest(pair, pair.standby.name, f"mv {conf}.labtest {conf} && systemctl reload keepalived")
    ensure_ok(pair, capsys)


def test_unknown_for_a_frozen_node_with_the_standby_seen_holding(
    pair: LabPair, capsys: Capsys
) -> None:
    try:
        pair.hv.pause(pair.primary.name)
        p = await_verify(pair, capsys, lambda p: p["vips"][0]["holders"] == [pair.standby.name])
        assert p["verdict"] == "UNKNOWN"
        frozen = p["nodes"][0]
        assert frozen["reachable"] is False and frozen["error"]
        assert frozen["holds"] == []  # unknown, and reported as paused, not "not holding"
        assert frozen["machine_state"] == "paused"  # the hypervisor said so, before any SSH
        assert p["reasons"][0] == f"{pair.primary.name} paused: run `labctl up` (resumes it)"
        assert any(f"seen on {pair.standby.name}" in r for r in p["reasons"])
        assert labctl(pair, capsys, "verify").code == 5
    finally:
        pair.hv.resume(pair.primary.name)
    ensure_ok(pair, capsys)


def test_unknown_for_a_stopped_node(pair: LabPair, capsys: Capsys) -> None:
    try:
        pair.hv.stop(pair.primary.name)
        p = await_verify(pair, capsys, lambda p: p["vips"][0]["holders"] == [pair.standby.name])
        assert p["verdict"] == "UNKNOWN"
        assert p["nodes"][0]["reachable"] is False
        assert p["nodes"][1]["vrrp_state"] == "MASTER"
        assert labctl(pair, capsys, "verify", "--json").code == 5
    finally:
        pair.hv.start(pair.primary.name)
    # keepalived starts after network-online at boot, then takes the VIP back
    ensure_ok(pair, capsys, wait=90)
