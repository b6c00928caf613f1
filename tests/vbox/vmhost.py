"""A VirtualBox host that powers VMs on without the kernel driver (test harness).

On top of a :class:`SandboxRun` built with the VM layer: an Xvfb for the Qt frontend (its own
display, picked by Xvfb itself), the lab network -- a ``vde_switch`` whose host side is a tap on
the run's private subnet (``10.250.X.0/24``, allocated and locked like the nspawn lab's) -- and
``vboxmanage``, a VBoxManage wrapper that turns ``startvm`` into the driverless launch
(``tests/vbox/driverless_start.py``) and passes every other command to the real VBoxManage.
labctl's drivers run unchanged against it; the profile says ``driverless = true``.

``close()`` powers off every running VM of the run, then ends the frontends, Xvfb, the switch
and VBoxSVC by PID (they all run in the run's root) and removes the tap.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.vbox.driverless_start import ENV_FILE, LOGS
from tests.vbox.sandbox import _PATH, SRC, VBOX_HOME, VBOXMANAGE, SandboxError, SandboxRun

SWITCH = "/run/labctl-vde"  # sandbox path of the switch's control directory


@dataclass
class VmHost:
    run: SandboxRun
    subnet: ipaddress.IPv4Network
    tap: str
    vboxmanage: Path = field(init=False)
    display: str = ""
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vboxmanage = self.run.base / "bin" / "VBoxManage-driverless"

    @property
    def host_address(self) -> str:
        return f"{self.subnet.network_address + 1}"

    def address(self, n: int) -> str:
        """The n-th guest address with prefix (n >= 10 to stay clear of the host side)."""
        return f"{self.subnet.network_address + n}/{self.subnet.prefixlen}"

    @classmethod
    def open(cls, run: SandboxRun, subnet: ipaddress.IPv4Network) -> VmHost:
        host = cls(run, subnet, f"lv{subnet.network_address.packed[2]}x{os.getpid() % 1000}")
        try:
            host._start()
        except BaseException:
            host.close()
            raise
        return host

    def _start(self) -> None:
        # Xvfb picks a free display and writes its number to fd 3 (-displayfd)
        read, write = os.pipe()
        os.set_inheritable(write, True)
        xvfb = subprocess.Popen(
            [*self.run.argv("sh", "-c", f'exec Xvfb -displayfd {write} -nolisten tcp '
                            '-screen 0 800x600x16 >/var/log/Xvfb.log 2>&1')],
            pass_fds=(write,), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._procs.append(xvfb)
        os.close(write)
        with os.fdopen(read) as f:
            number = f.readline().strip()
        if not number.isdigit():
            raise SandboxError("Xvfb did not start (see /var/log/Xvfb.log in the sandbox)")
        self.display = f":{number}"
        self.run.host_path("/run/user/0").mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run.host_path(ENV_FILE).write_text(
            f"DISPLAY={self.display}\nXDG_RUNTIME_DIR=/run/user/0\n"
        )
        # the switch, its tap in the host's network namespace, the host's address on it
        self.run.run("vde_switch", "-s", SWITCH, "-t", self.tap, "-d",
                     "-p", "/run/labctl-vde.pid", "-M", "/run/labctl-vde.mgmt")  # fmt: skip
        for argv in (
            ["ip", "addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self.tap],
            ["ip", "link", "set", self.tap, "up"],
        ):
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise SandboxError(f"{shlex.join(argv)}: {done.stderr.strip()}")
        self.vboxmanage.write_text(
            "#!/bin/sh\n"
            "# labctl test harness: VBoxManage of the VirtualBox sandbox; startvm is the\n"
            "# driverless launch (tests/vbox/driverless_start.py)\n"
            f"root={shlex.quote(str(self.run.root))}\n"
            f"env=\"/usr/bin/env -i PATH={_PATH} HOME=/root VBOX_USER_HOME={VBOX_HOME}\"\n"
            'if [ "$1" = startvm ]; then shift\n'
            f'  exec chroot "$root" $env python3 {SRC}/tests/vbox/driverless_start.py "$@"\n'
            "fi\n"
            f'exec chroot "$root" $env {VBOXMANAGE} "$@"\n'
        )
        self.vboxmanage.chmod(0o755)
        # what the driverless wrapper inside the sandbox calls by this path (pyvbox driver)
        inside = self.run.host_path("/usr/local/bin/VBoxManage-driverless")
        inside.write_text(
            "#!/bin/sh\n"
            'if [ "$1" = startvm ]; then shift\n'
            f'  exec python3 {SRC}/tests/vbox/driverless_start.py "$@"\nfi\n'
            f'exec {VBOXMANAGE} "$@"\n'
        )
        inside.chmod(0o755)

    def running_vms(self) -> list[str]:
        out = self.run.manage("list", "runningvms", check=False).stdout
        return [line.rpartition(" ")[0].strip().strip('"') for line in out.splitlines() if line]

    def power_off_all(self) -> None:
        for name in self.running_vms():
            self.run.manage("controlvm", name, "poweroff", check=False)
        deadline = time.monotonic() + 60
        while self.running_vms() and time.monotonic() < deadline:
            time.sleep(0.5)

    def keep_logs(self, dest: Path) -> None:
        """Copy the run's VM logs (each machine's ``Logs/VBox.log*``, each driverless frontend's
        log) to ``dest``, replacing what an earlier run left there: the run's root, and with it
        the machine folders, is deleted at the end."""
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for log in self.run.host_path(f"{VBOX_HOME}/machines").glob("*/Logs/VBox.log*"):
            shutil.copy2(log, dest / f"{log.parent.parent.name}-{log.name}")
        for log in self.run.host_path(LOGS).glob("*.log"):
            shutil.copy2(log, dest / f"{log.stem}-frontend.log")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.power_off_all()
        self.run.stop_processes()  # frontends, Xvfb, vde_switch, VBoxSVC: all in the run's root
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        if Path(f"/sys/class/net/{self.tap}").exists():
            subprocess.run(["ip", "link", "del", self.tap], capture_output=True)
