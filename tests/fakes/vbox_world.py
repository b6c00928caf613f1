"""A fake VirtualBox host: the machines a VBoxManage or the SDK would see, kept in a JSON file.

VirtualBox cannot run on the machines labctl is developed and tested on. This model is the one
"VirtualBox" that both fakes drive: ``fake_vboxmanage.py`` (a VBoxManage executable) and
``fake_virtualbox.py`` (a stand-in for pyvbox's ``virtualbox`` module). It keeps only what the
backends touch, with VirtualBox's own rules where they matter to labctl:

* a clone gets new MACs (clonevm without keepallmacs), copies NIC settings and extra data, is
  powered off and has no snapshots; a linked clone needs a snapshot of its source;
* ``acpipowerbutton`` returns at once and the guest powers off a moment later (here: after the
  machine's state has been read ``acpi_delay`` more times), like a real guest handling ACPI;
* ``setlinkstate`` on a running machine changes the live cable only; the saved setting is what
  ``modifyvm --cableconnected`` wrote (the conservative reading of VBoxManage's behaviour);
* Guest Additions are reported only while the machine runs and has them installed;
* guest processes "run in the guest" by running on this host (a fake guest has no OS of its own),
  only for a running machine with Guest Additions and the right account.

The state file is locked while a command runs so concurrent fake invocations do not corrupt it.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STOPPED_STATES = {"poweroff", "saved", "aborted", "teleported"}


def _new_uuid() -> str:
    import uuid  # only when machines are created: keeps the fake's start-up cheap

    return str(uuid.uuid4())


class NotFound(Exception):
    """No registered machine of that name (VBOX_E_OBJECT_NOT_FOUND)."""


class InvalidState(Exception):
    """The machine is in the wrong state for the operation (VBOX_E_INVALID_VM_STATE)."""


class Locked(Exception):
    """The machine is locked by a running session (VBOX_E_INVALID_OBJECT_STATE)."""


class GuestError(Exception):
    """Guest control failed (no Guest Additions, bad login)."""


class Injected(Exception):
    """A failure a test asked for, to check that callers clean up."""


# Plain classes, not dataclasses: the fake VBoxManage imports this module on every call and
# `dataclasses` alone costs a noticeable share of its start-up time.


class Nic:
    def __init__(
        self,
        attachment: str = "intnet",  # VBoxManage's names: nat bridged intnet hostonly natnetwork
        mac: str = "",
        cable: bool = True,  # saved setting
        live_cable: bool = True,  # while running
    ) -> None:
        self.attachment = attachment
        self.mac = mac
        self.cable = cable
        self.live_cable = live_cable

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


class Vm:
    def __init__(
        self,
        name: str,
        uuid: str,
        state: str = "poweroff",
        nics: dict[str, Nic] | None = None,  # "1".."8"; missing = disabled ("none")
        extradata: dict[str, str] | None = None,
        snapshots: list[str] | None = None,
        guest_additions: str | None = "6.1.50 r161033",
        guest_accounts: dict[str, str] | None = None,
        guest_session_starts: bool = True,
        guest_service_up: bool = True,
        acpi_pending: int = -1,  # reads left until an ACPI shutdown completes; -1 = none
        description: str = "",
        serial_files: dict[str, str] | None = None,  # "1".."4" -> the file a UART writes
        lock_lingers: int = 0,  # reads after a power-off while the VM process still holds
        locked_reads: int = 0,  # its session (real 7.2: a moment); reads left of that now
    ) -> None:
        self.name = name
        self.uuid = uuid
        self.state = state
        self.nics = nics if nics is not None else {}
        self.extradata = extradata if extradata is not None else {}
        self.snapshots = snapshots if snapshots is not None else []
        self.guest_additions = guest_additions
        self.guest_accounts = guest_accounts if guest_accounts is not None else {}
        # False: a guest-control session never starts within the caller's deadline
        self.guest_session_starts = guest_session_starts
        # False: the guest is still booting, VBoxService has not reported in
        self.guest_service_up = guest_service_up
        self.acpi_pending = acpi_pending
        self.description = description
        self.serial_files = serial_files if serial_files is not None else {}
        self.lock_lingers = lock_lingers
        self.locked_reads = locked_reads

    @property
    def locked(self) -> bool:
        """A session holds the machine: it runs, or its process is still letting go."""
        return self.state not in STOPPED_STATES or self.locked_reads > 0

    def to_json(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["nics"] = {slot: nic.to_json() for slot, nic in self.nics.items()}
        return data

    def __repr__(self) -> str:
        return f"Vm({self.name!r}, state={self.state!r})"


class World:
    def __init__(
        self,
        version: str = "6.1.50r161033",
        machines: dict[str, Vm] | None = None,
        mac_counter: int = 0x10,
        acpi_delay: int = 1,
        fail: dict[str, str] | None = None,
    ) -> None:
        self.version = version
        self.machines = machines if machines is not None else {}
        self.mac_counter = mac_counter
        self.acpi_delay = acpi_delay
        # operation name -> error text: the next call of that operation fails (the entry is
        # then consumed). Lets tests check that a failure half way leaves nothing behind.
        self.fail = fail if fail is not None else {}

    def __repr__(self) -> str:
        return f"World(version={self.version!r}, machines={list(self.machines.values())!r})"

    # -- persistence ----------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> World:
        machines = {}
        for name, raw in data.get("machines", {}).items():
            nics = {k: Nic(**v) for k, v in raw.pop("nics", {}).items()}
            machines[name] = Vm(nics=nics, **raw)
        return cls(
            version=data.get("version", "6.1.50r161033"),
            machines=machines,
            mac_counter=data.get("mac_counter", 0x10),
            acpi_delay=data.get("acpi_delay", 1),
            fail=dict(data.get("fail", {})),
        )

    def to_json(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["machines"] = {name: vm.to_json() for name, vm in self.machines.items()}
        return data

    # -- helpers --------------------------------------------------------------------------

    def _new_mac(self) -> str:
        self.mac_counter += 1
        return f"080027{self.mac_counter:06X}"

    def maybe_fail(self, operation: str) -> None:
        if operation in self.fail:
            raise Injected(self.fail.pop(operation))

    def find(self, name: str) -> Vm:
        vm = self.machines.get(name)
        if vm is None:
            for candidate in self.machines.values():
                if candidate.uuid == name:
                    return candidate
            raise NotFound(name)
        return vm

    def observe(self, name: str) -> Vm:
        """Read a machine's state the way a client polls it: pending ACPI shutdowns progress."""
        vm = self.find(name)
        if vm.locked_reads > 0:
            vm.locked_reads -= 1
        if vm.acpi_pending >= 0:
            if vm.acpi_pending == 0:
                self._power_off(vm)
            else:
                vm.acpi_pending -= 1
        return vm

    def _power_off(self, vm: Vm) -> None:
        vm.state = "poweroff"
        vm.locked_reads = vm.lock_lingers
        vm.acpi_pending = -1
        for nic in vm.nics.values():
            nic.live_cable = nic.cable

    # -- what a user does in the VirtualBox GUI (test setup) ---------------------------------

    def create(self, name: str, *, attachment: str = "intnet", **extra: Any) -> Vm:
        vm = Vm(name=name, uuid=_new_uuid(), **extra)
        vm.nics["1"] = Nic(attachment=attachment, mac=self._new_mac())
        self.machines[name] = vm
        return vm

    # -- operations -----------------------------------------------------------------------

    def take_snapshot(self, name: str, snapshot: str) -> None:
        self.maybe_fail("snapshot")
        vm = self.find(name)
        vm.snapshots.append(snapshot)

    def clone(self, source: str, target: str, *, snapshot: str | None, linked: bool) -> Vm:
        src = self.find(source)
        if target in self.machines:
            raise InvalidState(
                f"Machine settings file '{self.settings_file(target)}' already exists"
            )
        if linked and (snapshot is None or snapshot not in src.snapshots):
            raise InvalidState("Linked clone can only be created from a snapshot")
        if snapshot is not None and snapshot not in src.snapshots:
            raise NotFound(f"Could not find a snapshot named '{snapshot}'")
        self.maybe_fail("clonevm")
        vm = Vm(
            name=target,
            uuid=_new_uuid(),
            nics={
                k: Nic(
                    attachment=n.attachment, mac=self._new_mac(), cable=n.cable, live_cable=n.cable
                )
                for k, n in src.nics.items()
            },
            extradata=dict(src.extradata),
            guest_additions=src.guest_additions,
            guest_accounts=dict(src.guest_accounts),
            description=src.description,
            serial_files=dict(src.serial_files),  # real 7.2: clonevm copies the paths
            # real 7.2: a clone of a saved machine (or of a snapshot taken while it was saved)
            # gets the memory image too; starting it would resume the source's running state
            state="saved" if src.state == "saved" else "poweroff",
        )
        self.machines[target] = vm
        return vm

    def save_state(self, name: str) -> None:
        self._running(name).state = "saved"

    def discard_state(self, name: str) -> None:
        vm = self.find(name)
        if vm.state != "saved":
            raise InvalidState(f"Machine '{name}' is not in the saved state (currently {vm.state})")
        vm.state = "poweroff"

    def settings_file(self, name: str) -> str:
        return f"/root/VirtualBox VMs/{name}/{name}.vbox"

    def start(self, name: str) -> None:
        vm = self.find(name)
        if vm.state not in STOPPED_STATES:
            raise Locked(
                f"The machine '{name}' is already locked by a session (or being locked or unlocked)"
            )
        self.maybe_fail("startvm")
        vm.state = "running"
        for nic in vm.nics.values():
            nic.live_cable = nic.cable

    def _running(self, name: str) -> Vm:
        vm = self.observe(name)
        if vm.state in STOPPED_STATES:
            raise InvalidState(f"Machine '{name}' is not currently running")
        return vm

    def power_off(self, name: str) -> None:
        self._power_off(self._running(name))

    def acpi(self, name: str) -> None:
        vm = self._running(name)
        if vm.state == "running" and vm.acpi_pending < 0:
            vm.acpi_pending = self.acpi_delay

    def pause(self, name: str) -> None:
        vm = self._running(name)
        if vm.state != "running":
            raise InvalidState(f"Machine in invalid state {vm.state} -- not running")
        vm.state = "paused"

    def resume(self, name: str) -> None:
        vm = self._running(name)
        if vm.state != "paused":
            raise InvalidState(f"Machine in invalid state {vm.state} -- not paused")
        vm.state = "running"

    def set_live_cable(self, name: str, slot: str, connected: bool) -> None:
        vm = self._running(name)
        if slot not in vm.nics:
            raise InvalidState(f"network adapter {slot} is disabled")
        vm.nics[slot].live_cable = connected

    def set_saved_cable(self, name: str, slot: str, connected: bool) -> None:
        vm = self.find(name)
        if vm.state not in STOPPED_STATES:
            raise Locked(
                f"The machine '{name}' is already locked for a session (or being unlocked)"
            )
        self.maybe_fail("modifyvm")
        nic = vm.nics.setdefault(slot, Nic(attachment="null", mac=self._new_mac()))
        nic.cable = nic.live_cable = connected

    def set_serial_file(self, name: str, slot: str, path: str) -> None:
        vm = self.find(name)
        if vm.state not in STOPPED_STATES:
            raise Locked(
                f"The machine '{name}' is already locked for a session (or being unlocked)"
            )
        vm.serial_files[slot] = path

    def set_extradata(self, name: str, key: str, value: str | None) -> None:
        self.maybe_fail("setextradata")
        vm = self.find(name)
        if value is None:
            vm.extradata.pop(key, None)
        else:
            vm.extradata[key] = value

    def unregister_delete(self, name: str) -> None:
        vm = self.find(name)
        if vm.locked:
            raise Locked(f"Cannot unregister the machine '{name}' while it is locked")
        del self.machines[name]

    def run_in_guest(
        self, name: str, user: str, password: str, argv: Sequence[str], timeout_s: float | None
    ) -> tuple[int, str, str]:
        vm = self.observe(name)
        if vm.state != "running":
            raise InvalidState(f'Machine "{name}" is not running (currently {vm.state})!')
        if not vm.guest_additions:
            raise GuestError("The guest execution service is not ready (yet)")
        if vm.guest_accounts.get(user) != password:
            raise GuestError("The specified user was not able to logon on guest")
        if not argv[0].startswith("/"):  # real 7.2: the Guest Additions take no PATH lookup
            raise GuestError(f"Error starting process '{argv[0]}', rc=VERR_FILE_NOT_FOUND")
        # The fake guest has no OS of its own: its processes run on this host.
        import subprocess  # only here: it is costly to import on every fake call

        try:
            done = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(str(exc)) from exc
        return done.returncode, done.stdout, done.stderr


@contextmanager
def opened(path: Path) -> Iterator[World]:
    """Load the world from ``path`` under an exclusive lock, yield it, then save any change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = path.read_text() if path.exists() else ""
        world = World.from_json(json.loads(before)) if before else World()
        try:
            yield world
        finally:
            after = json.dumps(world.to_json(), indent=1)
            if after != before:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(after)
                tmp.replace(path)
