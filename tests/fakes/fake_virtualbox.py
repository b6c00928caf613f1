"""FAKE ``virtualbox`` module (pyvbox): VirtualBox and its SDK cannot run here.

Shaped like pyvbox 2.1.1 (sethmlarson/virtualbox-python), the names labctl's pyvbox backend
uses and nothing more: ``virtualbox.VirtualBox()`` (fails at first use when the SDK's vboxapi is
missing, as the real one does), ``virtualbox.Session()``, ``virtualbox.library`` with the enums
(6.1 numbering) and VBoxError classes, IMachine/ISession/IConsole/IGuest/IGuestSession/IProgress
objects with pyvbox's snake_case names. A progress that failed does not raise from
``wait_for_completion()``; it reports ``result_code`` != 0, like the real one.

On a world whose version is 7.x the fake does what pyvbox 2.1.1 does against VirtualBox 7:
machine states come back in 7.0's numbering (decoded wrongly with 6.1's enum) and
``create_machine`` with 6.1's signature fails.

Install it with ``install(world)`` (puts the module in ``sys.modules``) inside a test only.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

from tests.fakes.vbox_world import (
    STOPPED_STATES,
    GuestError,
    Injected,
    InvalidState,
    Locked,
    NotFound,
    Vm,
    World,
)


class _Enum:
    """pyvbox's Enum: int() gives the value, str() the label, compares by value."""

    _labels: dict[int, str] = {}  # noqa: RUF012

    def __init__(self, value: int) -> None:
        self._value = value

    def __int__(self) -> int:
        return self._value

    def __str__(self) -> str:
        return self._labels.get(self._value, "?")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Enum | int):
            return int(self) == int(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value})"


def _enum(name: str, items: Sequence[tuple[str, str, int]]) -> type[_Enum]:
    cls = type(name, (_Enum,), {"_labels": {value: label for label, _, value in items}})
    for label, attr, value in items:
        del label
        setattr(cls, attr, cls(value))
    return cls


MACHINE_STATE_61 = [
    ("Null", "null", 0), ("PoweredOff", "powered_off", 1), ("Saved", "saved", 2),
    ("Teleported", "teleported", 3), ("Aborted", "aborted", 4), ("Running", "running", 5),
    ("Paused", "paused", 6), ("Stuck", "stuck", 7), ("Starting", "starting", 10),
    ("Stopping", "stopping", 11),
]  # fmt: skip
# VirtualBox 7.0 inserted AbortedSaved=5, shifting Running to 6 and Paused to 7.
_STATE_NUMBER = {
    "6": {"poweroff": 1, "saved": 2, "teleported": 3, "aborted": 4, "running": 5, "paused": 6},
    "7": {"poweroff": 1, "saved": 2, "teleported": 3, "aborted": 4, "running": 6, "paused": 7},
}
ATTACHMENT = [
    ("Null", "null", 0), ("NAT", "nat", 1), ("Bridged", "bridged", 2),
    ("Internal", "internal", 3), ("HostOnly", "host_only", 4), ("Generic", "generic", 5),
    ("NATNetwork", "nat_network", 6), ("Cloud", "cloud", 7),
]  # fmt: skip
_ATTACHMENT_NUMBER = {
    "null": 0, "nat": 1, "bridged": 2, "intnet": 3, "hostonly": 4, "generic": 5,
    "natnetwork": 6, "cloud": 7,
}  # fmt: skip
E_FAIL = 0x80004005


