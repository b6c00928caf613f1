"""Helpers for tests/vbox: a labctl profile for the sandbox, both drivers, both CLIs.

``driver`` (function fixture, parametrized ``vboxmanage-real-7.2`` / ``pyvbox-real-7.2``) ->
:class:`Driver`: the Hypervisor under test (VBoxManage on the host through the sandbox's
wrapper; pyvbox inside the sandbox's Python), and ``labctl(*args)`` running labctl's CLI the
same way (host ``python -m labctl`` / the sandbox's ``python3 -m labctl``). Profiles put every
machine on loopback with SSH port 9 (nothing listens): no test dials anything but loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import pytest

from labctl.hypervisor import Hypervisor, VirtualBoxDetails, get_hypervisor
from labctl.profile import Profile
from tests.vbox.fixtures import VmMaker
from tests.vbox.remote_hv import served
from tests.vbox.sandbox import SandboxRun

LAB = "vboxreal"
DRIVERS = ("vboxmanage", "pyvbox")


def profile_toml(driver: str, vboxmanage: str, *, lab: str = LAB) -> str:
    return f"""\
[lab]
name = "{lab}"
backend = "virtualbox"
[lab.virtualbox]
driver = "{driver}"
vboxmanage = "{vboxmanage}"
[ssh]
user = "root"
port = 9
[timeouts]
connect = 1
boot = 2
[machines.prod]
address = "127.0.0.5/8"
[pairs.p]
primary = "prod"
standby = "prod-standby"
standby_address = "127.0.0.6/8"
interface = "eth0"
vrid = 10
vip = ["127.0.0.7/8"]
priority = {{ primary = 101, standby = 100 }}
advert_int = 1
auth_pass = "vboxreal"
"""


class VBoxHypervisor(Hypervisor, VirtualBoxDetails, Protocol):
    """Both VirtualBox drivers are Hypervisors with VirtualBoxDetails."""


@dataclass
class Driver:
    """One labctl VirtualBox driver on the sandbox (see module doc)."""

    name: str
    run: SandboxRun
    vms: VmMaker
    hv: VBoxHypervisor
    profile_path: str  # as labctl(...) sees it

    @property
    def test_id(self) -> str:
        return f"{self.name}-real-7.2"

    def labctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """labctl's CLI for this driver; never raises on a non-zero exit."""
        argv = ["-p", self.profile_path, *args]
        if self.name == "pyvbox":
            return self.run.labctl(*argv)
        return subprocess.run(
            [sys.executable, "-m", "labctl", *argv], capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=300,
        )  # fmt: skip

    def labctl_json(self, *args: str) -> Any:
        done = self.labctl(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def make_driver(name: str, run: SandboxRun, vms: VmMaker, workdir: Path, lab: str = LAB) -> Driver:
    if name == "pyvbox":
        inside = f"/vbox-home/profiles/{workdir.name}-{lab}.toml"
        path = run.host_path(inside)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profile_toml("pyvbox", "VBoxManage", lab=lab))
        data = Profile.model_validate(_toml(path)).model_dump(mode="json")
        return Driver(name, run, vms, served(run, data), inside)
    path = workdir / f"{lab}.toml"
    path.write_text(profile_toml("vboxmanage", str(run.vboxmanage), lab=lab))
    hv = cast(VBoxHypervisor, get_hypervisor(Profile.model_validate(_toml(path))))
    return Driver(name, run, vms, hv, str(path))


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text())


@pytest.fixture(params=DRIVERS, ids=[f"{d}-real-7.2" for d in DRIVERS])
def driver(
    request: pytest.FixtureRequest, vbox_sandbox: SandboxRun, vbox_vms: VmMaker, tmp_path: Path
) -> Iterator[Driver]:
    made = make_driver(request.param, vbox_sandbox, vbox_vms, tmp_path)
    made.hv.check()
    yield made
