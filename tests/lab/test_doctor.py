"""`labctl doctor` on real guests: a healthy pair passes; each planted problem is caught.

Planted problems: the script user deleted, another VRRP router on the bridge using the pair's
VRID (real adverts sent from the host's bridge address: what a second pair with the same VRID
puts on the wire), the VIP already answered by another machine (the host's bridge) before the
pair is up, and a different auth_pass on one node.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.checks_pair import (
    ensure_ok,
    flush_host_arp,
    guest,
    labctl,
    vip_ip,
)
from tests.lab.conftest import LabEnv, LabPair

pytestmark = pytest.mark.lab

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def pair(checks_pair: LabPair) -> LabPair:
    return checks_pair


def doctor(pair: LabPair, capsys: Capsys) -> tuple[int, dict[str, Any]]:
    result = labctl(pair, capsys, "doctor", "--json")
    document: dict[str, Any] = result.json()
    assert "labtest" not in result.out + result.err  # auth_pass never shown
    return result.code, document


def failed(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["subject"], c["check"]) for c in document["checks"] if c["status"] == "FAIL"]


def check(document: dict[str, Any], subject: str, name: str) -> dict[str, Any]:
    found = [c for c in document["checks"] if c["subject"] == subject and c["check"] == name]
    assert len(found) == 1, found
    first: dict[str, Any] = found[0]
    return first


def test_provisioned_pair_passes(pair: LabPair, capsys: Capsys) -> None:
    ensure_ok(pair, capsys)
    code, document = doctor(pair, capsys)
    assert code == 0 and failed(document) == []
    assert check(document, "lab", "backend")["status"] == "OK"
    assert check(document, pair.primary.name, "keepalived")["status"] == "WARN"  # 2.2.7
    assert check(document, "pairs.p1", "vrid")["status"] == "OK"
    assert check(document, "pairs.p1", "vip answered")["status"] == "OK"


def test_missing_script_user(pair: LabPair, capsys: Capsys) -> None:
    try:
        guest(pair, pair.standby.name, "userdel keepalived_script")
        code, document = doctor(pair, capsys)
        assert code == 6
        assert failed(document) == [(pair.standby.name, "script user")]
        assert check(document, pair.standby.name, "script user")["fix"] == (
            "labctl provision pair p1"
        )
    finally:
        guest(
            pair,
            pair.standby.name,
            "getent passwd keepalived_script || useradd --system --no-create-home "
            "--shell /usr/sbin/nologin keepalived_script",
        )


def _advert(vrid: int, priority: int, vip: str) -> bytes:
    body = struct.pack("!BBBBBBH", 0x21, vrid, priority, 1, 1, 1, 0) + socket.inet_aton(vip)
    body += b"\0" * 8  # authentication data
    checksum = 0
    for i in range(0, len(body), 2):
        checksum += (body[i] << 8) + body[i + 1]
    checksum = (checksum >> 16) + (checksum & 0xFFFF)
    checksum = ~(checksum + (checksum >> 16)) & 0xFFFF
    return body[:6] + struct.pack("!H", checksum) + body[8:]


@contextlib.contextmanager
def foreign_router(source_ip: str, vrid: int) -> Iterator[None]:
    """Another VRRP master on the segment: adverts for ``vrid`` every 0.5 s from the host."""
    stop = threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source_ip))
    packet = _advert(vrid, 50, "10.255.255.1")

    def send() -> None:
        while not stop.is_set():
            sock.sendto(packet, ("224.0.0.18", 0))
            stop.wait(0.5)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()
        sock.close()


def test_vrid_collision_with_another_router_on_the_bridge(
    pair: LabPair, lab_env: LabEnv, capsys: Capsys
) -> None:
    vrid = pair.profile.pair(pair.pair).vrid
    with foreign_router(lab_env.gateway, vrid):
        code, document = doctor(pair, capsys)
    assert code == 6
    vrid_check = check(document, "pairs.p1", "vrid")
    assert vrid_check["status"] == "FAIL"
    assert (
        f"VRID {vrid} is already used on the segment by {lab_env.gateway}" in (vrid_check["detail"])
    )
    ensure_ok(pair, capsys)  # priority 50 < ours: the pair itself kept working


def test_vip_already_answered_before_the_pair_is_up(pair: LabPair, capsys: Capsys) -> None:
    bridge = pair.profile.lab.nspawn.bridge
    address = f"{vip_ip(pair)}/32"
    try:
        guest(pair, pair.standby.name, "systemctl stop keepalived")
        guest(pair, pair.primary.name, "systemctl stop keepalived")
        subprocess.run(["ip", "addr", "add", address, "dev", bridge], check=True)
        code, document = doctor(pair, capsys)
        assert code == 6
        answered = check(document, "pairs.p1", "vip answered")
        assert answered["status"] == "FAIL"
        assert "already answered by" in answered["detail"]
    finally:
        subprocess.run(["ip", "addr", "del", address, "dev", bridge], check=False)
        guest(pair, pair.primary.name, "systemctl start keepalived")
        guest(pair, pair.standby.name, "systemctl start keepalived")
    flush_host_arp(pair)
    ensure_ok(pair, capsys)


def test_mismatched_auth_pass_between_nodes(pair: LabPair, capsys: Capsys) -> None:
    conf = "/etc/keepalived/keepalived.conf"
    try:
        guest(
            pair,
            pair.standby.name,
            f"cp -p {conf} {conf}.labtest && sed -i 's/auth_pass .*/auth_pass other12/' {conf}",
        )
        code, document = doctor(pair, capsys)
        assert code == 6
        agree = check(document, "pairs.p1", "configs agree")
        assert agree["status"] == "FAIL" and "differ in auth_pass" in agree["detail"]
        assert "other12" not in str(document)
    finally:
        guest(pair, pair.standby.name, f"mv {conf}.labtest {conf}")
