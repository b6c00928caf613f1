"""Evidence bundles, `labctl watch` and `labctl logs` on the shared checks pair (real guests).

The drill here is a graceful stop of the primary, which the pair recovers from on its own; each
test checks the pair is OK on its primary before and after, like tests/lab/test_failover.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.checks_pair import ensure_ok, labctl
from tests.lab.conftest import REPO, LabPair

pytestmark = pytest.mark.lab

Capsys = pytest.CaptureFixture[str]
SECRET = "labtest"  # the auth_pass tests/lab/conftest.py writes into every profile
NODE_PARTS = ("keepalived.journal", "keepalived.json", "ip-addr.txt", "ip-neigh.txt")


@pytest.fixture
def pair(checks_pair: LabPair) -> LabPair:
    return checks_pair


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        out = {}
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None, info.name
            out[info.name.split("/", 1)[1]] = f.read()
        return out


def check_bundle(pair: LabPair, bundle: Path, what: str) -> dict[str, bytes]:
    lab = pair.profile.lab.name
    assert bundle.name.startswith(f"{lab}-{pair.pair}-{what}-") and bundle.name.endswith(".tar.gz")
    parts = members(bundle)
    for name, data in parts.items():
        assert SECRET.encode() not in data, f"{name} carries the auth_pass"
    manifest = json.loads(parts["manifest.json"])
    assert manifest["errors"] == {}
    assert set(manifest["parts"]) == set(parts)
    for part in ("profile.toml", "result.json", "labctl-version.txt"):
        assert parts[part].strip(), part
    assert b"auth_pass = ********" in parts["profile.toml"]
    for node in (pair.primary, pair.standby):
        base = f"nodes/{node.name}"
        for part in NODE_PARTS:
            assert parts[f"{base}/{part}"].strip(), f"{base}/{part} is empty"
        conf = parts[f"{base}/keepalived.conf"].decode()
        assert "vrrp_instance VI_p1" in conf and "auth_pass ********" in conf
        assert node.ip in parts[f"{base}/ip-addr.txt"].decode()
        dump = json.loads(parts[f"{base}/keepalived.json"])
        assert dump[0]["data"]["iname"] == "VI_p1" and dump[0]["data"]["auth_data"] == ""
    return parts


def test_failover_evidence_bundle_has_every_part_and_no_password(
    pair: LabPair, capsys: Capsys, tmp_path: Path
) -> None:
    ensure_ok(pair, capsys)
    run = labctl(
        pair,
        capsys,
        "failover",
        pair.pair,
        "--fault",
        "stop",
        "--json",
        "--evidence",
        str(tmp_path),
    )
    assert run.code == 0, run.err
    document = run.json()
    (bundle,) = tmp_path.glob("*.tar.gz")
    assert document["evidence"] == str(bundle)
    parts = check_bundle(pair, bundle, "stop")
    timeline = json.loads(parts["result.json"])
    assert timeline["fault"] == "stop" and timeline["trials"][0]["faulted"] == pair.primary.name
    # the primary's journal covers the run: keepalived was stopped and started again
    journal = parts[f"nodes/{pair.primary.name}/keepalived.journal"].decode()
    assert "Stopping" in journal or "Stopped" in journal, journal[-2000:]
    ensure_ok(pair, capsys)


def test_verify_evidence_bundle(pair: LabPair, capsys: Capsys, tmp_path: Path) -> None:
    ensure_ok(pair, capsys)
    run = labctl(pair, capsys, "verify", pair.pair, "--json", "--evidence", str(tmp_path))
    assert run.code == 0, run.err
    (bundle,) = tmp_path.glob("*.tar.gz")
    assert run.json()["evidence"] == [str(bundle)]
    parts = check_bundle(pair, bundle, "verify")
    assert json.loads(parts["result.json"])["pairs"][0]["verdict"] == "OK"


def test_evidence_into_a_file_path_is_refused_before_the_drill(
    pair: LabPair, capsys: Capsys, tmp_path: Path
) -> None:
    target = tmp_path / "file"
    target.write_text("")
    run = labctl(pair, capsys, "failover", pair.pair, "--evidence", str(target))
    assert run.code == 2 and "'--evidence'" in run.err and "is a file" in run.err
    below = target / "bundles"
    run = labctl(pair, capsys, "failover", pair.pair, "--evidence", str(below))
    assert run.code == 1 and run.err.startswith(f"error: --evidence {below}: cannot write")
    assert "trial 1" not in run.err  # nothing was broken


class WatchProcess:
    """`labctl watch --json` in its own process; its events collected as they come."""

    def __init__(self, pair: LabPair) -> None:
        assert pair.profile.path is not None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "labctl",
                "-p",
                str(pair.profile.path),
                "watch",
                pair.pair,
                "--json",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def await_event(self, predicate: Any, deadline: float = 30.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if any(predicate(e) for e in list(self.events)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"watch never showed the awaited event: {self.events[-5:]} {err}")

    def await_events(self, predicate: Any, deadline: float = 30.0) -> None:
        self.await_event(lambda _e: predicate(list(self.events)), deadline)

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        _out, err = self.proc.communicate(timeout=30)
        self._reader.join(timeout=10)
        return self.proc.returncode, err


def states(events: list[dict[str, Any]], node: str) -> list[str]:
    """The node's successive VRRP states, repeats collapsed."""
    seq: list[str] = []
    for e in events:
        if e["node"] == node and e["state"] and (not seq or seq[-1] != e["state"]):
            seq.append(e["state"])
    return seq


