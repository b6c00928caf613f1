"""Shared helpers for unit tests: write a profile next to a check script and run the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl.cli import run
from tests.fakes.install import pretend_kernel_driver

# The seed's prod-back pair, as a user would write it for the VirtualBox lab.
BASE_PROFILE = """\
[lab]
name = "it490"
backend = "virtualbox"

[machines.prod-back]
address = "192.168.68.80/24"

[pairs.back]
primary = "prod-back"
standby = "prod-back-standby"
standby_address = "192.168.68.90/24"
interface = "enp0s3"
vrid = 51
vip = ["192.168.68.89/24"]
priority = { primary = 101, standby = 100 }
advert_int = 1
auth_pass = "njit490"
[pairs.back.check]
script = "check_heartbeat.sh"
interval = 2
weight = 2
"""


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def write_profile(tmp_path: Path) -> Callable[[str], Path]:
    """Write profile text to tmp/lab.toml with a check script beside it; return the path."""

    def write(text: str) -> Path:
        (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
        path = tmp_path / "lab.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run labctl in-process with arguments; return exit code, stdout and stderr."""

    def invoke(*args: str) -> CliResult:
        code = run(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(autouse=True)
def _fake_virtualbox_has_its_kernel_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    # unit tests drive fake VirtualBox hosts, which have the kernel driver this machine lacks
    pretend_kernel_driver(monkeypatch)
