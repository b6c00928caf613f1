"""VRRP modes on real keepalived: unicast where multicast is dropped, VRRPv3 at 0.1 s adverts,
and preempt = false.

One pair of its own (these tests reconfigure and break it), provisioned in turn from variants
of one profile: the same lab, machines and addresses, only the pair's VRRP keys differ. The
tests run in file order and each starts by provisioning the variant it needs, so each also
passes alone.

Dropping multicast VRRP: an nftables bridge table of this test's own, whose rule matches only
frames entering the bridge from this pair's two veths (IP protocol 112 to 224.0.0.18), so other
pairs on the run's shared bridge are untouched; it is deleted afterwards, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl.cli import run
from labctl.ops import lab as lab_ops
from tests.lab.checks_pair import CliRun
from tests.lab.conftest import LabEnv, LabPair, bring_up, write_profile

pytestmark = pytest.mark.lab

Capsys = pytest.CaptureFixture[str]


@pytest.fixture(scope="module")
def pair(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPair]:
    prof = write_profile(
        lab_env, tmp_path_factory.mktemp("vrrp-modes"), 1, names=[("vm-a", "vm-a-standby")]
    )
    lab = bring_up(prof)
    lab_pair = LabPair(lab.profile, lab.hv, pair="p1")
    try:
        yield lab_pair
    finally:
        lab_ops.destroy(lab_pair.profile, lab_pair.hv)


def variant(pair: LabPair, tag: str, **keys: Any) -> Path:
    """The pair's profile with these pair keys set, written beside it (same check script)."""
    assert pair.profile.path is not None
    text = pair.profile.path.read_text()
    head, table = text.split("[pairs.p1]\n", 1)
    body, rest = table.split("[pairs.p1.check]", 1)
    for key, value in keys.items():
        rendered = str(value).lower() if isinstance(value, bool) else str(value)
        body, found = re.subn(rf"^{key} = .*$", f"{key} = {rendered}", body, flags=re.M)
        if not found:
            body += f"{key} = {rendered}\n"
    path = pair.profile.path.with_name(f"labctl-{tag}.toml")
    path.write_text(f"{head}[pairs.p1]\n{body}[pairs.p1.check]{rest}")
    return path


def labctl(profile: Path, capsys: Capsys, *args: str) -> CliRun:
    capsys.readouterr()
    code = run(["-p", str(profile), *args])
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err)


def provision_ok(pair: LabPair, profile: Path, capsys: Capsys, holder: str) -> None:
    """Provision the variant, then wait until verify says OK with ``holder`` holding."""
    done = labctl(profile, capsys, "provision", "pair", pair.pair)
    assert done.code == 0, done.err
    await_pair(pair, profile, capsys, lambda p: p["verdict"] == "OK" and p["holder"] == holder)


def await_pair(
    pair: LabPair, profile: Path, capsys: Capsys, predicate: Any, deadline: int = 30
) -> dict[str, Any]:
    import time

    end = time.monotonic() + deadline
    last: dict[str, Any] = {}
    while time.monotonic() < end:
        last = labctl(profile, capsys, "verify", pair.pair, "--json").json()["pairs"][0]
        if predicate(last):
            return last
    raise AssertionError(f"verify never showed the awaited state within {deadline} s: {last}")


def drill(profile: Path, capsys: Capsys, pair: LabPair, fault: str) -> dict[str, Any]:
    result = labctl(profile, capsys, "failover", pair.pair, "--fault", fault, "--json")
    document: dict[str, Any] = result.json()
    assert result.code == 0, (document["problems"], result.err)
    assert document["ok"] and document["ended_ok"]
    return document


