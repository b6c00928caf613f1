"""VirtualBox through the VBoxManage command line (VirtualBox 6.1 and 7.x).

Every call is one or a few VBoxManage invocations with an argv list; nothing retries. The
one wait: after ``controlvm poweroff`` the VM's process still holds its session for a moment
(real 7.2: unregistervm then fails "while it is locked"), so a power-off returns once
showvminfo no longer names a session. Failures become OperationFailed carrying VBoxManage's
own error lines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from labctl.errors import BackendUnavailable, GuestControlUnusable, OperationFailed
from labctl.hypervisor import ExecResult, Machine, MachineState, Nic, VirtualBoxHost
from labctl.hypervisor.vbox_common import (
    BASE_SNAPSHOT,
    LINK_KEY,
    SAVED_STATES,
    SERIAL_PORTS,
    TAG_KEY,
    MediumFacts,
    disks_used_elsewhere,
    guest_argv,
    guest_credentials,
    own_serial_log,
    refuse_if_disks_used_elsewhere,
    resolve_driver,
    start_blocker,
    start_failed,
    state_from_name,
)
from labctl.profile import Profile

INSTALL_HINT = (
    "install VirtualBox (https://www.virtualbox.org/wiki/Linux_Downloads) or set "
    "lab.virtualbox.vboxmanage to the VBoxManage executable"
)
_NOT_FOUND = "VBOX_E_OBJECT_NOT_FOUND"
# showvminfo right after a power-off, while the VM's process is between states (real 7.2)
_CONSOLE_GOING = "Failed to get a console object from the direct session"
# showvminfo --machinereadable: what each attachment is attached to (7.2 prints the generic
# driver as genericN but not its properties; those are only in the .vbox file and the API)
_NETWORK_KEYS = {
    "intnet": "intnet", "natnetwork": "nat-network", "hostonly": "hostonlyadapter",
    "bridged": "bridgeadapter", "hostonlynet": "hostonly-network",
}  # fmt: skip
# guestcontrol run maps guest exit codes: 1..93 -> 33..125, 94 and above -> 126
# (VBoxManageGuestCtrl.cpp, EXITCODEEXEC_MAPPED_*). 16..22 are VBoxManage's own failures.
_SESSION_STILL_STARTING = "Error starting guest session (current status is: starting)"
_MAPPED_FIRST, _MAPPED_LAST = 33, 125


@dataclass(frozen=True)
class _Run:
    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str


def nics_from_info(info: dict[str, str]) -> tuple[Nic, ...]:
    """Every enabled adapter of a ``showvminfo --machinereadable`` dict.

    VBoxManage names attachments in lower case except ``Generic`` (7.2); labctl uses its
    modifyvm spelling (``generic``) everywhere.
    """
    nics = []
    slot = 1
    while f"nic{slot}" in info:
        attachment = info[f"nic{slot}"].lower()
        if attachment != "none":
            key = _NETWORK_KEYS.get(attachment)
            nics.append(
                Nic(
                    slot=slot,
                    attachment=attachment,
                    mac=info.get(f"macaddress{slot}", ""),
                    cable=info.get(f"cableconnected{slot}") == "on",
                    driver=info.get(f"generic{slot}") if attachment == "generic" else None,
                    network=info.get(f"{key}{slot}") if key is not None else None,
                )
            )
        slot += 1
    return tuple(nics)


def parse_mediuminfo(text: str) -> MediumFacts:
    """Parse ``showmediuminfo disk UUID``: UUID, Location, Parent UUID, In use by VMs, Child UUIDs.

    Multi-valued fields continue on indented lines; a user line reads
    ``NAME (UUID: U)`` optionally followed by ``[SNAPSHOT (UUID: S)]``.
    """
    fields: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip() or "%..." in line:
            continue
        if line[0].isspace() and key:
            fields[key].append(line.strip())
            continue
        key, _, value = line.partition(":")
        fields[key] = [value.strip()]
    users = []
    for entry in fields.get("In use by VMs", []):
        m = re.match(r"^(.*?) \(UUID: ([0-9a-fA-F-]+)\)", entry)
        if m:
            users.append((m.group(2), m.group(1)))
    parent = (fields.get("Parent UUID") or ["base"])[0]
    return MediumFacts(
        uuid=(fields.get("UUID") or [""])[0],
        location=(fields.get("Location") or [""])[0],
        users=tuple(users),
        parent=None if parent == "base" else parent,
        children=tuple(c for c in fields.get("Child UUIDs", []) if c),
    )


def _own_serial_logs(info: dict[str, str], source: str, target: str) -> list[str]:
    """modifyvm options giving a clone's file-mode serial ports files of their own."""
    argv: list[str] = []
    for slot in range(1, SERIAL_PORTS + 1):
        mode, _, path = info.get(f"uartmode{slot}", "").partition(",")
        if mode == "file" and path:
            argv += [f"--uartmode{slot}", "file", own_serial_log(path, source, target)]
    return argv