def test_watch_json_shows_the_transitions_of_a_stop_drill_in_order(
    pair: LabPair, capsys: Capsys
) -> None:
    ensure_ok(pair, capsys)
    primary, standby = pair.primary.name, pair.standby.name
    watch = WatchProcess(pair)
    try:
        watch.await_event(lambda e: e["node"] == standby and e["state"] == "BACKUP")
        watch.await_event(lambda e: e["node"] == primary and e["state"] == "MASTER")
        drill = labctl(pair, capsys, "failover", pair.pair, "--fault", "stop", "--json")
        assert drill.code == 0, drill.err
        # the drill ended settled on the primary; the watch shows it too
        watch.await_events(
            lambda events: (
                states(events, standby)[-1:] == ["BACKUP"]
                and events[-1]["holder"] == primary
                and states(events, primary)[-1:] == ["MASTER"]
            )
        )
    finally:
        code, err = watch.interrupt()
    assert code == 0, err
    assert "Traceback" not in err
    events = watch.events
    assert all(e["reachable"] for e in events), [e["error"] for e in events if not e["reachable"]]
    # the standby: BACKUP -> MASTER (took over) -> BACKUP (the primary preempted)
    assert states(events, standby) == ["BACKUP", "MASTER", "BACKUP"]
    # the primary: MASTER -> stopped -> back (as BACKUP for a moment or straight) -> MASTER
    seq = states(events, primary)
    assert seq[0] == "MASTER" and seq[-1] == "MASTER" and "STOPPED" in seq, seq
    holders = [e["holder"] for e in events if e["holder"]]
    collapsed = [h for i, h in enumerate(holders) if i == 0 or holders[i - 1] != h]
    assert collapsed == [primary, standby, primary]
    times = [e["time"] for e in events]
    assert times == sorted(times)


def test_logs_merges_both_journals_in_time_order(pair: LabPair, capsys: Capsys) -> None:
    ensure_ok(pair, capsys)
    run = labctl(pair, capsys, "logs", pair.pair, "--since", "1d", "--json")
    assert run.code == 0, run.err
    lines = [json.loads(line) for line in run.out.splitlines()]
    assert {entry["node"] for entry in lines} == {pair.primary.name, pair.standby.name}
    times = [entry["time"] for entry in lines]
    assert times == sorted(times)
    assert SECRET not in run.out
    text = labctl(pair, capsys, "logs", pair.pair)
    assert text.code == 0
    tagged = [line.split()[2] for line in text.out.splitlines()]
    assert set(tagged) == {pair.primary.name, pair.standby.name}
    bad = labctl(pair, capsys, "logs", pair.pair, "--since", "last tuesday")
    assert bad.code == 2 and "--since" in bad.err and bad.out == ""
