"""One provisioned pair shared by the verify, failover and doctor lab tests.

Booting guests is the expensive part of the lab tests, so these three modules share a single
pair (production machine + linked-clone standby, keepalived provisioned by `labctl provision
pair`). Every test that breaks it puts it back and checks, with `labctl verify --wait`, that
it is OK again before the next test runs. The pair itself is the session fixture
``checks_pair`` in tests/lab/conftest.py (destroyed at the end of the session, and by the
conftest's sweep whatever happens); this module holds the helpers the three modules share.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from labctl.cli import run
from tests.lab.conftest import LabPair


@dataclass
class CliRun:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def labctl(pair: LabPair, capsys: pytest.CaptureFixture[str], *args: str) -> CliRun:
    """Run labctl in-process against the pair's profile; stdout/stderr captured."""
    capsys.readouterr()
    code = run(["-p", str(pair.profile.path), *args])
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err)


def guest(pair: LabPair, name: str, script: str) -> str:
    """Run a shell script in a guest through the side channel; it must succeed."""
    done = pair.exec(name, ["sh", "-c", script])
    assert done.exit_code == 0, f"{name}: {script!r} exited {done.exit_code}: {done.stderr}"
    return done.stdout


def vip(pair: LabPair) -> str:
    return pair.profile.pair(pair.pair).vip[0]


def vip_ip(pair: LabPair) -> str:
    return vip(pair).split("/")[0]


def await_verify(
    pair: LabPair,
    capsys: pytest.CaptureFixture[str],
    predicate: Callable[[dict[str, Any]], bool],
    *,
    deadline: float = 30.0,
) -> dict[str, Any]:
    """Run `labctl verify --json` until predicate(pair document) holds; return that document."""
    end = time.monotonic() + deadline
    last: dict[str, Any] = {}
    while time.monotonic() < end:
        result = labctl(pair, capsys, "verify", pair.pair, "--json")
        last = result.json()["pairs"][0]
        if predicate(last):
            return last
    raise AssertionError(f"verify never showed the awaited state within {deadline} s: {last}")


def ensure_ok(pair: LabPair, capsys: pytest.CaptureFixture[str], wait: int = 60) -> None:
    """The pair is back to OK on its primary (the state every test starts from).

    OK alone is not enough: right after the primary reboots, the standby is a fine OK holder
    until the primary's keepalived starts (after network-online) and takes the VIP back.
    """
    primary = pair.primary.name
    await_verify(
        pair, capsys, lambda p: p["verdict"] == "OK" and p["holder"] == primary, deadline=wait
    )


def flush_host_arp(pair: LabPair) -> None:
    """Forget the host's ARP entry for the VIP (a test that moved it by hand leaves it stale)."""
    import subprocess

    subprocess.run(
        ["ip", "neigh", "flush", "to", vip_ip(pair), "dev", pair.profile.lab.nspawn.bridge],
        capture_output=True,
        check=False,
    )
