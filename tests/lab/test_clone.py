"""Lab tests: `labctl clone` on real nspawn guests."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import paramiko
import pytest

from labctl import paths
from labctl.cli import run
from labctl.errors import OperationFailed
from labctl.hypervisor import MachineState
from labctl.ops import clone as clone_ops
from tests.lab.conftest import Lab, LabPair, MachinesFactory, ProfileFactory

pytestmark = pytest.mark.lab


def _identity(lab: Lab, name: str) -> dict[str, str]:
    script = (
        "cat /etc/hostname; cat /etc/machine-id; cat /sys/class/net/host0/address;"
        " ip -o -4 addr show dev host0 | awk '{print $4}';"
        " cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2"
    )
    result = lab.exec(name, ["sh", "-c", script])
    assert result.exit_code == 0, result.stderr
    hostname, machine_id, mac, address, host_key = result.stdout.split()
    return {
        "hostname": hostname,
        "machine_id": machine_id,
        "mac": mac,
        "address": address,
        "host_key": host_key,
    }


def _remote_host_key(ip: str) -> str:
    transport = paramiko.Transport((ip, 22))
    try:
        transport.start_client(timeout=10)
        return transport.get_remote_server_key().get_base64()
    finally:
        transport.close()


def test_standby_has_its_own_identity(shared_pair: LabPair) -> None:
    prod, standby = shared_pair.primary, shared_pair.standby
    a, b = _identity(shared_pair, prod.name), _identity(shared_pair, standby.name)
    for key in a:
        assert a[key] != b[key], key
    assert b["hostname"] == standby.name
    assert b["address"] == standby.address
    assert a["address"] == prod.address
    # the host keys labctl trusts for each address are the ones each machine serves
    known = shared_pair.known_hosts.read_text().splitlines()
    for node, ident in ((prod, a), (standby, b)):
        served = _remote_host_key(node.ip)
        assert served in {line.split()[2] for line in known if line.split()[0] == node.ip}
        assert f"{node.ip} ssh-ed25519 {ident['host_key']}" in known
    for node in (prod, standby):
        assert shared_pair.ssh(node.name, "true").returncode == 0


def test_status_shows_both_running(
    shared_pair: LabPair, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["status", "-p", str(shared_pair.profile.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows[shared_pair.primary.name] == ["production", "running", shared_pair.primary.address]
    assert rows[shared_pair.standby.name] == ["standby", "running", shared_pair.standby.address]


def test_clone_again_is_a_no_op_that_says_so(
    shared_pair: LabPair, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _identity(shared_pair, shared_pair.standby.name)
    assert run(["clone", shared_pair.primary.name, "-p", str(shared_pair.profile.path)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _identity(shared_pair, shared_pair.standby.name) == before


@pytest.mark.parametrize("linked", [False, True], ids=["full", "linked"])
def test_production_keeps_running_and_alone_on_its_address_while_cloning(
    make_profile: ProfileFactory, lab_machines: MachinesFactory, linked: bool
) -> None:
    prof = make_profile()
    lab = lab_machines(prof, standbys=[])
    prod, standby = prof.nodes("p1")
    nspawn_pid = lab.hv.nspawn_pid(prod.name)
    prod_mac = _identity(lab, prod.name)["mac"]
    prod_key = _remote_host_key(prod.ip)
    bridge = prof.lab.nspawn.bridge

    errors: list[BaseException] = []

    def do_clone() -> None:
        try:
            clone_ops.clone(prof, lab.hv, prod.name, linked=linked)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=do_clone)
    worker.start()
    seen_macs: set[str] = set()
    seen_keys: set[str] = set()
    standby_addresses: set[str] = set()
    while worker.is_alive() or not seen_keys:
        neigh = subprocess.run(
            ["ip", "neigh", "show", prod.ip, "dev", bridge], capture_output=True, text=True
        ).stdout.split()
        if "lladdr" in neigh:
            seen_macs.add(neigh[neigh.index("lladdr") + 1])
        seen_keys.add(_remote_host_key(prod.ip))
        if lab.hv.init_pid(standby.name) is not None:
            addrs = lab.exec(standby.name, ["ip", "-o", "-4", "addr", "show", "dev", "host0"])
            standby_addresses.update(w for w in addrs.stdout.split() if "/" in w)
    worker.join()
    assert not errors, errors
    assert seen_macs <= {prod_mac}
    assert seen_keys == {prod_key}
    assert prod.address not in standby_addresses
    assert lab.hv.nspawn_pid(prod.name) == nspawn_pid
    assert _remote_host_key(standby.ip) != prod_key
    assert _identity(lab, standby.name)["mac"] != prod_mac
    assert lab.ssh(standby.name, "hostname").stdout.strip() == standby.name


def test_clone_of_a_missing_machine_fails_and_leaves_nothing(
    make_profile: ProfileFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    prof = make_profile()
    prod, standby = prof.nodes("p1")
    assert run(["clone", prod.name, "-p", str(prof.path)]) == 1
    err = capsys.readouterr().err
    assert f"cannot clone {prod.name}" in err and f"labctl up {prod.name}" in err
    assert not (paths.lab_dir(prof.lab.name) / "machines" / standby.name).exists()


def test_clone_of_a_machine_without_a_pair_names_the_argument(
    shared_pair: LabPair, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["clone", "nosuch", "-p", str(shared_pair.profile.path)]) == 2  # usage error
    assert "PRODUCTION: 'nosuch'" in capsys.readouterr().err


def test_existing_broken_standby_needs_force_and_force_recreates(
    fresh_pair: LabPair, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = str(fresh_pair.profile.path)
    prod, standby = fresh_pair.primary, fresh_pair.standby
    old = _identity(fresh_pair, standby.name)
    fresh_pair.hv.stop(standby.name, hard=True)

    assert run(["clone", prod.name, "-p", ref]) == 1
    assert "--force" in capsys.readouterr().err
    assert fresh_pair.hv.inspect(standby.name).state is MachineState.STOPPED

    assert run(["clone", prod.name, "--force", "-p", ref]) == 0
    assert "created" in capsys.readouterr().out
    new = _identity(fresh_pair, standby.name)
    assert new["machine_id"] != old["machine_id"]
    assert new["host_key"] != old["host_key"]
    # the stale host key was replaced: strict checking accepts the new machine
    assert fresh_pair.ssh(standby.name, "hostname").stdout.strip() == standby.name
    known = fresh_pair.known_hosts.read_text()
    assert old["host_key"] not in known and new["host_key"] in known


def test_clone_failing_halfway_leaves_no_half_machine(
    make_profile: ProfileFactory, lab_machines: MachinesFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    prof = make_profile()
    lab = lab_machines(prof, standbys=[])
    prod, standby = prof.nodes("p1")

    def broken(*_args: object, **_kwargs: object) -> list[str]:
        raise OperationFailed("injected failure while writing the identity")

    monkeypatch.setattr(clone_ops, "apply_identity", broken)
    with pytest.raises(OperationFailed, match="injected"):
        clone_ops.clone(prof, lab.hv, prod.name, linked=True)
    assert lab.hv.inspect(standby.name).state is MachineState.ABSENT
    assert not lab.hv.machine_dir(standby.name).exists()
    assert lab.hv.inspect(prod.name).state is MachineState.RUNNING
    assert not Path(f"/sys/class/net/{lab.hv.port(standby.name)}").exists()