def parse_machinereadable(text: str) -> dict[str, str]:
    """Parse ``showvminfo --machinereadable`` output: ``key="value"`` or ``key=value`` lines.

    Keys may themselves be quoted (``"SATA-0-0"="..."``); quoted values escape ``"`` and ``\\``
    with a backslash.
    """
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip('"')
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        info.setdefault(key, value)
    return info


class VBoxManageHypervisor:
    """The Hypervisor protocol (and VirtualBoxDetails) on top of VBoxManage.

    Args:
        lab: the lab's name, written to every VM labctl creates (extra data ``labctl/lab``).
        executable: the VBoxManage command or path.
        nic: 1-based adapter that carries the lab network.
        profile: the profile, for guest credentials (guestcontrol); None = exec unavailable.
        why: why this driver is in use (doctor and status say it).
    """

    name = "vboxmanage"
    RELEASE_POLL = 0.2  # seconds between showvminfo reads while a powered-off VM lets go

    def __init__(
        self, lab: str, *, executable: str = "VBoxManage", nic: int = 1,
        profile: Profile | None = None, why: str = "chosen by the caller",
    ) -> None:  # fmt: skip
        self.lab = lab
        self.why = why
        self.executable = executable
        self.nic = nic
        self._profile = profile
        self._sleep: Callable[[float], None] = time.sleep
        self._clock: Callable[[], float] = time.monotonic

    # -- plumbing ---------------------------------------------------------------------------

    def _vbox(self, *args: str, check: bool = True, timeout: float | None = None) -> _Run:
        argv = (self.executable, *args)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as exc:  # missing, not executable, ...
            raise BackendUnavailable(
                f"cannot run VBoxManage ({self.executable!r}): {exc.strerror or exc}",
                hint=INSTALL_HINT,
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise OperationFailed(
                f"VBoxManage {args[0]} did not finish within {timeout:.0f} s"
            ) from exc
        result = _Run(argv, done.returncode, done.stdout, done.stderr)
        if check and result.code != 0:
            raise self._failure(result)
        return result

    @staticmethod
    def _failure(result: _Run) -> OperationFailed:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "%..." not in ln]
        detail = "; ".join(ln.removeprefix("VBoxManage: error: ") for ln in lines[:3])
        return OperationFailed(
            f"VBoxManage {' '.join(result.argv[1:3])} failed (exit {result.code}): "
            f"{detail or 'no error message'}"
        )

    def _info(self, name: str) -> dict[str, str] | None:
        """showvminfo as a dict, or None when no such VM is registered."""
        result = self._vbox("showvminfo", name, "--machinereadable", check=False)
        if result.code != 0:
            if _NOT_FOUND in result.stderr or "Could not find a registered machine" in (
                result.stderr
            ):
                return None
            raise self._failure(result)
        return parse_machinereadable(result.stdout)

    def _require(self, name: str) -> dict[str, str]:
        info = self._info(name)
        if info is None:
            raise OperationFailed(f"no VirtualBox machine named {name!r}")
        return info

    def _extradata(self, name: str, key: str) -> str | None:
        out = self._vbox("getextradata", name, key).stdout.strip()
        return out.removeprefix("Value: ") if out.startswith("Value: ") else None

    def _state(self, name: str, info: dict[str, str]) -> MachineState:
        return state_from_name(info.get("VMState", ""), name)

    # -- Hypervisor -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise BackendUnavailable unless VBoxManage runs and answers ``--version``."""
        if os.sep not in self.executable and shutil.which(self.executable) is None:
            raise BackendUnavailable(
                f"VBoxManage not found on PATH ({self.executable!r})", hint=INSTALL_HINT
            )
        result = self._vbox("--version", check=False)
        if result.code != 0:
            raise BackendUnavailable(
                f"VBoxManage --version failed: {result.stderr.strip() or result.stdout.strip()}",
                hint=INSTALL_HINT,
            )

    def inspect(self, name: str) -> Machine:
        """The VM's state (ABSENT when not registered) and whether labctl created it."""
        info = self._info(name)
        if info is None:
            return Machine(name, MachineState.ABSENT)
        managed = self._extradata(name, TAG_KEY) == self.lab
        return Machine(name, self._state(name, info), None, managed, nics_from_info(info))

    def list(self) -> list[Machine]:
        """Every registered VM tagged with this lab's name."""
        machines = []
        for line in self._vbox("list", "vms").stdout.splitlines():
            # '"name" {uuid}'; names may contain spaces and quotes, the uuid never does
            vm_name = line.rpartition(" ")[0].strip().removeprefix('"').removesuffix('"')
            if not vm_name or vm_name == "<inaccessible>":
                continue
            if self._extradata(vm_name, TAG_KEY) != self.lab:
                continue
            info = self._info(vm_name)
            if info is not None:  # unregistered in between
                state = self._state(vm_name, info)
                machines.append(Machine(vm_name, state, None, True, nics_from_info(info)))
        return machines

    def clone(self, source: str, target: str, *, linked: bool = False) -> None:
        """clonevm with new MACs, tag the clone, disconnect its cable; undo on any failure.

        A linked clone needs a snapshot of the source: ``labctl-base`` is taken once when
        missing (this adds a snapshot to the source VM; its disks and state are untouched).
        A source in saved state gives a clone in saved state (VirtualBox copies the memory
        image): that state is discarded, so the standby's first start is a cold boot and never
        resumes production's running identity. A serial port logging to a file gets a file of
        its own (clonevm copies production's path).
        """
        if self._info(target) is not None:
            raise OperationFailed(f"cannot clone onto {target!r}: a VM of that name exists")
        source_info = self._require(source)
        argv = ["clonevm", source, "--name", target, "--register", "--mode", "machine"]
        if linked:
            snapshots = {v for k, v in source_info.items() if k.startswith("SnapshotName")}
            if BASE_SNAPSHOT not in snapshots:
                self._vbox(
                    "snapshot", source, "take", BASE_SNAPSHOT,
                    "--description", "base of labctl's linked clones",
                )  # fmt: skip
            argv += ["--options", "link", "--snapshot", BASE_SNAPSHOT]
        try:
            self._vbox(*argv)
        except OperationFailed:
            self._remove_partial(target)
            raise
        try:
            info = self._require(target)
            if info.get("VMState") in SAVED_STATES:
                self._vbox("discardstate", target)
            self._vbox("setextradata", target, TAG_KEY, self.lab)
            self._vbox("setextradata", target, LINK_KEY, "off")
            self._vbox("modifyvm", target, f"--cableconnected{self.nic}", "off",
                       *_own_serial_logs(info, source, target))  # fmt: skip
        except OperationFailed:
            self._remove_partial(target)
            raise

    def _remove_partial(self, target: str) -> None:
        # Only called for a target this clone created (it did not exist before).
        if self._info(target) is not None:
            self._vbox("unregistervm", target, "--delete", check=False)

    def start(self, name: str) -> None:
        """startvm --type headless, after applying the remembered link state. No-op if running."""
        info = self._require(name)
        state = self._state(name, info)
        if state is MachineState.RUNNING:
            return
        if state is MachineState.PAUSED:
            raise OperationFailed(f"{name} is paused; resume it instead of starting it")
        link = self._extradata(name, LINK_KEY)
        if link in ("on", "off") and info.get(f"cableconnected{self.nic}") != link:
            self._vbox("modifyvm", name, f"--cableconnected{self.nic}", link)
        result = self._vbox("startvm", name, "--type", "headless", check=False)
        if result.code != 0:
            raise start_failed(name, self._failure(result).message, self._profile)

    def stop(self, name: str, *, hard: bool = False) -> None:
        """controlvm poweroff (hard) or acpipowerbutton (graceful; returns before the guest is
        down). No-op on a stopped VM."""
        state = self._state(name, self._require(name))
        if state is MachineState.STOPPED:
            return
        if not hard and state is MachineState.PAUSED:
            raise OperationFailed(f"{name} is paused: a frozen guest cannot handle ACPI")
        if hard:
            self._power_off(name)
        else:
            self._vbox("controlvm", name, "acpipowerbutton")

    def _power_off(self, name: str) -> None:
        """controlvm poweroff, returning once the VM's process has let go of its session
        (showvminfo prints SessionName only while it has not), at most timeouts.stop."""
        self._vbox("controlvm", name, "poweroff")
        deadline = self._clock() + (self._profile.timeouts.stop if self._profile else 60.0)
        while self._session_held(name) and self._clock() < deadline:
            self._sleep(self.RELEASE_POLL)

    def _session_held(self, name: str) -> bool:
        """Whether a session still holds the VM. While its process is going away, showvminfo
        can also fail to reach the console (real 7.2): that is held too."""
        result = self._vbox("showvminfo", name, "--machinereadable", check=False)
        if result.code != 0:
            return _CONSOLE_GOING in result.stderr
        return "SessionName" in parse_machinereadable(result.stdout)

    def pause(self, name: str) -> None:
        """controlvm pause; no-op when already paused."""
        state = self._state(name, self._require(name))
        if state is MachineState.PAUSED:
            return
        if state is not MachineState.RUNNING:
            raise OperationFailed(f"cannot pause {name}: it is {state}")
        self._vbox("controlvm", name, "pause")

    def resume(self, name: str) -> None:
        """controlvm resume; no-op when already running."""
        state = self._state(name, self._require(name))
        if state is MachineState.RUNNING:
            return
        if state is not MachineState.PAUSED:
            raise OperationFailed(f"cannot resume {name}: it is {state}")
        self._vbox("controlvm", name, "resume")

    def set_link(self, name: str, up: bool) -> None:
        """setlinkstateN on a running VM, --cableconnectedN on a stopped one; remembered."""
        state = self._state(name, self._require(name))
        value = "on" if up else "off"
        self._vbox("setextradata", name, LINK_KEY, value)
        if state is MachineState.STOPPED:
            self._vbox("modifyvm", name, f"--cableconnected{self.nic}", value)
        else:
            self._vbox("controlvm", name, f"setlinkstate{self.nic}", value)

    def exec_in_guest(self, name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        """guestcontrol run on a running VM (needs Guest Additions and guest credentials).

        A bare command name runs through /usr/bin/env. The password goes through a
        private temporary file (--passwordfile), never on a command line.
        """
        if not argv:
            raise OperationFailed("exec_in_guest needs a command")
        if self._profile is None:
            raise OperationFailed("exec_in_guest needs the profile's guest credentials")
        user, password = guest_credentials(self._profile)
        state = self._state(name, self._require(name))
        if state is not MachineState.RUNNING:
            raise OperationFailed(f"cannot run a command in {name}: it is {state}")
        run = guest_argv(argv)
        with tempfile.NamedTemporaryFile("w", prefix="labctl-guestpw-") as pwfile:
            os.chmod(pwfile.name, 0o600)
            pwfile.write(password + "\n")
            pwfile.flush()
            result = self._vbox(
                "guestcontrol", name, "run", "--exe", run[0], "--username", user,
                "--passwordfile", pwfile.name, "--timeout", str(int(timeout * 1000)),
                "--wait-stdout", "--wait-stderr", "--", *run,
                check=False, timeout=timeout + 30,
            )  # fmt: skip
        code, stderr = result.code, result.stderr
        if _SESSION_STILL_STARTING in stderr:
            # VBoxManageGuestCtrl waits a fixed 30 s for the session; a slow (e.g. interpreted)
            # guest needs longer, and a session the host gave up on fails later anyway
            raise GuestControlUnusable(
                f"{name}: VBoxManage guestcontrol gives a guest session 30 s to start (fixed "
                "in VBoxManage) and this guest's took longer",
                hint='set driver = "pyvbox" under [lab.virtualbox]: the API waits '
                "timeouts.guest for the session",
            )
        if code == 0:
            guest_code = 0
        elif _MAPPED_FIRST <= code <= _MAPPED_LAST:
            guest_code = code - _MAPPED_FIRST + 1
        elif code == _MAPPED_LAST + 1:
            guest_code = _MAPPED_LAST - _MAPPED_FIRST + 2  # 94: VBoxManage folds 94..255 into 126
            stderr += "labctl: the guest's exit code was 94 or higher (VBoxManage cannot tell)\n"
        else:
            raise self._failure(result)
        return ExecResult(tuple(argv), guest_code, result.stdout, stderr)

    def destroy(self, name: str) -> None:
        """Power off if needed, then unregistervm --delete. Only VMs tagged for this lab."""
        info = self._info(name)
        if info is None:
            return
        tag = self._extradata(name, TAG_KEY)
        if tag != self.lab:
            raise OperationFailed(
                f"refusing to destroy {name}: labctl did not create it for lab {self.lab!r} "
                f"(extra data {TAG_KEY} is {tag!r})"
            )
        # hard disks only: a DVD or floppy image (an installer ISO) is no disk to walk; its
        # slot alone has IsEjected (CTL-IsEjected-P-D beside CTL-ImageUUID-P-D)
        attached = [
            v for k, v in info.items()
            if "-ImageUUID-" in k and k.replace("-ImageUUID-", "-IsEjected-") not in info
        ]  # fmt: skip
        refuse_if_disks_used_elsewhere(
            name, disks_used_elsewhere(info.get("UUID", ""), attached, self._medium)
        )
        if self._state(name, info) is not MachineState.STOPPED:
            self._power_off(name)
        self._vbox("unregistervm", name, "--delete")

    def _medium(self, uuid: str) -> MediumFacts:
        return parse_mediuminfo(self._vbox("showmediuminfo", "disk", uuid).stdout)

    # -- VirtualBoxDetails ------------------------------------------------------------------

    def nic_attachment(self, name: str) -> str:
        """The lab NIC's attachment as modifyvm names it (nat, intnet, generic, ...)."""
        return self._require(name).get(f"nic{self.nic}", "none").lower()

    def guest_additions(self, name: str) -> str | None:
        """GuestAdditionsVersion of the running guest, None when absent or not running."""
        version = self._require(name).get("GuestAdditionsVersion", "")
        return version or None

    def host_report(self) -> VirtualBoxHost:
        """VBoxManage --version, this driver and why, and whether VMs can start here."""
        version = self._vbox("--version").stdout.strip()
        return VirtualBoxHost(version, self.name, self.why, start_blocker(self._profile))


def from_profile(profile: Profile) -> VBoxManageHypervisor:
    """The backend for ``lab.virtualbox.driver = "vboxmanage"``."""
    settings = profile.lab.virtualbox
    return VBoxManageHypervisor(
        profile.lab.name, executable=settings.vboxmanage, nic=settings.nic, profile=profile,
        why=resolve_driver(profile)[1],
    )  # fmt: skip
