"""Fixtures for unit tests of ops.lab and ops.clone: a profile, a fake hypervisor, a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from labctl.cli import run
from labctl.hypervisor.nspawn_image import Image, ImageBuild
from labctl.ops import lab as lab_ops
from labctl.profile import Profile, load
from tests.unit.ops.fakes import FakeHypervisor

PROFILE = """\
[lab]
name = "unit"
backend = "nspawn"
[lab.nspawn]
subnet = "10.251.1.0/24"
gateway = "10.251.1.1"
[timeouts]
boot = 20
[machines.prod-a]
address = "10.251.1.10/24"
[machines.prod-b]
address = "10.251.1.11/24"
[pairs.a]
primary = "prod-a"
standby = "prod-a-standby"
standby_address = "10.251.1.20/24"
vrid = 1
vip = ["10.251.1.100/24"]
priority = { primary = 101, standby = 100 }
auth_pass = "x"
"""


class FakeClock:
    """A monotonic clock that only sleep() advances (tenacity reads time.monotonic)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("time.monotonic", fake.monotonic)
    return fake


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def prof(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Profile:
    path = tmp_path / "lab.toml"
    path.write_text(PROFILE)
    image = Image("bookworm", tmp_path / "image")
    monkeypatch.setattr(lab_ops, "build_image", lambda *_a, **_k: ImageBuild(image, False, 0.0))
    return load(str(path))


@pytest.fixture
def hv(prof: Profile) -> FakeHypervisor:
    return FakeHypervisor({name: address for name, address, _ in prof.all_nodes()})


@pytest.fixture
def cli_with(
    hv: FakeHypervisor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setattr("labctl.cli.lab._lab_hypervisor", lambda _prof: hv)

    def invoke(*args: str) -> tuple[int, str, str]:
        code = run(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
