"""Lab tests: `labctl apply` from nothing and again, and answers from the hypervisor first.

One two-pair lab: apply builds it (parallel clones), a second apply changes nothing; then the
standbys are paused, unplugged, stopped and deleted in turn, and verify/doctor/provision say
so from the hypervisor (the reason is asserted, not a time); `up` and `apply` heal it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from labctl.cli import run
from labctl.hypervisor.nspawn import NspawnHypervisor
from labctl.ops import lab as lab_ops
from labctl.profile import Profile
from tests.lab.conftest import ProfileFactory

pytestmark = pytest.mark.lab


@pytest.fixture
def two_pairs(make_profile: ProfileFactory) -> Iterator[Profile]:
    prof = make_profile(2)
    yield prof
    lab_ops.destroy(prof, NspawnHypervisor(prof))


def labctl(capsys: pytest.CaptureFixture[str], prof: Profile, *args: str) -> tuple[int, str]:
    code = run(["-p", str(prof.path), *args])
    out = capsys.readouterr().out
    return code, out


def standby_view(document: dict[str, Any], pair: str) -> dict[str, Any]:
    pairs = document["pairs"]
    assert isinstance(pairs, list)
    (found,) = [p for p in pairs if p["pair"] == pair]
    nodes = found["nodes"]
    return {"verdict": found["verdict"], "reasons": found["reasons"], **nodes[1]}


def test_apply_builds_the_lab_then_changes_nothing_and_machines_are_judged_first(
    two_pairs: Profile, capsys: pytest.CaptureFixture[str]
) -> None:
    prof = two_pairs
    hv = NspawnHypervisor(prof)
    code, out = labctl(capsys, prof, "apply", "--json")
    assert code == 0, out
    first = json.loads(out)
    assert first["changed"] is True
    assert [(p["pair"], p["standby_created"], p["keepalived"], p["verdict"]) for p in
            first["pairs"]] == [("p1", True, "installed", "OK"), ("p2", True, "installed", "OK")]
    assert sorted(first["up"]["created"]) == ["prod-1", "prod-2"]

    code, out = labctl(capsys, prof, "apply")
    assert code == 0, out
    assert "nothing to change: the lab already matches the profile" in out
    assert out.count("(kept)") == 2 and out.count("unchanged") == 2

    # paused and unplugged: said at once by verify and doctor, then healed by `up`
    hv.pause("prod-1-standby")
    hv.set_link("prod-2-standby", False)
    code, out = labctl(capsys, prof, "verify", "--json")
    assert code == 5
    document = json.loads(out)
    paused, unplugged = standby_view(document, "p1"), standby_view(document, "p2")
    assert (paused["verdict"], paused["machine_state"], paused["reachable"]) == (
        "UNKNOWN", "paused", False)
    assert "prod-1-standby paused: run `labctl up` (resumes it)" in paused["reasons"]
    assert unplugged["machine_state"] == "link down"
    assert "prod-2-standby link down (cable out): run `labctl up` (reconnects it)" in (
        unplugged["reasons"])
    code, out = labctl(capsys, prof, "doctor", "--json")
    checks = {(c["subject"], c["check"]): c for c in json.loads(out)["checks"]}
    assert checks[("prod-1-standby", "machine")]["detail"].startswith("paused")
    assert checks[("prod-2-standby", "machine")]["detail"].startswith("link down")
    assert ("prod-1-standby", "ssh") not in checks
    code, out = labctl(capsys, prof, "up")
    assert code == 0
    code, out = labctl(capsys, prof, "verify", "--wait", "30")
    assert code == 0, out

    # stopped and deleted: provision refuses the pair without SSH; apply recreates
    hv.stop("prod-1-standby")
    lab_ops.wait_until_stopped(hv, ["prod-1-standby"], deadline=30)
    hv.destroy("prod-2-standby")
    code, out = labctl(capsys, prof, "verify", "--json")
    document = json.loads(out)
    assert "prod-1-standby stopped: run `labctl up`" in standby_view(document, "p1")["reasons"]
    absent = standby_view(document, "p2")
    assert absent["machine_state"] == "absent"
    assert "prod-2-standby not created: run `labctl clone prod-2`" in absent["reasons"]
    code, out = labctl(capsys, prof, "provision", "pair", "--json")
    assert code == 5
    errors = {p["pair"]: p["error"] for p in json.loads(out)["pairs"]}
    assert "prod-2-standby not created: run `labctl clone prod-2`" in errors["p2"]
    code, out = labctl(capsys, prof, "apply", "--json")
    assert code == 0, out
    again = json.loads(out)
    assert again["up"]["started"] == ["prod-1-standby"]
    assert [(p["pair"], p["standby_created"], p["verdict"]) for p in again["pairs"]] == [
        ("p1", False, "OK"), ("p2", True, "OK")]