def _library() -> types.ModuleType:
    lib = types.ModuleType("virtualbox.library")
    lib.vbox_version = "6.1.16"  # type: ignore[attr-defined]
    lib.MachineState = _enum("MachineState", MACHINE_STATE_61)  # type: ignore[attr-defined]
    lib.NetworkAttachmentType = _enum("NetworkAttachmentType", ATTACHMENT)  # type: ignore[attr-defined]
    # pyvbox's IMachine(raw) wraps a raw interface object; the fake's raw objects are its own
    lib.IMachine = lambda raw: raw  # type: ignore[attr-defined]
    lib.LockType = _enum(  # type: ignore[attr-defined]
        "LockType",
        [("Null", "null", 0), ("Shared", "shared", 1), ("Write", "write", 2), ("VM", "vm", 3)],
    )
    lib.CleanupMode = _enum(  # type: ignore[attr-defined]
        "CleanupMode",
        [
            ("UnregisterOnly", "unregister_only", 1),
            ("DetachAllReturnNone", "detach_all_return_none", 2),
            ("DetachAllReturnHardDisksOnly", "detach_all_return_hard_disks_only", 3),
            ("Full", "full", 4),
        ],
    )
    lib.DeviceType = _enum(  # type: ignore[attr-defined]
        "DeviceType",
        [("Null", "null", 0), ("Floppy", "floppy", 1), ("DVD", "dvd", 2),
         ("HardDisk", "hard_disk", 3)],
    )  # fmt: skip
    lib.PortMode = _enum(  # type: ignore[attr-defined]
        "PortMode",
        [("Disconnected", "disconnected", 0), ("HostPipe", "host_pipe", 1),
         ("HostDevice", "host_device", 2), ("RawFile", "raw_file", 3), ("TCP", "tcp", 4)],
    )  # fmt: skip
    lib.CloneMode = _enum(  # type: ignore[attr-defined]
        "CloneMode",
        [
            ("MachineState", "machine_state", 1),
            ("MachineAndChildStates", "machine_and_child_states", 2),
            ("AllStates", "all_states", 3),
        ],
    )
    lib.CloneOptions = _enum(  # type: ignore[attr-defined]
        "CloneOptions",
        [
            ("Link", "link", 1),
            ("KeepAllMACs", "keep_all_ma_cs", 2),
            ("KeepNATMACs", "keep_natma_cs", 3),
            ("KeepDiskNames", "keep_disk_names", 4),
            ("KeepHwUUIDs", "keep_hw_uui_ds", 5),
        ],
    )

    class VBoxError(Exception):
        """Generic VBoxError"""

        value = -1

        def __init__(self, msg: str = "") -> None:
            super().__init__(msg)
            self.msg = msg

        def __str__(self) -> str:
            return f"0x{self.value & 0xFFFFFFFF:x} ({self.msg})"

    class VBoxErrorObjectNotFound(VBoxError):
        value = 0x80BB0001

    class VBoxErrorInvalidVmState(VBoxError):
        value = 0x80BB0002

    class VBoxErrorInvalidObjectState(VBoxError):
        value = 0x80BB0007

    class VBoxErrorIprtError(VBoxError):
        value = 0x80BB0005

    lib.VBoxError = VBoxError  # type: ignore[attr-defined]
    lib.GuestSessionStatus = _enum(  # type: ignore[attr-defined]
        "GuestSessionStatus",
        [("Undefined", "undefined", 0), ("Starting", "starting", 10),
         ("Started", "started", 100), ("Terminated", "terminated", 500),
         ("Error", "error", 800)],
    )
    lib.GuestSessionWaitForFlag = _enum(  # type: ignore[attr-defined]
        "GuestSessionWaitForFlag",
        [("None", "none", 0), ("Start", "start", 1), ("Terminate", "terminate", 2)],
    )
    lib.IGuestSession = lambda raw: raw  # type: ignore[attr-defined]
    lib.IGuestProcess = lambda raw: raw  # type: ignore[attr-defined]
    lib.ProcessWaitResult = _enum(  # type: ignore[attr-defined]
        "ProcessWaitResult", [("Start", "start", 1), ("Terminate", "terminate", 2)]
    )
    lib.AdditionsFacilityType = _enum(  # type: ignore[attr-defined]
        "AdditionsFacilityType", [("VBoxService", "v_box_service", 100)]
    )
    lib.AdditionsFacilityStatus = _enum(  # type: ignore[attr-defined]
        "AdditionsFacilityStatus", [("Inactive", "inactive", 0), ("Active", "active", 50)]
    )
    lib.VBoxErrorObjectNotFound = VBoxErrorObjectNotFound  # type: ignore[attr-defined]
    lib.VBoxErrorInvalidVmState = VBoxErrorInvalidVmState  # type: ignore[attr-defined]
    lib.VBoxErrorInvalidObjectState = VBoxErrorInvalidObjectState  # type: ignore[attr-defined]
    lib.VBoxErrorIprtError = VBoxErrorIprtError  # type: ignore[attr-defined]
    return lib


