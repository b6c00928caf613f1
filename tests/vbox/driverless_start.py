"""``VBoxManage startvm NAME [--type T]`` in driverless mode (runs inside the sandbox; stdlib).

Test harness for a host without VirtualBox's kernel driver, where only the Qt frontend powers
VMs on (VirtualBox's own execution engine, interpreted here): sets the VM's execution engine
(``--vm-execution-engine recompiler`` = fall back to IEM) and ``GUI/SuppressMessages`` (else
the frontend can hang on a dialog holding the session), starts ``VirtualBoxVM --startvm NAME
--driverless --no-startvm-errormsgbox`` detached under the run's Xvfb (``DISPLAY`` and
``XDG_RUNTIME_DIR`` from /etc/labctl-driverless.env), and returns once the VM is running --
printing what VBoxManage prints -- or fails with VBoxManage's exit code 1 and an error line in
its format. Every other VBoxManage command goes straight to the real one (the shell wrapper).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

VBOXMANAGE = "/usr/lib/virtualbox/VBoxManage"
ENV_FILE = "/etc/labctl-driverless.env"
LOGS = "/var/log/labctl-driverless"
START_SECONDS = 600.0  # a loaded host: the frontend may take minutes to power the VM on


def fail(message: str) -> int:
    print(f"VBoxManage: error: {message}", file=sys.stderr)
    return 1


def machine_state(name: str) -> str | None:
    done = subprocess.run([VBOXMANAGE, "showvminfo", name, "--machinereadable"],
                          capture_output=True, text=True)  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("VMState="):
            return line.partition("=")[2].strip('"')
    return None


def main(argv: list[str]) -> int:
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
    state = machine_state(name)
    settle = time.monotonic() + 30
    # showvminfo also fails for a moment while another client holds the machine's session
    # ("The object is not ready"): only a VM that stays unreadable is an error
    while state is None and time.monotonic() < settle:
        done = subprocess.run([VBOXMANAGE, "showvminfo", name], capture_output=True, text=True)
        if "VBOX_E_OBJECT_NOT_FOUND" in done.stderr or "Could not find a registered" in done.stderr:
            sys.stderr.write(done.stderr)
            return done.returncode or 1
        time.sleep(0.5)
        state = machine_state(name)
    if state is None:
        return fail(f"showvminfo {name} kept failing for 30 s")
    if state in ("running", "paused"):
        return fail(f'The machine \'{name}\' is already locked by a session (or being locked or '
                    "unlocked)")  # fmt: skip
    if state not in ("saved", "abortedsaved"):  # a saved VM's settings are read-only
        engine = subprocess.run(
            [VBOXMANAGE, "modifyvm", name, "--vm-execution-engine", "recompiler"],
            capture_output=True, text=True,
        )  # fmt: skip
        if engine.returncode != 0:
            sys.stderr.write(engine.stderr)
            return engine.returncode
    subprocess.run([VBOXMANAGE, "setextradata", "global", "GUI/SuppressMessages", "all"],
                   check=True, capture_output=True)  # fmt: skip
    os.makedirs(LOGS, exist_ok=True)
    print(f'Waiting for VM "{name}" to power on...', flush=True)
    with open(f"{LOGS}/{name}.log", "ab") as log:
        frontend = subprocess.Popen(
            ["/usr/lib/virtualbox/VirtualBoxVM", "--startvm", name, "--driverless",
             "--no-startvm-errormsgbox"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        state = machine_state(name)
        if state == "running":
            print(f'VM "{name}" has been successfully started.', flush=True)
            return 0
        code = frontend.poll()
        if code is not None and state != "starting":
            return fail(f"The virtual machine '{name}' has terminated unexpectedly during "
                        f"startup with exit code {code} ({code:#x}) (driverless frontend, "
                        f"see {LOGS}/{name}.log)")  # fmt: skip
        time.sleep(0.25)
    frontend.kill()
    return fail(f"The virtual machine '{name}' did not reach Running within "
                f"{START_SECONDS:g} s (last state: {state}; driverless frontend, see "
                f"{LOGS}/{name}.log)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
