"""watch, logs and evidence bundles against fake machines: events, merging, masking, layout."""

from __future__ import annotations

import datetime as dt
import json
import tarfile
from pathlib import Path

import pytest

from labctl import keepalived as ka
from labctl.errors import OperationFailed
from labctl.ops import evidence as evidence_op
from labctl.ops import logs as logs_op
from labctl.ops import watch as watch_op
from labctl.profile import Node, Profile
from labctl.profile_load import parse
from labctl.remote import Remote
from tests.unit.checks_fakes import (
    PAIR_PROFILE_WITH_CHECK,
    FakeClock,
    FakeMachine,
    FakeRemote,
    SyncExecutor,
)

VIP = "10.249.90.100/24"
SECRET = "s3cret!"


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    path = tmp_path / "lab.toml"
    path.write_text(PAIR_PROFILE_WITH_CHECK)
    return parse(PAIR_PROFILE_WITH_CHECK, path=path)


def machines(profile: Profile) -> tuple[FakeMachine, FakeMachine]:
    primary = FakeMachine("prod-back", "10.249.90.10/24", vips=[VIP], vrrp_state="MASTER")
    standby = FakeMachine("prod-back-standby", "10.249.90.20/24")
    for role, m in (("primary", primary), ("standby", standby)):
        conf = ka.render_node(profile, "back", role, mask_secrets=False).conf  # type: ignore[arg-type]
        m.files[ka.CONF_PATH] = conf.encode()
    return primary, standby


# -- watch -------------------------------------------------------------------------------


def test_watch_reports_each_nodes_first_state_then_only_changes(profile: Profile) -> None:
    primary, standby = machines(profile)
    clock = FakeClock()
    events: list[dict[str, object]] = []
    refreshes: list[watch_op.Snapshot] = []

    def world(seconds: float) -> None:
        clock.sleep(seconds)
        t = clock.now - 1000.0
        if 1.0 <= t < 2.0:  # keepalived stopped on the primary, the standby took over
            primary.service, primary.vips, primary.vrrp_state = "inactive", [], None
            standby.vips, standby.vrrp_state = [VIP], "MASTER"
        elif t >= 2.0:  # the primary is back and preempts
            primary.service, primary.vips, primary.vrrp_state = "active", [VIP], "MASTER"
            standby.vips, standby.vrrp_state = [], "BACKUP"
        if 2.5 <= t < 3.0:
            standby.reachable = False
        elif t >= 3.0:
            standby.reachable = True

    by_name = {m.name: m for m in (primary, standby)}

    def connect(node: Node) -> Remote:
        return FakeRemote(by_name[node.name])

    watch = watch_op.Watch(
        profile,
        ["back"],
        connect,
        clock=clock,
        wall=lambda: clock.now + 1.7e9,
        sleep=world,
        executor=SyncExecutor(),
    )
    watch.run(
        lambda e: events.append(e.to_json()),
        refreshes.append,
        lambda: clock.now - 1000.0 > 5.0,  # reconnects are tried every 2 s
    )
    seen = [(e["node"], e["state"], e["holds"], e["reachable"], e["holder"]) for e in events]
    assert seen == [
        ("prod-back", "MASTER", True, True, "prod-back"),
        ("prod-back-standby", "BACKUP", False, True, "prod-back"),
        ("prod-back", "STOPPED", False, True, None),
        ("prod-back-standby", "MASTER", True, True, "prod-back-standby"),
        ("prod-back", "MASTER", True, True, None),  # both hold until the standby lets go
        ("prod-back-standby", "BACKUP", False, True, "prod-back"),
        ("prod-back-standby", None, None, False, "prod-back"),  # no answer: never "not holding"
        ("prod-back-standby", "BACKUP", False, True, "prod-back"),
    ]
    times = [str(e["time"]) for e in events]
    assert times == sorted(times) and times[0].endswith("+00:00")
    assert refreshes and refreshes[-1].holders("back") == ("prod-back",)


# -- logs --------------------------------------------------------------------------------


def test_logs_merge_both_journals_by_time_and_mask_the_password(profile: Profile) -> None:
    primary, standby = machines(profile)
    primary.journal = [(3_000_000, "Entering MASTER STATE"), (1_000_000, "Starting VRRP")]
    standby.journal = [(2_000_000, f"auth_pass {SECRET} rejected"), (4_000_000, "BACKUP")]
    remotes: dict[str, Remote] = {m.name: FakeRemote(m) for m in (primary, standby)}
    got = logs_op.read_logs(profile, "back", remotes, since=None)
    assert [(line.at, line.node) for line in got.lines] == [
        (1.0, "prod-back"),
        (2.0, "prod-back-standby"),
        (3.0, "prod-back"),
        (4.0, "prod-back-standby"),
    ]
    assert got.lines[1].message == "auth_pass ******** rejected"
    assert got.lines[0].to_json()["time"] == "1970-01-01T00:00:01.000000+00:00"
    assert got.errors == {}


