"""Lab test: `labctl ssh MACHINE -- COMMAND` through OpenSSH with labctl's key and host keys."""

from __future__ import annotations

import pytest

from labctl.cli import run
from tests.lab.conftest import LabPair

pytestmark = pytest.mark.lab


def test_ssh_runs_a_command_on_the_machine(
    shared_pair: LabPair, capfd: pytest.CaptureFixture[str]
) -> None:
    path = str(shared_pair.profile.path)
    name = shared_pair.primary.name
    assert run(["-p", path, "ssh", name, "--", "hostname"]) == 0
    assert capfd.readouterr().out == f"{name}\n"
    assert run(["-p", path, "ssh", shared_pair.standby.name, "--", "exit", "7"]) == 7


def test_ssh_refuses_a_changed_host_key(
    shared_pair: LabPair, capfd: pytest.CaptureFixture[str]
) -> None:
    record = shared_pair.known_hosts
    original = record.read_text()
    ip = shared_pair.primary.ip
    forged = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    lines = [line for line in original.splitlines() if not line.startswith(f"{ip} ")]
    record.write_text("\n".join([*lines, f"{ip} ssh-ed25519 {forged}"]) + "\n")
    try:
        code = run(["-p", str(shared_pair.profile.path), "ssh", shared_pair.primary.name, "--",
                    "touch", "/tmp/labctl-ssh-ran"])
        captured = capfd.readouterr()
        assert code == 255
        assert "HOST IDENTIFICATION HAS CHANGED" in captured.err
    finally:
        record.write_text(original)
    assert shared_pair.exec(shared_pair.primary.name, ["test", "-e", "/tmp/labctl-ssh-ran"]
                            ).exit_code == 1
