"""What both VirtualBox backends share: tags, state names, guest credentials.

labctl marks every VM it creates with the extra-data key ``labctl/lab`` = the lab's name and
refuses to destroy anything without that mark. ``labctl/link`` remembers the last ``set_link``
so that ``start`` can apply it to the saved NIC setting (a live ``setlinkstate`` is not
guaranteed to outlive the running VM).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import BackendUnavailable, LabctlError, OperationFailed, ProfileError
from labctl.hypervisor import KERNEL_DRIVER_HINT, MachineState
from labctl.profile import Profile

# VMs need VirtualBox's kernel driver; its device node tells whether it is loaded.
KERNEL_DRIVER = Path("/dev/vboxdrv")
TAG_KEY = "labctl/lab"
LINK_KEY = "labctl/link"
BASE_SNAPSHOT = "labctl-base"
# a machine whose memory image is kept: starting it resumes, it does not boot
SAVED_STATES = frozenset({"saved", "abortedsaved"})

# VBoxManage's short state names (machineStateToName(..., fShort=true)); 7.x adds abortedsaved.
_STOPPED = {
    "poweroff", "saved", "aborted", "abortedsaved", "teleported",
    "snapshotting", "settingup", "restoringsnapshot", "deletingsnapshot",
}  # fmt: skip
_PAUSED = {"paused", "teleportingpausedvm", "deletingsnapshotlivepaused"}
_RUNNING = {
    "running", "starting", "stopping", "saving", "restoring", "livesnapshotting",
    "onlinesnapshotting", "teleporting", "teleportingin", "deletingsnapshotlive",
    "gurumeditation", "faulttolerantsyncing",
}  # fmt: skip


def state_from_name(name: str, vm: str) -> MachineState:
    """Map a VirtualBox machine state name (VBoxManage's short form) to labctl's four states.

    Transitional online states (starting, stopping, saving...) count as RUNNING: the VM process
    is up. Offline ones (snapshotting a stopped VM...) count as STOPPED.
    """
    if name in _RUNNING:
        return MachineState.RUNNING
    if name in _PAUSED:
        return MachineState.PAUSED
    if name in _STOPPED:
        return MachineState.STOPPED
    raise OperationFailed(f"{vm}: VirtualBox reports an unknown machine state {name!r}")


# serial ports a machine has in every VirtualBox version (ISystemProperties.serialPortCount)
SERIAL_PORTS = 4


def own_serial_log(path: str, source: str, clone: str) -> str:
    """The file a clone's serial port writes instead of its source's: clonevm copies the path,
    so production and its standby would write one log. Beside the source's file, named for the
    clone (``/logs/prod.log`` -> ``/logs/prod-standby.log``; a name without the source's gets
    the clone's as a prefix)."""
    cut = max(path.rfind("/"), path.rfind("\\")) + 1
    folder, base = path[:cut], path[cut:]
    return folder + (base.replace(source, clone, 1) if source in base else f"{clone}-{base}")


def guest_argv(argv: Sequence[str]) -> list[str]:
    """What guest control runs for ``argv``: Guest Additions start only an absolute path
    (a bare ``true`` fails in the guest with VERR_FILE_NOT_FOUND), so a bare command name is
    looked up on the guest's PATH by ``/usr/bin/env``."""
    if "/" in argv[0]:
        return list(argv)
    return ["/usr/bin/env", *argv]


def guest_credentials(profile: Profile) -> tuple[str, str]:
    """The guest account for guestcontrol: (user, password).

    The password comes from the environment variable named by
    ``lab.virtualbox.guest_password_env``; it is never stored in the profile or printed.
    """
    settings = profile.lab.virtualbox
    if settings.guest_user is None:
        raise ProfileError(
            "lab.virtualbox.guest_user: needed to run commands in a VirtualBox guest "
            "(guestcontrol)",
            hint="set guest_user (and guest_password_env) under [lab.virtualbox]",
        )
    if settings.guest_password_env is None:
        return settings.guest_user, ""
    password = os.environ.get(settings.guest_password_env)
    if password is None:
        raise ProfileError(
            f"lab.virtualbox.guest_password_env: environment variable "
            f"{settings.guest_password_env} is not set",
            hint=f"export {settings.guest_password_env}=<password of {settings.guest_user}>",
        )
    return settings.guest_user, password


def start_blocker(profile: Profile | None = None) -> str | None:
    """Why no VM can start on this host, or None: the kernel driver's device is missing, and
    the profile does not say that this host starts VMs in driverless mode
    (``lab.virtualbox.driverless``)."""
    if KERNEL_DRIVER.exists():
        return None
    if profile is not None and profile.lab.virtualbox.driverless:
        return None
    return (
        f"VirtualBox VMs cannot start on this host: its kernel driver is not loaded "
        f"({KERNEL_DRIVER} does not exist)"
    )


def start_failed(name: str, detail: str, profile: Profile | None = None) -> LabctlError:
    """The error for a VM that did not start: exit 4 when the kernel driver is missing."""
    blocker = start_blocker(profile)
    if blocker is not None:
        return BackendUnavailable(
            f"{name} did not start ({detail}): {blocker}", hint=KERNEL_DRIVER_HINT
        )
    return OperationFailed(f"{name} did not start: {detail}")


def resolve_driver(profile: Profile) -> tuple[str, str]:
    """The VirtualBox driver to use and why: the profile's choice, or what ``auto`` found.

    ``auto`` takes pyvbox when both VirtualBox's Python SDK (vboxapi) and pyvbox import in this
    Python, else VBoxManage.
    """
    driver = profile.lab.virtualbox.driver
    if driver != "auto":
        return driver, f'the profile sets driver = "{driver}"'
    missing = []
    for module, what in (
        ("vboxapi", "VirtualBox's Python SDK (vboxapi)"),
        ("virtualbox", "pyvbox"),
    ):
        try:
            importlib.import_module(module)
        except Exception:  # an SDK built for another Python can fail in many ways
            missing.append(what)
    if missing:
        return "vboxmanage", f"driver = auto: {' and '.join(missing)} not importable here"
    return "pyvbox", "driver = auto: vboxapi and pyvbox import here"


@dataclass(frozen=True)
class MediumFacts:
    """One disk image as VirtualBox's media registry describes it.

    Attributes:
        uuid: the medium's UUID.
        location: its file.
        users: (uuid, name) of every VM using it, in its current state or a snapshot.
        parent: the UUID of the medium it is a differencing image of, or None for a base disk.
        children: UUIDs of the differencing images made on top of it.
    """

    uuid: str
    location: str
    users: tuple[tuple[str, str], ...]
    parent: str | None
    children: tuple[str, ...]


def disks_used_elsewhere(
    vm_uuid: str, attached: list[str], facts: Callable[[str], MediumFacts]
) -> list[tuple[MediumFacts, list[str]]]:
    """Disks of the VM that another VM depends on: (disk, names of those VMs).

    Walks every disk only this VM uses (its attached disks, their snapshot ancestors and
    children) and reports those with a child another VM uses (a linked clone made from it):
    deleting such a VM cannot delete its disks, and VirtualBox would unregister it anyway.
    """
    found: list[tuple[MediumFacts, list[str]]] = []
    todo, seen = list(attached), set()
    while todo:
        medium = facts(todo.pop())
        if medium.uuid in seen or any(user != vm_uuid for user, _ in medium.users):
            continue  # a disk another VM also uses (production's, below a linked clone)
        seen.add(medium.uuid)
        others: list[str] = []
        for child_uuid in medium.children:
            child = facts(child_uuid)
            names = [name for user, name in child.users if user != vm_uuid]
            if names:
                others.extend(names)
            else:
                todo.append(child_uuid)
        if others:
            found.append((medium, sorted(set(others))))
        if medium.parent is not None:
            todo.append(medium.parent)
    return found


def refuse_if_disks_used_elsewhere(name: str, in_use: list[tuple[MediumFacts, list[str]]]) -> None:
    """OperationFailed naming the first disk another VM depends on; nothing was changed."""
    if not in_use:
        return
    disk, users = in_use[0]
    raise OperationFailed(
        f"refusing to destroy {name}: its disk {disk.location} is the base of "
        f"{', '.join(users)} (a linked clone made from it); nothing was changed",
        hint=f"destroy {', '.join(users)} first, or make it a full clone of its own",
    )