class FakeVirtualBoxApi:
    """The objects behind one fake ``virtualbox`` module, bound to a World."""

    def __init__(self, world: World, *, sdk_present: bool = True) -> None:
        self.world = world
        self.sdk_present = sdk_present
        self.lib = _library()
        self.module = self._module()

    # -- module -----------------------------------------------------------------------------

    def _module(self) -> types.ModuleType:
        api = self
        mod = types.ModuleType("virtualbox")
        mod.__doc__ = "FAKE virtualbox (pyvbox) module for tests: VirtualBox cannot run here."
        mod.library = self.lib  # type: ignore[attr-defined]
        mod.__version__ = "2.1.1"  # type: ignore[attr-defined]

        def virtualbox_factory() -> FakeIVirtualBox:
            if not api.sdk_present:
                # pyvbox's Manager() imports vboxapi (VirtualBox's SDK) on first use.
                raise ModuleNotFoundError("No module named 'vboxapi'", name="vboxapi")
            return FakeIVirtualBox(api)

        def session_factory() -> FakeSession:
            if not api.sdk_present:
                raise ModuleNotFoundError("No module named 'vboxapi'", name="vboxapi")
            return FakeSession(api)

        mod.VirtualBox = virtualbox_factory  # type: ignore[attr-defined]
        mod.Session = session_factory  # type: ignore[attr-defined]
        return mod

    def install(self) -> None:
        sys.modules["virtualbox"] = self.module
        sys.modules["virtualbox.library"] = self.lib

    @staticmethod
    def uninstall() -> None:
        sys.modules.pop("virtualbox", None)
        sys.modules.pop("virtualbox.library", None)

    @property
    def major(self) -> str:
        return self.world.version.split(".")[0]

    def error(self, kind: str, msg: str) -> Exception:
        cls: type[Exception] = getattr(self.lib, kind)
        return cls(msg)


class FakeProgress:
    # real 7.2: waitForCompletion(-1) of powering a driverless VM off returned this many times
    # before the end; result_code then raises "operation is still in progress"
    early_returns = 0

    def __init__(self, error: str | None = None) -> None:
        self.completed = False
        self._error = error
        self._early = FakeProgress.early_returns

    def wait_for_completion(self, timeout: int = -1) -> None:
        del timeout
        if self._early > 0:
            self._early -= 1
            return
        self.completed = True  # never raises, even on failure (pyvbox behaviour)

    @property
    def result_code(self) -> int:
        if not self.completed:
            raise RuntimeError("Result code is not available, operation is still in progress")
        return 0 if self._error is None else E_FAIL

    @property
    def error_info(self) -> Any:
        return types.SimpleNamespace(text=self._error or "", result_code=self.result_code)


