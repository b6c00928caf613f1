"""The driverless ``startvm`` wrapper (tests/vbox/driverless_start.py), against stand-ins for
VBoxManage, the frontend and the VM's API view that log every call.

On real VirtualBox 7.2 the frontend locks the VM itself, and when that lock fails (another
client's session still on the VM, ``showvminfo`` included: it always locks) it hangs in poweroff
for good -- about one start in ten while the wrapper polled ``showvminfo``. The wrapper reads
states through the API (no lock), launches only once the session is unlocked, and relaunches a
frontend that never took the lock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vbox import driverless_start
from tests.vbox.driverless_start import Machine


class Stand:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launches: list[str],
                 *, held_reads: int = 0) -> None:  # fmt: skip
        self.dir, self.calls = tmp_path, tmp_path / "calls"
        self.held_reads = held_reads  # reads that still see another client's session
        vboxmanage = tmp_path / "VBoxManage"
        vboxmanage.write_text(f'#!/bin/sh\necho "VBoxManage $*" >> {self.calls}\nexit 0\n')
        # each launch does what the next line of ``launches`` says: lock (and run the VM), hang
        # (never lock, like a frontend that lost the race), or exit N
        (tmp_path / "launches").write_text("".join(f"{what}\n" for what in launches))
        front = tmp_path / "VirtualBoxVM"
        front.write_text(
            "#!/bin/sh\n"
            f'echo "frontend $*" >> {self.calls}\n'
            f"what=$(head -n1 {tmp_path}/launches); sed -i 1d {tmp_path}/launches\n"
            'case "$what" in\n'
            f"  lock) touch {tmp_path}/locked; sleep 0.3; touch {tmp_path}/up; sleep 2 ;;\n"
            "  hang) sleep 30 ;;\n"
            '  exit*) exit "${what#exit }" ;;\n'
            "esac\n"
        )
        for script in (vboxmanage, front):
            script.chmod(0o755)
        (tmp_path / "env").write_text("DISPLAY=:99\n")
        monkeypatch.setattr(driverless_start, "VBOXMANAGE", str(vboxmanage))
        monkeypatch.setattr(driverless_start, "FRONTEND", str(front))
        monkeypatch.setattr(driverless_start, "ENV_FILE", str(tmp_path / "env"))
        monkeypatch.setattr(driverless_start, "LOGS", str(tmp_path / "logs"))
        monkeypatch.setattr(driverless_start, "POLL", 0.05)

    def log(self, line: str) -> None:
        with self.calls.open("a") as f:
            f.write(line + "\n")

    def state(self) -> str:
        return "running" if (self.dir / "up").exists() else "poweroff"

    def unlocked(self) -> bool:
        if self.held_reads:
            self.held_reads -= 1
            self.log("api: session held")
            return False
        return not (self.dir / "locked").exists()

    def find(self, name: str) -> Machine | None:
        return Machine(self.state, self.unlocked) if name == "vm" else None

    def lines(self) -> list[str]:
        return self.calls.read_text().splitlines()


def test_the_frontend_starts_once_the_session_is_unlocked_and_nothing_locks_it_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stand = Stand(tmp_path, monkeypatch, ["lock"], held_reads=3)
    assert driverless_start.main(["vm", "--type", "headless"], find=stand.find) == 0
    assert 'VM "vm" has been successfully started.' in capsys.readouterr().out
    log = stand.lines()
    launched = log.index("frontend --startvm vm --driverless --no-startvm-errormsgbox")
    assert log[:launched] == [
        "api: session held", "api: session held", "api: session held",
        "VBoxManage modifyvm vm --vm-execution-engine recompiler",
        "VBoxManage setextradata global GUI/SuppressMessages all",
    ]  # fmt: skip
    assert log[launched + 1:] == []  # no VBoxManage (showvminfo locks) while it starts


def test_a_frontend_that_never_takes_the_lock_is_killed_and_launched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driverless_start, "LOCK_SECONDS", 0.5)
    stand = Stand(tmp_path, monkeypatch, ["hang", "lock"])
    assert driverless_start.main(["vm"], find=stand.find) == 0
    assert [line for line in stand.lines() if line.startswith("frontend")] == [
        "frontend --startvm vm --driverless --no-startvm-errormsgbox"] * 2  # fmt: skip
    assert "launch 1: no lock on the VM after 0.5 s; frontend killed" in (
        tmp_path / "logs" / "vm.log").read_text()  # fmt: skip


def test_frontends_that_never_lock_fail_after_their_launches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(driverless_start, "LOCK_SECONDS", 0.2)
    stand = Stand(tmp_path, monkeypatch, ["hang"] * 3)
    assert driverless_start.main(["vm"], find=stand.find) == 1
    assert "did not start: 3 launches of the frontend never locked it" in capsys.readouterr().err


def test_a_frontend_that_exits_without_running_the_vm_fails_like_vboxmanage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stand = Stand(tmp_path, monkeypatch, ["exit 3"])
    assert driverless_start.main(["vm"], find=stand.find) == 1
    assert capsys.readouterr().err.startswith(
        "VBoxManage: error: The virtual machine 'vm' has terminated unexpectedly during startup "
        "with exit code 3")  # fmt: skip


def test_an_unknown_vm_fails_like_vboxmanage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stand = Stand(tmp_path, monkeypatch, [])
    assert driverless_start.main(["nope"], find=stand.find) == 1
    assert "Could not find a registered machine named 'nope'" in capsys.readouterr().err
    assert not stand.calls.exists()
