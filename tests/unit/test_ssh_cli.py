"""`labctl ssh`: a machine the hypervisor reports absent or stopped is refused at once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from labctl.cli import lab as lab_cli
from labctl.hypervisor import MachineState
from labctl.profile import Profile
from tests.unit.checks_fakes import FakeHypervisor
from tests.unit.conftest import CliResult


@pytest.mark.parametrize(
    ("state", "message", "hint"),
    [
        (MachineState.ABSENT, "prod-back-standby not created: run `labctl clone prod-back`",
         "labctl clone prod-back"),
        (MachineState.STOPPED, "prod-back-standby stopped: run `labctl up`", "labctl up"),
    ],
)
def test_ssh_to_a_machine_that_cannot_answer_says_so_without_ssh(
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
    state: MachineState,
    message: str,
    hint: str,
) -> None:
    hv = FakeHypervisor(states={"prod-back-standby": state})

    def no_ssh(*_args: object, **_kwargs: object) -> int:
        raise AssertionError("ssh was started")

    def backend(_prof: Profile) -> FakeHypervisor:
        return hv

    monkeypatch.setattr(lab_cli, "usable_hypervisor_for", backend)
    monkeypatch.setattr(subprocess, "call", no_ssh)
    result = cli("-p", "local-lab", "ssh", "prod-back-standby", "--", "hostname")
    assert result.code == 5
    assert result.err.splitlines() == [f"error: {message}", f"hint: {hint}"]
