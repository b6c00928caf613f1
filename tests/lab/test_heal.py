"""Lab test: labctl killed (SIGKILL) in the middle of each drill fault, then `labctl up` heals
the lab and `labctl verify --wait` is OK again."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from labctl.cli import run
from labctl.hypervisor.nspawn import NspawnHypervisor
from labctl.ops import faults
from labctl.ops import lab as lab_ops
from labctl.profile import Profile
from tests.lab.conftest import LabEnv, bring_up, write_profile

pytestmark = pytest.mark.lab

TAKEN = "holds the VIP; recovering"


@pytest.fixture(scope="module")
def provisioned(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profile]:
    """One provisioned pair for every fault kind: each case leaves it healed."""
    prof = write_profile(
        lab_env, tmp_path_factory.mktemp("heal"), 1, names=[("heal-a", "heal-a-standby")]
    )
    try:
        bring_up(prof)
        assert run(["-p", str(prof.path), "provision", "pair"]) == 0
        yield prof
    finally:
        lab_ops.destroy(prof, NspawnHypervisor(prof))


def kill_during_fault(prof: Profile, fault: str) -> list[str]:
    """Run a drill and SIGKILL it once the standby took over (the fault is in place)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "labctl", "-p", str(prof.path), "failover", "p1", "--fault",
         fault],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line.rstrip())
        if TAKEN in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stderr.close()
    return seen


@pytest.mark.parametrize("fault", ["stop", "crash", "freeze", "link", "partition", "health"])
def test_a_drill_killed_mid_fault_is_healed_by_up(
    provisioned: Profile, fault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prof = provisioned
    seen = kill_during_fault(prof, fault)
    assert any(TAKEN in line for line in seen), seen
    (pending,) = faults.journal_for(prof).pending()
    assert pending.fault == fault
    capsys.readouterr()
    assert run(["-p", str(prof.path), "status"]) == 0
    assert "a drill was interrupted before it recovered its fault" in capsys.readouterr().err
    code = run(["-p", str(prof.path), "up"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"undid the interrupted `failover p1 --fault {fault}` on {pending.faulted}" in out
    assert faults.journal_for(prof).pending() == []
    code = run(["-p", str(prof.path), "verify", "--wait", "30"])
    assert code == 0, capsys.readouterr()
