"""`labctl failover` on real guests: every fault once, its timeline checked for consistency.

A trial breaks the holder (the primary), the standby must take over, the fault is undone and
the pair must end OK again. The figures themselves are benchmarked in bench/failover.py; here
only their consistency is asserted (order of events, who holds, unreachable vs not holding).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.drill_events import shown_during_fault
from tests.lab.checks_pair import ensure_ok, labctl
from tests.lab.conftest import LabPair

pytestmark = pytest.mark.lab

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def pair(checks_pair: LabPair) -> LabPair:
    return checks_pair


def drill(pair: LabPair, capsys: Capsys, fault: str) -> dict[str, Any]:
    ensure_ok(pair, capsys)
    result = labctl(pair, capsys, "failover", pair.pair, "--fault", fault, "--json")
    assert result.out, (result.code, result.err)  # no report: the error labctl stopped with
    document: dict[str, Any] = result.json()
    assert result.code == 0, (document["problems"], result.err)
    assert document["ok"] and document["ended_ok"]
    assert document["final_holders"] == [pair.primary.name]
    trial: dict[str, Any] = document["trials"][0]
    assert len(document["trials"]) == 1
    assert (trial["faulted"], trial["peer"]) == (pair.primary.name, pair.standby.name)
    # the standby took over before the fault was undone, then the primary took the VIP back
    assert trial["takeover"] is not None
    assert 0 < trial["takeover"] < trial["recovered_at"]
    assert trial["settled_on"] == pair.primary.name and trial["failback"] is not None
    events = trial["events"]
    standby_holds = [e["t"] for e in events if e["node"] == pair.standby.name and e["holds"]]
    assert standby_holds and standby_holds[0] == trial["takeover"]
    # never a third holder, and the summary covers the one trial
    assert {e["node"] for e in events} == {pair.primary.name, pair.standby.name}
    assert document["summary"]["takeover"]["n"] == 1
    ensure_ok(pair, capsys)
    return trial


def test_stop_releases_at_once(pair: LabPair, capsys: Capsys) -> None:
    trial = drill(pair, capsys, "stop")
    assert trial["released"] is not None and trial["released"] < trial["takeover"]
    assert trial["overlap"] == 0
    assert trial["gap"] > 0  # the skew time, nobody holds


def test_crash_leaves_the_vip_on_the_crashed_node(pair: LabPair, capsys: Capsys) -> None:
    trial = drill(pair, capsys, "crash")
    assert trial["released"] is None  # SIGKILL: keepalived could not remove it
    assert trial["overlap"] > 0


def test_freeze_reports_the_node_unreachable_never_not_holding(
    pair: LabPair, capsys: Capsys
) -> None:
    trial = drill(pair, capsys, "freeze")
    shown = shown_during_fault(trial, pair.primary.name)
    # silent when the fault was undone, and never "not holding" meanwhile
    assert shown[-1] is None and False not in shown, trial["events"]
    assert trial["released"] is None
    assert trial["unreachable"][pair.primary.name] > 0


def test_link_down_reports_the_node_unreachable(pair: LabPair, capsys: Capsys) -> None:
    trial = drill(pair, capsys, "link")
    shown = shown_during_fault(trial, pair.primary.name)
    assert shown[-1] is None and False not in shown, trial["events"]
    assert trial["unreachable"][pair.primary.name] > 0


def test_partition_gives_two_holders_while_both_stay_reachable(
    pair: LabPair, capsys: Capsys
) -> None:
    trial = drill(pair, capsys, "partition")
    assert trial["overlap"] > 0  # both answered, both holding, at the same time
    assert pair.hv.vrrp_blocked() == set()


def test_failing_health_check_moves_the_vip(pair: LabPair, capsys: Capsys) -> None:
    check = "/etc/keepalived/check_heartbeat.sh"
    before = pair.exec(pair.primary.name, ["sha256sum", check]).stdout
    trial = drill(pair, capsys, "health")
    assert trial["released"] is not None  # the primary let go once outranked
    after = pair.exec(pair.primary.name, ["stat", "-c", "%U %a", check]).stdout.split()
    assert pair.exec(pair.primary.name, ["sha256sum", check]).stdout == before
    assert after == ["root", "755"]