class FakeIVirtualBox:
    def __init__(self, api: FakeVirtualBoxApi) -> None:
        self._api = api

    @property
    def version(self) -> str:
        return self._api.world.version.split("r")[0]

    @property
    def machines(self) -> list[FakeMachine]:
        return [FakeMachine(self._api, name) for name in self._api.world.machines]

    def find_machine(self, name_or_id: str) -> FakeMachine:
        try:
            vm = self._api.world.find(name_or_id)
        except NotFound:
            raise self._api.error(
                "VBoxErrorObjectNotFound",
                f"Could not find a registered machine named '{name_or_id}'",
            ) from None
        return FakeMachine(self._api, vm.name)

    def compose_machine_filename(
        self, name: str, group: str, create_flags: str, base_folder: str
    ) -> str:
        return self._api.world.settings_file(name)

    @property
    def _i(self) -> Any:
        """The raw IVirtualBox: createMachine with the running version's parameters."""
        return types.SimpleNamespace(createMachine=self._raw_create_machine)

    def _raw_create_machine(self, *args: Any) -> FakeMachine:
        minor = int(self._api.world.version.split(".")[1])
        # 7.0: + cipher, passwordId, password; 7.1: + platform architecture after the name
        expected = 5 if self._api.major == "6" else 9 if minor >= 1 else 8
        if len(args) != expected:
            raise self._api.error(
                "VBoxError", f"createMachine() takes {expected} arguments on this API"
            )
        return self._new_machine(str(args[0]), str(args[1]))

    def create_machine(
        self, settings_file: str, name: str, groups: list[str], os_type_id: str, flags: str
    ) -> FakeMachine:
        if self._api.major != "6":
            raise self._api.error(
                "VBoxError", "createMachine: wrong number of arguments for this API"
            )
        return self._new_machine(settings_file, name)

    def _new_machine(self, settings_file: str, name: str) -> FakeMachine:
        if name in self._api.world.machines:
            raise self._api.error(
                "VBoxError", f"Machine settings file '{settings_file}' already exists"
            )
        return FakeMachine(self._api, name, registered=False)

    def register_machine(self, machine: FakeMachine) -> None:
        assert machine._pending is not None, "register_machine of a machine that was never cloned"
        self._api.world.machines[machine.name] = machine._pending
        machine._pending = None
        machine._registered = True


class FakeAdapter:
    def __init__(self, api: FakeVirtualBoxApi, machine: str, slot: int) -> None:
        self._api, self._machine, self._slot = api, machine, str(slot + 1)

    def _vm(self) -> Vm:
        return self._api.world.find(self._machine)

    @property
    def enabled(self) -> bool:
        return self._slot in self._vm().nics

    @property
    def mac_address(self) -> str:
        return self._vm().nics[self._slot].mac

    @property
    def attachment_type(self) -> _Enum:
        nic = self._vm().nics.get(self._slot)
        number = _ATTACHMENT_NUMBER[nic.attachment] if nic else 0
        return self._api.lib.NetworkAttachmentType(number)  # type: ignore[no-any-return]

    # what each attachment is attached to, as the fake VBoxManage's showvminfo prints them
    internal_network = "intnet"
    nat_network = "NatNetwork"
    host_only_interface = "vboxnet0"
    bridged_interface = "eth0"
    generic_driver = ""

    def get_properties(self, names: str) -> tuple[list[str], list[str]]:
        return [], []

    @property
    def cable_connected(self) -> bool:
        vm = self._vm()
        nic = vm.nics[self._slot]
        return nic.cable if vm.state in STOPPED_STATES else nic.live_cable

    @cable_connected.setter
    def cable_connected(self, value: bool) -> None:
        if self._vm().state in STOPPED_STATES:
            self._api.world.set_saved_cable(self._machine, self._slot, value)
        else:
            self._api.world.set_live_cable(self._machine, self._slot, value)


class FakeSerialPort:
    """ISerialPort; the fake models file-mode ports only (``Vm.serial_files``)."""

    def __init__(self, machine: FakeMachine, slot: int) -> None:
        self._machine, self._slot = machine, str(slot + 1)

    @property
    def enabled(self) -> bool:
        return self._slot in self._machine._vm().serial_files

    @property
    def host_mode(self) -> _Enum:
        raw_file = 3 if self.enabled else 0
        return self._machine._api.lib.PortMode(raw_file)  # type: ignore[no-any-return]

    @property
    def path(self) -> str:
        return self._machine._vm().serial_files.get(self._slot, "")

    @path.setter
    def path(self, value: str) -> None:
        if not self._machine._mutable:  # real: settings change only through a session
            raise self._machine._api.error("VBoxErrorInvalidVmState", "The machine is not mutable")
        self._machine._api.world.set_serial_file(self._machine.name, self._slot, value)