@contextlib.contextmanager
def multicast_vrrp_dropped(pair: LabPair) -> Iterator[str]:
    """Drop VRRP to 224.0.0.18 entering the bridge from this pair's veths only."""
    table = f"labctl_mcdrop_{os.getpid()}"
    ports = ", ".join(f'"{pair.hv.port(n.name)}"' for n in (pair.primary, pair.standby))
    rules = (
        f"table bridge {table} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority -10; policy accept;\n"
        f"    iifname {{ {ports} }} ip protocol 112 ip daddr 224.0.0.18 drop\n"
        "  }\n"
        "}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        yield table
    finally:
        subprocess.run(["nft", "delete", "table", "bridge", table], check=False)
    gone = subprocess.run(["nft", "list", "table", "bridge", table], capture_output=True)
    assert gone.returncode != 0, f"nft table {table} is still there"


def test_multicast_dropped_is_split_brain_and_unicast_works_there(
    pair: LabPair, capsys: Capsys
) -> None:
    multicast = variant(pair, "multicast", unicast=False)
    unicast = variant(pair, "unicast", unicast=True)
    primary, standby = pair.primary.name, pair.standby.name
    provision_ok(pair, multicast, capsys, primary)
    with multicast_vrrp_dropped(pair):
        # the standby hears no master: both become MASTER, both hold the VIP
        await_pair(pair, multicast, capsys, lambda p: p["verdict"] == "SPLIT_BRAIN")
        verify = labctl(multicast, capsys, "verify", pair.pair)
        assert verify.code == 6, verify.err
        assert "SPLIT_BRAIN" in verify.err

        doctor = labctl(multicast, capsys, "doctor", "--json")
        adverts = [c for c in doctor.json()["checks"] if c["check"] == "adverts"]
        assert adverts and all(c["status"] == "FAIL" for c in adverts), adverts
        assert {c["detail"].split()[0] for c in adverts} == {primary, standby}
        assert all("heard no VRRP adverts" in c["detail"] for c in adverts)
        assert all("pairs.p1.unicast = true" in c["fix"] for c in adverts)
        assert doctor.code == 6

        # the same pair with unicast adverts: one holder again, and it fails over
        provision_ok(pair, unicast, capsys, primary)
        doctor = labctl(unicast, capsys, "doctor", "--json")
        adverts = [c for c in doctor.json()["checks"] if c["check"] == "adverts"]
        assert [(c["status"], c["detail"].split()[0]) for c in adverts] == [("OK", standby)]

        document = drill(unicast, capsys, pair, "crash")
        (trial,) = document["trials"]
        assert document["theory_kind"] == "hard"
        assert document["theory"] == pytest.approx(3 * 1 + (256 - 100) / 256, abs=1e-4)
        assert (trial["faulted"], trial["peer"]) == (primary, standby)
        assert trial["takeover"] is not None and trial["error"] is not None
        assert trial["settled_on"] == primary and document["final_holders"] == [primary]


def test_vrrp_v3_with_centisecond_adverts_takes_over_after_a_crash(
    pair: LabPair, capsys: Capsys
) -> None:
    v3 = variant(pair, "v3", unicast=False, vrrp_version=3, advert_int=0.1)
    primary, standby = pair.primary.name, pair.standby.name
    provision_ok(pair, v3, capsys, primary)
    conf = pair.exec(primary, ["cat", "/etc/keepalived/keepalived.conf"]).stdout
    assert "  advert_int 0.1\n" in conf and "  version 3\n" in conf
    document = drill(v3, capsys, pair, "crash")
    assert document["theory"] == pytest.approx(0.3 + (256 - 100) * 0.1 / 256, abs=1e-4)
    (trial,) = document["trials"]
    assert trial["synced"] is True
    assert (trial["faulted"], trial["peer"]) == (primary, standby)
    assert 0 < trial["takeover"] < trial["recovered_at"]
    assert document["final_holders"] == [primary]


def test_nopreempt_standby_keeps_the_vip_after_the_primary_returns(
    pair: LabPair, capsys: Capsys
) -> None:
    off = variant(pair, "nopreempt", unicast=False, vrrp_version=2, advert_int=1, preempt=False)
    primary, standby = pair.primary.name, pair.standby.name
    done = labctl(off, capsys, "provision", "pair", pair.pair)
    assert done.code == 0, done.err
    holder = await_pair(pair, off, capsys, lambda p: p["verdict"] == "OK")["holder"]
    other = standby if holder == primary else primary
    conf = pair.exec(primary, ["cat", "/etc/keepalived/keepalived.conf"]).stdout
    assert "nopreempt" in conf and "state BACKUP" in conf

    # keepalived stopped on the holder and started again: the other node keeps the VIP
    document = drill(off, capsys, pair, "stop")
    (trial,) = document["trials"]
    seen = (holder, trial)  # shown when an assertion fails: what verify and the drill saw
    assert (trial["faulted"], trial["peer"]) == (holder, other), seen
    assert trial["settled_on"] == other and document["final_holders"] == [other], seen
    # the returned node stays BACKUP: verify is OK with the node that took over as holder
    after = await_pair(pair, off, capsys, lambda p: p["verdict"] == "OK")
    states = {n["name"]: n["vrrp_state"] for n in after["nodes"]}
    assert after["holder"] == other, (seen, after)
    assert states == {other: "MASTER", holder: "BACKUP"}, (seen, after)
