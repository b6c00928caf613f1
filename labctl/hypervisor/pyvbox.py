"""VirtualBox through its Python SDK via pyvbox (PyPI ``virtualbox``, extra ``[virtualbox]``).

pyvbox 2.1.1 is generated from the VirtualBox 6.1 API. It works on 6.1 and, through
``vbox_versions`` (the one table of what differs between API versions), on 7.0-7.2: states and
attachment types are decoded from the API's numeric values with the running version's
numbering, and createMachine (whose parameters changed in 7.0 and 7.1) is called through the
raw interface. ``import virtualbox`` succeeds without VirtualBox's SDK (vboxapi) and fails at
first use, so check() actually talks to VirtualBox.

Progress objects: ``wait_for_completion()`` is the API's own completion wait (not a labctl
retry) and does not raise on failure: every progress is checked through ``result_code``.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from labctl.errors import BackendUnavailable, LabctlError, OperationFailed
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
from labctl.hypervisor.vbox_versions import ApiDialect, dialect_for
from labctl.profile import Profile

INSTALL_HINT = "pip install 'labctl[virtualbox]' (pyvbox) and VirtualBox with its SDK (vboxapi)"
# AdditionsFacilityType.VBoxService, AdditionsFacilityStatus.Active (same in 6.1 and 7.x)
_FACILITY_VBOXSERVICE = 100
_FACILITY_ACTIVE = 50
# ProcessStatus Starting, Started, Paused, Terminating (same in 6.1 and 7.x)
_PROCESS_RUNNING = {10, 100, 110, 480}
USE_VBOXMANAGE = 'set driver = "vboxmanage" under [lab.virtualbox]'


# adapters labctl reads (the PIIX3 chipset's count; ICH9 has more, labs use the first ones)
_ADAPTERS = 8


class PyVBoxHypervisor:
    """The Hypervisor protocol (and VirtualBoxDetails) on top of pyvbox.

    Args:
        lab: the lab's name, written to every VM labctl creates (extra data ``labctl/lab``).
        nic: 1-based adapter that carries the lab network (the API's slot is nic - 1).
        profile: the profile, for guest credentials; None = exec unavailable.
        why: why this driver is in use (doctor and status say it).
    """

    name = "pyvbox"

    def __init__(
        self, lab: str, *, nic: int = 1, profile: Profile | None = None,
        why: str = "chosen by the caller",
    ) -> None:  # fmt: skip
        self.lab = lab
        self.why = why
        self.nic = nic
        self._profile = profile
        self._api: Any = None
        self._dialect: ApiDialect | None = None
        self._module: ModuleType | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _virtualbox(self) -> ModuleType:
        if self._module is None:
            try:
                self._module = importlib.import_module("virtualbox")
            except ImportError as exc:
                raise BackendUnavailable(
                    f"pyvbox is not installed: {exc}", hint=INSTALL_HINT
                ) from exc
        return self._module

    def _vbox(self) -> Any:
        """The IVirtualBox object, after checking that labctl knows the running API version."""
        if self._api is not None:
            return self._api
        vb = self._virtualbox()
        try:
            api = vb.VirtualBox()
            version = str(api.version)
        except ImportError as exc:
            raise BackendUnavailable(
                f"pyvbox cannot reach VirtualBox: its SDK (vboxapi) is missing: {exc}",
                hint=f"install VirtualBox with its SDK (Debian: virtualbox), or {USE_VBOXMANAGE}",
            ) from exc
        except Exception as exc:
            raise BackendUnavailable(
                f"pyvbox cannot reach VirtualBox: {exc}",
                hint=f"check that VirtualBox runs for this user, or {USE_VBOXMANAGE}",
            ) from exc
        self._dialect = dialect_for(version)
        self._api = api
        return api

    def dialect(self) -> ApiDialect:
        """The running VirtualBox API's dialect (connects first)."""
        self._vbox()
        assert self._dialect is not None
        return self._dialect

    def _lib(self) -> Any:
        return self._virtualbox().library

    @contextmanager
    def _wrap(self, what: str) -> Iterator[None]:
        """Turn pyvbox/VirtualBox exceptions into OperationFailed naming the operation."""
        try:
            yield
        except LabctlError:
            raise
        except Exception as exc:
            raise OperationFailed(f"VirtualBox: {what} failed: {exc}") from exc

    def _check_progress(self, progress: Any, what: str) -> None:
        # waitForCompletion(-1) can return before the end (real 7.2: powering off a VM whose
        # process is the driverless frontend), and result_code then fails with "operation is
        # still in progress": wait until the progress says it completed
        progress.wait_for_completion(-1)
        while not progress.completed:
            progress.wait_for_completion(500)
        if progress.result_code != 0:
            text = ""
            try:
                text = progress.error_info.text
            except Exception:  # error_info may be null
                text = ""
            raise OperationFailed(
                f"VirtualBox: {what} failed (result code 0x{progress.result_code & 0xFFFFFFFF:x})"
                + (f": {text}" if text else "")
            )

    def _find(self, name: str) -> Any | None:
        vbox = self._vbox()
        lib = self._lib()
        try:
            return vbox.find_machine(name)
        except lib.VBoxErrorObjectNotFound:
            return None
        except Exception as exc:
            raise OperationFailed(f"VirtualBox: looking up {name!r} failed: {exc}") from exc

    def _require(self, name: str) -> Any:
        machine = self._find(name)
        if machine is None:
            raise OperationFailed(f"no VirtualBox machine named {name!r}")
        return machine

    def _state(self, machine: Any) -> MachineState:
        # int(): pyvbox's enum would name the value with 6.1's numbering
        return state_from_name(self.dialect().state_name(int(machine.state)), machine.name)

    def _nics(self, machine: Any) -> tuple[Nic, ...]:
        """Every enabled adapter, decoded with the running API's numbering."""
        dialect = self.dialect()
        nics = []
        for index in range(_ADAPTERS):
            adapter = machine.get_network_adapter(index)
            if not adapter.enabled:
                continue
            attachment = dialect.attachment_name(int(adapter.attachment_type))
            driver = str(adapter.generic_driver) if attachment == "generic" else None
            nics.append(
                Nic(
                    slot=index + 1,
                    attachment=attachment,
                    mac=str(adapter.mac_address),
                    cable=bool(adapter.cable_connected),
                    driver=driver,
                    network=self._nic_network(adapter, attachment),
                )
            )
        return tuple(nics)

    @staticmethod
    def _nic_network(adapter: Any, attachment: str) -> str | None:
        if attachment == "generic":
            values, names = adapter.get_properties("")
            props = dict(zip(names, values, strict=True))
            return props.get("network") or props.get("dest") or None
        attribute = {
            "intnet": "internal_network", "natnetwork": "nat_network",
            "hostonly": "host_only_interface", "bridged": "bridged_interface",
        }.get(attachment)  # fmt: skip
        return (str(getattr(adapter, attribute)) or None) if attribute else None

    @contextmanager
    def _session(self, machine: Any, *, write: bool = False) -> Iterator[Any]:
        lib = self._lib()
        session = self._virtualbox().Session()
        lock = lib.LockType.write if write else lib.LockType.shared
        # IMachine.lock_machine directly: pyvbox's create_session() helper sleeps and retries.
        machine.lock_machine(session, lock)
        try:
            yield session
        finally:
            session.unlock_machine()

    def _on_console(self, name: str, what: str, action: Callable[[Any], Any]) -> None:
        machine = self._require(name)
        with self._wrap(f"{what} {name}"), self._session(machine) as session:
            result = action(session.console)
            if result is not None and hasattr(result, "wait_for_completion"):  # a progress
                self._check_progress(result, f"{what} {name}")

    # -- Hypervisor -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise BackendUnavailable unless pyvbox reaches a VirtualBox 6.x through its SDK."""
        self._vbox()

    def inspect(self, name: str) -> Machine:
        """The VM's state (ABSENT when not registered) and whether labctl created it."""
        machine = self._find(name)
        if machine is None:
            return Machine(name, MachineState.ABSENT)
        with self._wrap(f"reading {name}"):
            managed = machine.get_extra_data(TAG_KEY) == self.lab
            return Machine(name, self._state(machine), None, managed, self._nics(machine))

    def list(self) -> list[Machine]:
        """Every registered VM tagged with this lab's name."""
        vbox = self._vbox()
        with self._wrap("listing machines"):
            return [
                Machine(m.name, self._state(m), None, True, self._nics(m))
                for m in vbox.machines
                if m.get_extra_data(TAG_KEY) == self.lab
            ]

    def clone(self, source: str, target: str, *, linked: bool = False) -> None:
        """IMachine.clone_to into a new machine with new MACs, tagged, cable disconnected,
        serial log files of its own.

        A linked clone is made from the snapshot ``labctl-base`` of the source, taken once
        when missing. Any failure unregisters and deletes what was created.
        """
        vbox = self._vbox()
        lib = self._lib()
        if self._find(target) is not None:
            raise OperationFailed(f"cannot clone onto {target!r}: a VM of that name exists")
        src = self._require(source)
        with self._wrap(f"cloning {source} to {target}"):
            base, options = src, []
            if linked:
                base = self._base_snapshot(src).machine
                options = [lib.CloneOptions.link]
            new = self._create_machine(target, src)
            try:
                progress = base.clone_to(new, lib.CloneMode.machine_state, options)
                self._check_progress(progress, f"cloning {source} to {target}")
            except Exception:
                # the new machine is not registered yet: drop whatever files the clone wrote
                with contextlib.suppress(Exception):
                    new.delete_config([])
                raise
            vbox.register_machine(new)
        try:
            with self._wrap(f"preparing clone {target}"):
                new = self._require(target)
                # extra data through the session's machine: on 7.x the registered machine
                # object is immutable ("Cannot set extradata for an immutable machine")
                with self._session(new, write=True) as session:
                    # a saved source's memory image was copied: the standby boots cold
                    if self.dialect().state_name(int(new.state)) in SAVED_STATES:
                        session.machine.discard_saved_state(True)
                    session.machine.set_extra_data(TAG_KEY, self.lab)
                    session.machine.set_extra_data(LINK_KEY, "off")
                    session.machine.get_network_adapter(self.nic - 1).cable_connected = False
                    self._own_serial_logs(session.machine, source, target)
                    session.machine.save_settings()
        except OperationFailed:
            self._delete(target)
            raise

    def _own_serial_logs(self, machine: Any, source: str, target: str) -> None:
        """The clone's file-mode serial ports get files of their own (clone_to copies the
        source's path: both machines would write one log)."""
        raw_file = int(self._lib().PortMode.raw_file)
        for slot in range(SERIAL_PORTS):
            port = machine.get_serial_port(slot)
            if port.enabled and int(port.host_mode) == raw_file and port.path:
                port.path = own_serial_log(port.path, source, target)

    def _create_machine(self, name: str, like: Any) -> Any:
        """A new, unregistered machine named ``name`` with ``like``'s OS type."""
        vbox, dialect = self._vbox(), self.dialect()
        settings = vbox.compose_machine_filename(name, "", "", "")
        if dialect.native:
            return vbox.create_machine(settings, name, [], like.os_type_id, "")
        # pyvbox passes 6.1's five parameters: call the raw interface with this version's
        platform = None
        if (dialect.major, dialect.minor) >= (7, 1):
            platform = int(like._i.platform.architecture)
        args = dialect.create_machine_args(settings, name, like.os_type_id, platform=platform)
        return self._lib().IMachine(vbox._i.createMachine(*args))

    def _base_snapshot(self, src: Any) -> Any:
        lib = self._lib()
        try:
            return src.find_snapshot(BASE_SNAPSHOT)
        except lib.VBoxErrorObjectNotFound:
            pass
        # live (pause=False) only on a running source, so production never pauses; a stopped
        # one refuses a live snapshot ("Cannot take a live snapshot ... unless it is running")
        live = self._state(src) is MachineState.RUNNING
        with self._session(src) as session:
            progress, _snapshot_id = session.machine.take_snapshot(
                BASE_SNAPSHOT, "base of labctl's linked clones", not live
            )
            self._check_progress(progress, f"snapshot of {src.name}")
        return src.find_snapshot(BASE_SNAPSHOT)

    def _delete(self, name: str) -> None:
        machine = self._find(name)
        if machine is None:
            return
        lib = self._lib()
        with self._wrap(f"deleting {name}"):
            media = machine.unregister(lib.CleanupMode.full)
            self._check_progress(machine.delete_config(media), f"deleting {name}")

    def start(self, name: str) -> None:
        """launch_vm_process(headless) after applying the remembered link state; on a
        driverless host (``lab.virtualbox.driverless``) ``vboxmanage startvm`` instead, the
        only way such a host powers VMs on."""
        machine = self._require(name)
        state = self._state(machine)
        if state is MachineState.RUNNING:
            return
        if state is MachineState.PAUSED:
            raise OperationFailed(f"{name} is paused; resume it instead of starting it")
        with self._wrap(f"starting {name}"):
            link = machine.get_extra_data(LINK_KEY)
            if link in ("on", "off"):
                with self._session(machine, write=True) as session:
                    adapter = session.machine.get_network_adapter(self.nic - 1)
                    adapter.cable_connected = link == "on"
                    session.machine.save_settings()
            if self._profile is not None and self._profile.lab.virtualbox.driverless:
                self._start_with_vboxmanage(name)
                return
            session = self._virtualbox().Session()
            progress = machine.launch_vm_process(session, "headless", [])
            try:
                self._check_progress(progress, f"starting {name}")
            except OperationFailed as exc:
                raise start_failed(name, exc.message, self._profile) from exc
            finally:
                # a launch that failed leaves the session unlocked: don't mask its error
                with contextlib.suppress(Exception):
                    session.unlock_machine()

    def _start_with_vboxmanage(self, name: str) -> None:
        assert self._profile is not None
        argv = [self._profile.lab.virtualbox.vboxmanage, "startvm", name, "--type", "headless"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=self._profile.timeouts.boot)  # fmt: skip
        except FileNotFoundError as exc:
            raise BackendUnavailable(f"{argv[0]} not found (lab.virtualbox.vboxmanage)") from exc
        except subprocess.TimeoutExpired as exc:
            raise start_failed(name, f"{argv[0]} startvm took over timeouts.boot "
                               f"({self._profile.timeouts.boot:g} s)", self._profile) from exc
        if done.returncode != 0:
            detail = next((ln.removeprefix("VBoxManage: error: ") for ln in
                           done.stderr.splitlines() if ln.strip()), f"exit {done.returncode}")
            raise start_failed(name, detail, self._profile)

    def stop(self, name: str, *, hard: bool = False) -> None:
        """power_down (hard) or power_button (graceful, returns before the guest is down)."""
        state = self._state(self._require(name))
        if state is MachineState.STOPPED:
            return
        if not hard and state is MachineState.PAUSED:
            raise OperationFailed(f"{name} is paused: a frozen guest cannot handle ACPI")
        if hard:
            self._on_console(name, "powering off", lambda console: console.power_down())
        else:
            self._on_console(name, "ACPI shutdown of", lambda console: console.power_button())

    def pause(self, name: str) -> None:
        """IConsole.pause; no-op when already paused."""
        state = self._state(self._require(name))
        if state is MachineState.PAUSED:
            return
        if state is not MachineState.RUNNING:
            raise OperationFailed(f"cannot pause {name}: it is {state}")
        self._on_console(name, "pausing", lambda console: console.pause())

    def resume(self, name: str) -> None:
        """IConsole.resume; no-op when already running."""
        state = self._state(self._require(name))
        if state is MachineState.RUNNING:
            return
        if state is not MachineState.PAUSED:
            raise OperationFailed(f"cannot resume {name}: it is {state}")
        self._on_console(name, "resuming", lambda console: console.resume())

    def set_link(self, name: str, up: bool) -> None:
        """INetworkAdapter.cable_connected, live on a running VM; remembered for next start."""
        machine = self._require(name)
        running = self._state(machine) is not MachineState.STOPPED
        with (
            self._wrap(f"setting the link of {name}"),
            self._session(machine, write=not running) as session,
        ):
            session.machine.set_extra_data(LINK_KEY, "on" if up else "off")
            session.machine.get_network_adapter(self.nic - 1).cable_connected = up
            session.machine.save_settings()

    def exec_in_guest(self, name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        """IGuestSession.execute on a running VM (Guest Additions and guest credentials)."""
        if not argv:
            raise OperationFailed("exec_in_guest needs a command")
        if self._profile is None:
            raise OperationFailed("exec_in_guest needs the profile's guest credentials")
        user, password = guest_credentials(self._profile)
        machine = self._require(name)
        state = self._state(machine)
        if state is not MachineState.RUNNING:
            raise OperationFailed(f"cannot run a command in {name}: it is {state}")
        run = guest_argv(argv)
        with self._wrap(f"running {argv[0]} in {name}"), self._session(machine) as session:
            guest_session = self._open_guest_session(name, session.console.guest, user, password)
            try:
                if self.dialect().native:
                    process, out, err = guest_session.execute(
                        run[0], run[1:], timeout_ms=int(timeout * 1000)
                    )
                else:
                    process, out, err = self._execute_7(guest_session, run, timeout)
            finally:
                guest_session.close()
            return ExecResult(
                tuple(argv),
                int(process.exit_code),
                bytes(out).decode(errors="replace"),
                bytes(err).decode(errors="replace"),
            )

    def _execute_7(
        self, guest_session: Any, argv: Sequence[str], timeout: float
    ) -> tuple[Any, bytes, bytes]:
        """IGuestSession.processCreateEx with 7.x's parameters (pyvbox passes 6.1's: 7.0
        added the working directory), then read stdout/stderr until the process ends."""
        lib = self._lib()
        args = self.dialect().process_create_args(list(argv), int(timeout * 1000))
        process = lib.IGuestProcess(guest_session._i.processCreateEx(*args))
        process.wait_for(int(lib.ProcessWaitResult.start), int(timeout * 1000))
        out: list[bytes] = []
        err: list[bytes] = []

        def drain() -> None:
            for handle, into in ((1, out), (2, err)):
                data = process.read(handle, 65536, 0)
                into.append(data.encode() if isinstance(data, str) else bytes(data))

        while int(process.status) in _PROCESS_RUNNING:
            process.wait_for(int(lib.ProcessWaitResult.terminate), 500)
            drain()
        drain()
        return process, b"".join(out), b"".join(err)

    def _open_guest_session(self, name: str, guest: Any, user: str, password: str) -> Any:
        """IGuest.createSession, then wait for it to start up to ``timeouts.guest``.

        pyvbox's own ``create_session`` gives a session 5 s to start; a loaded or interpreted
        guest takes far longer (25-73 s measured), and a session given up on still starts later
        and then fails. One session is opened and waited for, never retried blindly.
        """
        assert self._profile is not None
        deadline = self._profile.timeouts.guest
        lib = self._lib()
        # Until VBoxService runs, a new session fails at once ("The guest execution service is
        # not ready (yet)") and still counts against the guest's 32 sessions, close() or not:
        # retrying opens no session before the service is active. The run level cannot tell:
        # a guest kernel's built-in vboxguest driver reports "System" a minute into the boot.
        status, _when = guest.get_facility_status(
            lib.AdditionsFacilityType(_FACILITY_VBOXSERVICE)
        )
        if int(status) != _FACILITY_ACTIVE:
            raise OperationFailed(f"{name}: its Guest Additions service is not running (yet)")
        # IGuest.createSession itself (library.IGuest is pyvbox's extension class)
        session = lib.IGuestSession(
            guest._call("createSession", in_p=[user, password, "", "labctl"])
        )
        session.wait_for(int(lib.GuestSessionWaitForFlag.start), int(deadline * 1000))
        status = session.status
        if status == lib.GuestSessionStatus.started:
            return session
        with contextlib.suppress(Exception):
            session.close()
        raise OperationFailed(
            f"{name}: the guest-control session did not start within timeouts.guest "
            f"({deadline:g} s; status {status})",
            hint="check that the Guest Additions service (VBoxService) runs in the guest, or "
            "raise timeouts.guest",
        )

    def destroy(self, name: str) -> None:
        """Power off if needed, unregister (CleanupMode.full) and delete_config. Tagged only."""
        machine = self._find(name)
        if machine is None:
            return
        with self._wrap(f"reading {name}"):
            tag = machine.get_extra_data(TAG_KEY)
        if tag != self.lab:
            raise OperationFailed(
                f"refusing to destroy {name}: labctl did not create it for lab {self.lab!r} "
                f"(extra data {TAG_KEY} is {tag or None!r})"
            )
        with self._wrap(f"reading the disks of {name}"):
            hard_disk = int(self._lib().DeviceType.hard_disk)  # not a DVD (installer ISO)
            attached = [
                str(a.medium.id_p) for a in machine.medium_attachments
                if a.medium is not None and int(a.type_p) == hard_disk
            ]  # fmt: skip
            in_use = disks_used_elsewhere(str(machine.id_p), attached, self._medium)
        refuse_if_disks_used_elsewhere(name, in_use)
        if self._state(machine) is not MachineState.STOPPED:
            self._on_console(name, "powering off", lambda console: console.power_down())
        self._delete(name)

    def _medium(self, uuid: str) -> MediumFacts:
        vbox, lib = self._vbox(), self._lib()
        medium = vbox.open_medium(uuid, lib.DeviceType.hard_disk, lib.AccessMode.read_only, False)
        users = []
        for machine_id in medium.machine_ids:
            users.append((str(machine_id), str(vbox.find_machine(machine_id).name)))
        own = str(medium.id_p)
        # pyvbox wraps a base disk's null parent in an object that fails on use: ask base
        is_base = str(medium.base.id_p) == own
        return MediumFacts(
            uuid=own,
            location=str(medium.location),
            users=tuple(users),
            parent=None if is_base else str(medium.parent.id_p),
            children=tuple(str(child.id_p) for child in medium.children),
        )

    # -- VirtualBoxDetails ------------------------------------------------------------------

    def nic_attachment(self, name: str) -> str:
        """The lab NIC's attachment, named as VBoxManage names it (nat, intnet, ...)."""
        machine = self._require(name)
        with self._wrap(f"reading the NIC of {name}"):
            adapter = machine.get_network_adapter(self.nic - 1)
            if not adapter.enabled:
                return "none"
            return self.dialect().attachment_name(int(adapter.attachment_type))

    def guest_additions(self, name: str) -> str | None:
        """IGuest.additions_version of the running guest; None when absent or not running."""
        machine = self._require(name)
        if self._state(machine) is MachineState.STOPPED:
            return None
        with self._wrap(f"reading Guest Additions of {name}"), self._session(machine) as session:
            version = str(session.console.guest.additions_version or "")
        return version or None

    def host_report(self) -> VirtualBoxHost:
        """IVirtualBox.version, this driver and why, and whether VMs can start here."""
        return VirtualBoxHost(
            self.dialect().version, self.name, self.why, start_blocker(self._profile)
        )


def from_profile(profile: Profile) -> PyVBoxHypervisor:
    """The backend for ``lab.virtualbox.driver = "pyvbox"``."""
    return PyVBoxHypervisor(
        profile.lab.name, nic=profile.lab.virtualbox.nic, profile=profile,
        why=resolve_driver(profile)[1],
    )  # fmt: skip