class FakeSnapshot:
    def __init__(self, machine: FakeMachine, name: str) -> None:
        self.machine = machine
        self.name = name


class FakeMachine:
    def __init__(self, api: FakeVirtualBoxApi, name: str, *, registered: bool = True) -> None:
        self._api = api
        self.name = name
        self._registered = registered
        self._pending: Vm | None = None
        self._mutable = False
        self.os_type_id = "Debian_64"
        # the raw interface object pyvbox keeps as ``_i``: labctl calls createMachine and
        # reads platform.architecture through it on 7.x, where pyvbox's wrappers are 6.1's
        self._i = types.SimpleNamespace(platform=types.SimpleNamespace(architecture=1))

    def _vm(self) -> Vm:
        try:
            return self._api.world.find(self.name)
        except NotFound:
            raise self._api.error(
                "VBoxErrorObjectNotFound",
                f"Could not find a registered machine named '{self.name}'",
            ) from None

    @property
    def id_p(self) -> str:
        return self._vm().uuid

    @property
    def medium_attachments(self) -> list[Any]:
        # the fake models no disks: real disks (and linked-clone trees) are tested against
        # real VirtualBox 7.2 in tests/vbox
        return []

    @property
    def state(self) -> _Enum:
        vm = self._api.world.observe(self.name)
        number = _STATE_NUMBER[self._api.major].get(vm.state, 0)
        return self._api.lib.MachineState(number)  # type: ignore[no-any-return]

    def get_network_adapter(self, slot: int) -> FakeAdapter:
        self._vm()
        return FakeAdapter(self._api, self.name, slot)

    def get_serial_port(self, slot: int) -> FakeSerialPort:
        self._vm()
        return FakeSerialPort(self, slot)

    def get_extra_data(self, key: str) -> str:
        return self._vm().extradata.get(key, "")

    def set_extra_data(self, key: str, value: str) -> None:
        if not self._mutable and self._api.major != "6":
            # real 7.2: setExtraData on the registered machine object, without a session
            raise self._api.error(
                "VBoxErrorInvalidVmState", "Cannot set extradata for an immutable machine"
            )
        try:
            self._api.world.set_extradata(self.name, key, value or None)
        except Injected as exc:
            raise self._api.error("VBoxError", str(exc)) from None

    def save_settings(self) -> None:
        self._vm()

    def discard_saved_state(self, remove_file: bool) -> None:
        if not self._mutable:
            raise self._api.error("VBoxErrorInvalidVmState", "The machine is not mutable")
        try:
            self._api.world.discard_state(self.name)
        except InvalidState as exc:
            raise self._api.error("VBoxErrorInvalidVmState", str(exc)) from None

    def find_snapshot(self, name_or_id: str) -> FakeSnapshot:
        if name_or_id not in self._vm().snapshots:
            raise self._api.error(
                "VBoxErrorObjectNotFound", f"Could not find a snapshot named '{name_or_id}'"
            )
        return FakeSnapshot(self, name_or_id)

    def take_snapshot(self, name: str, description: str, pause: bool) -> tuple[FakeProgress, str]:
        if not pause and self._vm().state in STOPPED_STATES:
            # real 7.2 (pause=False asks for a live snapshot)
            raise self._api.error(
                "VBoxErrorInvalidVmState",
                "Cannot take a live snapshot of a virtual machine unless it is running.",
            )
        try:
            self._api.world.take_snapshot(self.name, name)
        except Injected as exc:
            return FakeProgress(str(exc)), ""
        return FakeProgress(), f"snap-{name}"

    def lock_machine(self, session: FakeSession, lock_type: _Enum) -> None:
        vm = self._vm()
        if int(lock_type) == 2 and vm.state not in STOPPED_STATES:
            raise self._api.error(
                "VBoxErrorInvalidObjectState",
                f"The machine '{self.name}' is already locked for a session",
            )
        session._lock(self)

    def launch_vm_process(
        self, session: FakeSession, name: str, environment_changes: list[str]
    ) -> FakeProgress:
        try:
            self._api.world.start(self.name)
        except Locked as exc:
            raise self._api.error("VBoxErrorInvalidObjectState", str(exc)) from None
        except Injected as exc:
            return FakeProgress(str(exc))
        session._lock(self)
        return FakeProgress()

    def clone_to(self, target: FakeMachine, mode: _Enum, options: list[_Enum]) -> FakeProgress:
        linked = any(int(o) == 1 for o in options)
        source = self._vm()
        snapshot = source.snapshots[-1] if linked and source.snapshots else None
        try:
            self._api.world.clone(self.name, target.name, snapshot=snapshot, linked=linked)
        except (Injected, InvalidState, NotFound) as exc:
            return FakeProgress(str(exc))
        target._pending = self._api.world.machines.pop(target.name)
        return FakeProgress()

    def unregister(self, cleanup_mode: _Enum) -> list[str]:
        try:
            self._api.world.unregister_delete(self.name)
        except Locked as exc:
            raise self._api.error("VBoxErrorInvalidObjectState", str(exc)) from None
        self._registered = False
        return [f"{self.name}.vdi"]

    def delete_config(self, media: list[str]) -> FakeProgress:
        return FakeProgress()


