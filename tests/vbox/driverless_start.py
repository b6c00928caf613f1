"""``VBoxManage startvm NAME [--type T]`` in driverless mode (runs inside the sandbox's Python).

Test harness for a host without VirtualBox's kernel driver, where only the Qt frontend powers
VMs on (VirtualBox's own execution engine, interpreted here): sets the VM's execution engine
(``--vm-execution-engine recompiler`` = fall back to IEM) and ``GUI/SuppressMessages`` (else
the frontend can hang on a dialog holding the session), starts ``VirtualBoxVM --startvm NAME
--driverless --no-startvm-errormsgbox`` detached under the run's Xvfb (``DISPLAY`` and
``XDG_RUNTIME_DIR`` from /etc/labctl-driverless.env), and returns once the VM is running --
printing what VBoxManage prints -- or fails with VBoxManage's exit code 1 and an error line in
its format. Every other VBoxManage command goes straight to the real one (the shell wrapper).

The frontend locks the VM itself (``startvm --type headless`` has VBoxSVC lock it for the VM
process it spawns). When that lock fails -- the machine is still locked, or being unlocked,
by another client -- the frontend does not exit: it hangs in poweroff for good (real 7.2).
So the wrapper reads machine and session states through the API, which locks nothing
(``showvminfo`` always locks the VM: polled during the start, it was such a client -- about
one start in ten hung), launches the frontend only once the session is unlocked, and a
frontend that has not taken the lock after ``LOCK_SECONDS`` is killed and launched again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VBOXMANAGE = "/usr/lib/virtualbox/VBoxManage"
FRONTEND = "/usr/lib/virtualbox/VirtualBoxVM"
ENV_FILE = "/etc/labctl-driverless.env"
LOGS = "/var/log/labctl-driverless"
START_SECONDS = 600.0  # a loaded host: the frontend may take minutes to power the VM on
UNLOCK_SECONDS = 30.0  # another client's session on the VM must have ended by then
LOCK_SECONDS = 60.0  # a frontend takes the VM's lock within ~1 s; after this it never will
LAUNCHES = 3
POLL = 0.25


@dataclass
class Machine:
    """What the wrapper reads of one VM: its state name (``poweroff``, ``running``, ...) and
    whether no session holds it. Both reads lock nothing."""

    state: Callable[[], str]
    unlocked: Callable[[], bool]
    binding: object = None  # what must stay alive for the reads (vboxapi's manager)


def api_machine(name: str) -> Machine | None:
    """The VM through vboxapi (the sandbox's Python binding), or None if none is registered."""
    import vboxapi  # type: ignore[import-not-found]  # only inside the sandbox

    manager = vboxapi.VirtualBoxManager(None, None)
    try:
        machine: Any = manager.getVirtualBox().findMachine(name)
    except Exception:  # XPCOM raises its own exception type
        return None
    states = {v: k.lower() for k, v in manager.constants.all_values("MachineState").items()
              if not k.startswith(("First", "Last"))}  # FirstOnline = Running, ...: aliases
    unlocked = manager.constants.SessionState_Unlocked
    return Machine(lambda: states.get(machine.state, "unknown"),
                   lambda: machine.sessionState == unlocked, manager)  # fmt: skip


def fail(message: str) -> int:
    print(f"VBoxManage: error: {message}", file=sys.stderr)
    return 1


def wait_unlocked(machine: Machine, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not machine.unlocked():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def vboxmanage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VBOXMANAGE, *args], capture_output=True, text=True)


def note(name: str, line: str) -> None:
    with open(f"{LOGS}/{name}.log", "a") as log:
        log.write(f"[driverless wrapper] {line}\n")


def launch(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(f"{LOGS}/{name}.log", "ab") as log:
        return subprocess.Popen(
            [FRONTEND, "--startvm", name, "--driverless", "--no-startvm-errormsgbox"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
        )  # fmt: skip


def main(argv: list[str], find: Callable[[str], Machine | None] = api_machine) -> int:
    names = [a for a in argv if not a.startswith("--")]
    if "--type" in argv:
        names.remove(argv[argv.index("--type") + 1])
    if len(names) != 1:
        return fail("startvm: exactly one VM name (driverless wrapper)")
    name = names[0]
    env = dict(os.environ)
    with open(ENV_FILE) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep:
                env[key] = value
    machine = find(name)
    if machine is None:
        return fail(f"Could not find a registered machine named '{name}'")
    state = machine.state()
    if state in ("running", "paused"):
        return fail(f'The machine \'{name}\' is already locked by a session (or being locked or '
                    "unlocked)")  # fmt: skip
    if not wait_unlocked(machine, UNLOCK_SECONDS):
        return fail(f"The machine '{name}' is still locked by a session after "
                    f"{UNLOCK_SECONDS:g} s")  # fmt: skip
    if state not in ("saved", "abortedsaved"):  # a saved VM's settings are read-only
        engine = vboxmanage("modifyvm", name, "--vm-execution-engine", "recompiler")
        if engine.returncode != 0:
            sys.stderr.write(engine.stderr)
            return engine.returncode
    done = vboxmanage("setextradata", "global", "GUI/SuppressMessages", "all")
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return done.returncode
    os.makedirs(LOGS, exist_ok=True)
    print(f'Waiting for VM "{name}" to power on...', flush=True)
    deadline = time.monotonic() + START_SECONDS
    for attempt in range(1, LAUNCHES + 1):
        if not wait_unlocked(machine, UNLOCK_SECONDS):  # modifyvm's session, a killed frontend's
            return fail(f"The machine '{name}' is still locked by a session after "
                        f"{UNLOCK_SECONDS:g} s")  # fmt: skip
        frontend = launch(name, env)
        launched = time.monotonic()
        seen = None
        while time.monotonic() < deadline:
            now = (machine.state(), machine.unlocked())
            if now != seen:  # the start's course, for diagnosis
                note(name, f"launch {attempt} +{time.monotonic() - launched:.1f} s: {now[0]}, "
                     f"session {'unlocked' if now[1] else 'locked'}")  # fmt: skip
                seen = now
            if now[0] == "running":
                print(f'VM "{name}" has been successfully started.', flush=True)
                return 0
            code = frontend.poll()
            if code is not None:
                return fail(f"The virtual machine '{name}' has terminated unexpectedly during "
                            f"startup with exit code {code} ({code:#x}) (driverless frontend, "
                            f"see {LOGS}/{name}.log)")  # fmt: skip
            if now[1] and time.monotonic() - launched > LOCK_SECONDS:
                break  # this frontend lost the race for the lock: it will never start the VM
            time.sleep(POLL)
        os.killpg(frontend.pid, signal.SIGKILL)  # its own session (start_new_session)
        frontend.wait()
        if time.monotonic() >= deadline:
            break
        note(name, f"launch {attempt}: no lock on the VM after {LOCK_SECONDS:g} s; frontend "
             "killed")
    if time.monotonic() < deadline:
        return fail(f"The virtual machine '{name}' did not start: {LAUNCHES} launches of the "
                    f"frontend never locked it (driverless frontend, see {LOGS}/{name}.log)")
    return fail(f"The virtual machine '{name}' did not reach Running within "
                f"{START_SECONDS:g} s (last state: {machine.state()}; driverless frontend, see "
                f"{LOGS}/{name}.log)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