def test_logs_since_is_sent_as_one_instant_and_a_lost_node_is_reported(profile: Profile) -> None:
    primary, standby = machines(profile)
    standby.reachable = False
    remotes: dict[str, Remote] = {m.name: FakeRemote(m) for m in (primary, standby)}
    got = logs_op.read_logs(profile, "back", remotes, since=1234.5)
    assert primary.commands[-1][-2:] == ("--since", "@1234.500000")
    assert list(got.errors) == ["prod-back-standby"]


def test_parse_since_forms() -> None:
    now = 1_800_000_000.0
    assert logs_op.parse_since("15m", lambda: now) == now - 900
    assert logs_op.parse_since("-2h", lambda: now) == now - 7200
    assert logs_op.parse_since("@12.5", lambda: now) == 12.5
    stamp = dt.datetime(2026, 12, 2, 1, 30, tzinfo=dt.UTC)
    assert logs_op.parse_since("2026-12-02T01:30+00:00", lambda: now) == stamp.timestamp()
    with pytest.raises(ValueError, match="is not a time"):
        logs_op.parse_since("last tuesday", lambda: now)


# -- evidence ----------------------------------------------------------------------------


def test_evidence_bundle_layout_and_no_password_anywhere(profile: Profile, tmp_path: Path) -> None:
    primary, standby = machines(profile)
    primary.journal = [(1, f"something said {SECRET}")]
    remotes: dict[str, Remote] = {m.name: FakeRemote(m) for m in (primary, standby)}
    when = dt.datetime(2026, 12, 2, 1, 2, 3, tzinfo=dt.UTC).timestamp()
    bundle = evidence_op.write_bundle(
        profile,
        "back",
        remotes,
        directory=tmp_path,
        what="crash",
        document={"pair": "back", "fault": "crash"},
        started=when - 10,
        now=lambda: when,
    )
    assert bundle == tmp_path / "unit-lab-back-crash-20261202T010203Z.tar.gz"
    with tarfile.open(bundle) as tar:
        parts = {}
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            parts[info.name] = f.read()
    top = "unit-lab-back-crash-20261202T010203Z"
    expected = {f"{top}/{p}" for p in ("manifest.json", "profile.toml", "result.json")}
    expected.add(f"{top}/labctl-version.txt")
    for node in ("prod-back", "prod-back-standby"):
        expected |= {f"{top}/nodes/{node}/{p}" for p in evidence_op.NODE_PARTS}
    assert set(parts) == expected
    for name, data in parts.items():
        assert SECRET.encode() not in data, name
    conf = parts[f"{top}/nodes/prod-back/keepalived.conf"].decode()
    assert "auth_pass ********" in conf
    manifest = json.loads(parts[f"{top}/manifest.json"])
    assert manifest["fault"] == "crash" and manifest["errors"] == {}
    assert manifest["started"] == "2026-12-02T01:01:53.000+00:00"
    # the journal is read from the run's start (a second earlier: journalctl takes seconds)
    argv = next(c for c in primary.commands if c[:2] == ("sh", "-c"))
    assert argv[-1] == str(int(when - 10) - 1)


def test_evidence_records_an_unreachable_node_and_refuses_an_unwritable_dir(
    profile: Profile, tmp_path: Path
) -> None:
    primary, standby = machines(profile)
    standby.reachable = False
    remotes: dict[str, Remote] = {m.name: FakeRemote(m) for m in (primary, standby)}
    bundle = evidence_op.write_bundle(
        profile,
        "back",
        remotes,
        directory=tmp_path,
        what="verify",
        document={},
        started=0,
        now=lambda: 0.0,
    )
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        f = tar.extractfile(next(n for n in names if n.endswith("manifest.json")))
        assert f is not None
        manifest = json.loads(f.read())
    assert manifest["kind"] == "verify" and manifest["fault"] is None
    assert list(manifest["errors"]) == ["prod-back-standby"]
    assert not any("/nodes/prod-back-standby/" in n for n in names)
    (tmp_path / "file").write_text("")
    with pytest.raises(OperationFailed, match="cannot write there"):
        evidence_op.prepare(tmp_path / "file" / "sub")