class FakeSession:
    def __init__(self, api: FakeVirtualBoxApi) -> None:
        self._api = api
        self._machine: FakeMachine | None = None

    def _lock(self, machine: FakeMachine) -> None:
        if self._machine is not None:
            raise self._api.error("VBoxErrorInvalidObjectState", "Session already open")
        self._machine = machine

    @property
    def machine(self) -> FakeMachine:
        assert self._machine is not None, "session not locked"
        # the session's machine is the mutable one (IMachine of ISession.machine)
        mutable = FakeMachine(self._api, self._machine.name)
        mutable._mutable = True
        return mutable

    @property
    def console(self) -> FakeConsole:
        machine = self.machine
        if machine._vm().state in STOPPED_STATES:
            raise self._api.error("VBoxErrorInvalidVmState", "Machine is not running: no console")
        return FakeConsole(self._api, machine.name)

    def unlock_machine(self) -> None:
        if self._machine is None:
            raise self._api.error("VBoxErrorInvalidObjectState", "Session is not locked")
        self._machine = None


class FakeConsole:
    def __init__(self, api: FakeVirtualBoxApi, name: str) -> None:
        self._api, self._name = api, name

    def _do(self, action: str) -> None:
        try:
            getattr(self._api.world, action)(self._name)
        except InvalidState as exc:
            raise self._api.error("VBoxErrorInvalidVmState", str(exc)) from None

    def power_down(self) -> FakeProgress:
        self._do("power_off")
        return FakeProgress()

    def power_button(self) -> None:
        self._do("acpi")

    def pause(self) -> None:
        self._do("pause")

    def resume(self) -> None:
        self._do("resume")

    @property
    def guest(self) -> FakeGuest:
        return FakeGuest(self._api, self._name)


