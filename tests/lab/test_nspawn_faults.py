"""Lab tests: each fault mode of the nspawn backend does what it says."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labctl.hypervisor import MachineState
from labctl.ops import lab as lab_ops
from tests.lab.conftest import LabEnv, LabPair, bring_up, write_profile

pytestmark = pytest.mark.lab

# Runs with the host's Python inside one guest's network namespace only (nsenter -n), so the
# guest needs no tools: send or receive one raw IP packet of a given protocol.
RAW_PROBE = r"""
import socket, sys
mode, proto, peer = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
if mode == "send":
    for _ in range(3):
        s.sendto(b"labctl-probe", (peer, 0))
else:
    s.settimeout(float(sys.argv[4]))
    try:
        while True:
            data, (src, _) = s.recvfrom(2048)
            if src == peer and data.endswith(b"labctl-probe"):
                print("received"); break
    except TimeoutError:
        print("nothing")
"""


@pytest.fixture(scope="module")
def fault_pair(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPair]:
    """One pair for this module; every test restores what it breaks."""
    prof = write_profile(lab_env, tmp_path_factory.mktemp("faults"), 1)
    lab = bring_up(prof)
    pair = LabPair(lab.profile, lab.hv, pair="p1")
    yield pair
    lab_ops.destroy(pair.profile, pair.hv)


def _answers_ssh(ip: str) -> bool:
    try:
        lab_ops.ssh_banner(ip, 22, 2.0)
    except OSError:
        return False
    return True


def _raw_delivered(pair: LabPair, sender: str, receiver: str, proto: int) -> bool:
    """Send raw packets of ``proto`` from sender's netns; did receiver's netns get one?"""
    s_init, r_init = pair.hv.init_pid(sender), pair.hv.init_pid(receiver)
    assert s_init and r_init
    s_ip, r_ip = pair.ip(sender), pair.ip(receiver)
    listener = subprocess.Popen(
        [
            "nsenter",
            "-t",
            str(r_init),
            "-n",
            sys.executable,
            "-c",
            RAW_PROBE,
            "recv",
            str(proto),
            s_ip,
            "3",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    # the listener's socket must exist before sending: send until it reports or times out
    while listener.poll() is None:
        subprocess.run(
            [
                "nsenter",
                "-t",
                str(s_init),
                "-n",
                sys.executable,
                "-c",
                RAW_PROBE,
                "send",
                str(proto),
                r_ip,
            ],
            check=True,
        )
    out = listener.stdout.read() if listener.stdout else ""
    return out.strip() == "received"


def test_paused_machine_answers_nothing_and_resumes(fault_pair: LabPair) -> None:
    name, ip = fault_pair.primary.name, fault_pair.primary.ip
    init = fault_pair.hv.init_pid(name)
    fault_pair.hv.pause(name)
    try:
        assert fault_pair.hv.inspect(name).state is MachineState.PAUSED
        assert not _answers_ssh(ip)
        assert not _raw_delivered(fault_pair, fault_pair.standby.name, name, 253)
    finally:
        fault_pair.hv.resume(name)
    assert fault_pair.hv.inspect(name).state is MachineState.RUNNING
    assert _answers_ssh(ip)
    assert fault_pair.hv.init_pid(name) == init


def test_link_down_keeps_processes_and_cuts_the_network(fault_pair: LabPair) -> None:
    name, ip = fault_pair.standby.name, fault_pair.standby.ip
    before = fault_pair.exec(name, ["pgrep", "-x", "sshd"]).stdout.split()
    assert before
    fault_pair.hv.set_link(name, False)
    try:
        assert not _answers_ssh(ip)
        assert fault_pair.hv.inspect(name).state is MachineState.RUNNING
        assert fault_pair.exec(name, ["pgrep", "-x", "sshd"]).stdout.split() == before
        assert fault_pair.exec(name, ["cat", "/sys/class/net/host0/carrier"]).stdout.strip() == "0"
        # the guest keeps its address (a pulled cable, not a reconfiguration)
        addrs = fault_pair.exec(name, ["ip", "-o", "-4", "addr", "show", "dev", "host0"]).stdout
        assert fault_pair.standby.address in addrs
    finally:
        fault_pair.hv.set_link(name, True)
    lab_ops.wait_for_ssh(name, fault_pair.standby.address, port=22, deadline=30)
    assert fault_pair.exec(name, ["pgrep", "-x", "sshd"]).stdout.split()[0] == before[0]


def test_vrrp_partition_drops_vrrp_only_and_is_removed(fault_pair: LabPair) -> None:
    prod, standby = fault_pair.primary.name, fault_pair.standby.name
    hv = fault_pair.hv
    assert _raw_delivered(fault_pair, prod, standby, 112)
    hv.block_vrrp(prod, standby)
    try:
        rules = subprocess.run(
            ["nft", "list", "table", "bridge", hv.table], capture_output=True, text=True
        ).stdout
        assert hv.port(prod) in rules and hv.port(standby) in rules
        assert not _raw_delivered(fault_pair, prod, standby, 112)
        assert not _raw_delivered(fault_pair, standby, prod, 112)
        assert _raw_delivered(fault_pair, prod, standby, 253)  # other protocols pass
        assert _answers_ssh(fault_pair.primary.ip) and _answers_ssh(fault_pair.standby.ip)
        hv.block_vrrp(prod, standby)  # idempotent
    finally:
        hv.unblock_vrrp(prod, standby)
    assert hv.vrrp_blocked() == set()
    assert _raw_delivered(fault_pair, standby, prod, 112)
    hv.unblock_vrrp(prod, standby)  # a no-op when nothing is blocked


STOP_PROBE_UNIT = """[Unit]
Description=records how the machine went down

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'echo graceful > /var/tmp/stopped'

[Install]
WantedBy=multi-user.target
"""


def _stopped_marker(pair: LabPair, name: str) -> str:
    return pair.exec(name, ["sh", "-c", "cat /var/tmp/stopped 2>/dev/null; true"]).stdout.strip()


def test_graceful_stop_runs_the_guests_shutdown_and_hard_stop_does_not(
    fault_pair: LabPair,
) -> None:
    name = fault_pair.standby.name
    hv = fault_pair.hv
    port = Path(f"/sys/class/net/{hv.port(name)}")
    install = (
        f"printf %s {shlex.quote(STOP_PROBE_UNIT)} > /etc/systemd/system/stop-probe.service"
        " && systemctl daemon-reload && systemctl enable --now stop-probe.service"
    )
    assert fault_pair.exec(name, ["sh", "-c", install]).exit_code == 0

    hv.stop(name)
    assert lab_ops.wait_until_stopped(hv, [name], deadline=30) == []
    assert not port.exists()
    assert _stopped_marker(fault_pair, name) == "graceful"

    fault_pair.exec(name, ["rm", "/var/tmp/stopped"])
    hv.start(name)
    lab_ops.wait_for_ssh(name, fault_pair.standby.address, port=22, deadline=30)
    # SSH answers before boot has finished: wait (in the guest) for the boot, then check
    fault_pair.exec(name, ["systemctl", "is-system-running", "--wait"], timeout=120)
    assert fault_pair.exec(name, ["systemctl", "is-active", "stop-probe"]).stdout.strip() == (
        "active"
    )
    hv.stop(name, hard=True)
    assert hv.inspect(name).state is MachineState.STOPPED
    assert not port.exists()
    assert _stopped_marker(fault_pair, name) == ""

    hv.start(name)
    lab_ops.wait_for_ssh(name, fault_pair.standby.address, port=22, deadline=30)