class FakeGuest:
    def __init__(self, api: FakeVirtualBoxApi, name: str) -> None:
        self._api, self._name = api, name

    @property
    def additions_version(self) -> str:
        return self._api.world.find(self._name).guest_additions or ""

    @property
    def additions_run_level(self) -> int:
        """AdditionsRunLevelType 1 (system) once the guest kernel's driver is up: like the
        real one, it says nothing about VBoxService."""
        return 1 if self._api.world.find(self._name).guest_additions else 0

    def get_facility_status(self, facility: Any) -> tuple[Any, int]:
        """(AdditionsFacilityStatus, timestamp): VBoxService (100) active (50) or inactive."""
        vm = self._api.world.find(self._name)
        up = int(facility) == 100 and vm.guest_additions and vm.guest_service_up
        return self._api.lib.AdditionsFacilityStatus(50 if up else 0), 0

    def create_session(
        self, user: str, password: str, domain: str = "", session_name: str = "pyvbox",
        timeout_ms: int = 0,
    ) -> FakeGuestSession:  # fmt: skip
        vm = self._api.world.find(self._name)
        if not vm.guest_additions or vm.guest_accounts.get(user) != password:
            raise SystemError("GuestSession failed to start")
        session = FakeGuestSession(self._api, self._name, user, password)
        session.status = self._api.lib.GuestSessionStatus.started
        return session

    def _call(self, method: str, in_p: list[str]) -> FakeGuestSession:
        """The raw IGuest.createSession: the session starts asynchronously (see wait_for)."""
        assert method == "createSession", method
        user, password, _domain, _name = in_p
        return FakeGuestSession(self._api, self._name, user, password)


class FakeProcess:
    def __init__(self, exit_code: int, out: bytes = b"", err: bytes = b"") -> None:
        self.exit_code = exit_code
        self.status = 500  # ProcessStatus TerminatedNormally: the fake runs it at once
        self._streams = {1: out, 2: err}

    def wait_for(self, what: int, timeout_ms: int) -> int:
        return 2  # ProcessWaitResult Terminate

    def read(self, handle: int, size: int, timeout_ms: int) -> bytes:
        data, self._streams[handle] = self._streams[handle][:size], self._streams[handle][size:]
        return data


class _RawGuestSession:
    """The raw 7.x interface (``_i``): processCreateEx with the working directory."""

    def __init__(self, session: FakeGuestSession) -> None:
        self._session = session

    def processCreateEx(  # the API's own name
        self, executable: str, arguments: list[str], cwd: str, environment: list[str],
        flags: list[int], timeout_ms: int, priority: int, affinity: list[int],
    ) -> FakeProcess:  # fmt: skip
        assert arguments[0] == executable and sorted(flags) == [16, 32]
        proc, out, err = self._session.execute(executable, arguments[1:], timeout_ms=timeout_ms)
        return FakeProcess(proc.exit_code, out, err)


class FakeGuestSession:
    def __init__(self, api: FakeVirtualBoxApi, name: str, user: str, password: str) -> None:
        self._api, self._name, self._user, self._password = api, name, user, password
        self.closed = False
        self.status: Any = api.lib.GuestSessionStatus.starting
        self._i = _RawGuestSession(self)

    def wait_for(self, flag: int, timeout_ms: int) -> int:
        """Like IGuestSession.waitFor(start): started, error (bad login) or still starting
        (the world's ``guest_session_starts`` = False: a guest too slow for the deadline)."""
        vm = self._api.world.find(self._name)
        statuses = self._api.lib.GuestSessionStatus
        if not vm.guest_additions or not vm.guest_session_starts:
            return 5  # GuestSessionWaitResult.timeout
        if vm.guest_accounts.get(self._user) != self._password:
            self.status = statuses.error
            return 6  # GuestSessionWaitResult.error
        self.status = statuses.started
        return 1  # GuestSessionWaitResult.start

    def execute(
        self, command: str, arguments: list[str] | None = None, stdin: str = "",
        environment: list[str] | None = None, flags: list[Any] | None = None,
        priority: Any = None, affinity: list[int] | None = None, timeout_ms: int = 0,
    ) -> tuple[FakeProcess, bytes, bytes]:  # fmt: skip
        argv = [command, *(arguments or [])]
        try:
            code, out, err = self._api.world.run_in_guest(
                self._name, self._user, self._password, argv, timeout_ms / 1000 or None
            )
        except (InvalidState, GuestError) as exc:
            raise self._api.error("VBoxError", str(exc)) from None
        return FakeProcess(code), out.encode(), err.encode()

    def close(self) -> None:
        self.closed = True
