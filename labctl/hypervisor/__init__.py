"""The Hypervisor interface (mechanism only) and the lazy backend registry.

A backend does one thing per call and returns: no sleeping, no retries, no policy. Waiting and
ordering belong to ``labctl.ops``. The interface maps one to one onto VirtualBox
(clonevm, startvm --type headless, controlvm acpipowerbutton/poweroff/pause/resume/
setlinkstateN, guestcontrol run, unregistervm --delete) and onto the nspawn lab.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from labctl.errors import BackendUnavailable

if TYPE_CHECKING:
    from labctl.profile import Profile


class MachineState(enum.StrEnum):
    """What a machine is doing, as the hypervisor sees it."""

    ABSENT = "absent"
    STOPPED = "stopped"
    RUNNING = "running"
    PAUSED = "paused"
    # the backend cannot see the machine itself and the machine did not answer (ssh backend)
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Nic:
    """One enabled network adapter of a machine, as the hypervisor reports it (VirtualBox).

    Attributes:
        slot: 1-based adapter number (VBoxManage's N in ``--nicN``).
        attachment: how it is attached, named as VBoxManage names it: null, nat, natnetwork,
            bridged, intnet, hostonly, hostonlynet, generic, cloud.
        mac: its MAC address, 12 upper-case hex digits as VirtualBox stores it.
        cable: whether its cable is connected.
        driver: for ``generic``: the generic driver (VDE, UDPTunnel); else None.
        network: what it is attached to when the backend can tell: the internal or NAT network
            name, the host-only or bridged host interface, the VDE switch; else None.
    """

    slot: int
    attachment: str
    mac: str
    cable: bool
    driver: str | None = None
    network: str | None = None

    def describe(self) -> str:
        """``generic (VDE)``, ``intnet (labnet)``, ``nat``: the attachment as users name it."""
        detail = self.driver if self.attachment == "generic" else self.network
        return f"{self.attachment} ({detail})" if detail else self.attachment


@dataclass(frozen=True)
class Machine:
    """A machine as the hypervisor reports it.

    Attributes:
        name: the machine's name in the hypervisor (the profile's machine name).
        state: what it is doing now.
        address: its IPv4 address on the lab network when the backend knows it, else None.
        managed: True when labctl created it (only such machines may be destroyed).
        nics: its enabled network adapters, where the backend has such a notion (VirtualBox);
            empty otherwise.
        link_up: whether its lab network cable is connected; None when the backend cannot
            tell (it is then treated as connected).
    """

    name: str
    state: MachineState
    address: str | None = None
    managed: bool = False
    nics: tuple[Nic, ...] = ()
    link_up: bool | None = None


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a command run through the hypervisor's side channel."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str


@runtime_checkable
class Hypervisor(Protocol):
    """Mechanism to drive lab machines. Implementations: nspawn, vboxmanage, pyvbox, ssh."""

    name: str

    def check(self) -> None:
        """Raise BackendUnavailable (with an install hint) if this host cannot run the backend."""

    def inspect(self, name: str) -> Machine:
        """The machine's state; state ABSENT when no such machine exists."""

    def list(self) -> list[Machine]:
        """Every machine this backend created for the lab (managed=True)."""

    def clone(self, source: str, target: str, *, linked: bool = False) -> None:
        """Create ``target`` as a copy of stopped-or-running ``source``'s disk, not started.

        The clone gets a new MAC. Its link starts disconnected (see set_link) so that it does
        not touch the lab network with the source's identity. A failure leaves no target behind.
        """

    def start(self, name: str) -> None:
        """Boot the machine (headless). Returns once it is started, not once it answers."""

    def stop(self, name: str, *, hard: bool = False) -> None:
        """Shut down: graceful = ACPI power button / poweroff; hard = pull the plug."""

    def pause(self, name: str) -> None:
        """Freeze every process of the machine; it answers nothing until resumed."""

    def resume(self, name: str) -> None:
        """Thaw a paused machine."""

    def set_link(self, name: str, up: bool) -> None:
        """Connect or disconnect the machine's lab network cable; processes keep running.

        Applies to a running machine at once and is remembered for the next start.
        """

    def exec_in_guest(self, name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        """Run argv as root inside the guest without using the guest's network.

        Works on a running machine (nspawn: nsenter; VirtualBox: guestcontrol). Backends that
        can edit a stopped machine's disk (nspawn) also run it there, in a chroot.
        """

    def destroy(self, name: str) -> None:
        """Stop if needed and delete the machine and its disks. Refuses unmanaged machines."""


@runtime_checkable
class VirtualBoxDetails(Protocol):
    """What only VirtualBox backends can tell; `labctl doctor` uses it when available."""

    def nic_attachment(self, name: str) -> str:
        """Attachment of the lab NIC: nat, natnetwork, bridged, intnet, hostonly, null, ..."""

    def guest_additions(self, name: str) -> str | None:
        """Guest Additions version reported by the running guest, or None when absent."""

    def host_report(self) -> VirtualBoxHost:
        """What VirtualBox this host runs, through which driver, and whether VMs can start."""


@dataclass(frozen=True)
class VirtualBoxHost:
    """The VirtualBox installation a driver talks to.

    Attributes:
        version: VirtualBox's version (``7.2.22_Debian``).
        driver: the labctl driver in use (vboxmanage, pyvbox).
        why: why that driver (the profile names it, or what ``driver = "auto"`` found).
        start_blocker: why no VM can start on this host (the kernel driver is missing), or None.
    """

    version: str
    driver: str
    why: str
    start_blocker: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "driver": self.driver,
            "why": self.why,
            "vms_can_start": self.start_blocker is None,
            "start_blocker": self.start_blocker,
        }


def require_startable(hv: Hypervisor) -> None:
    """Raise BackendUnavailable (exit 4) before anything is made when VMs cannot start here."""
    if isinstance(hv, VirtualBoxDetails):
        report = hv.host_report()
        if report.start_blocker is not None:
            raise BackendUnavailable(report.start_blocker, hint=KERNEL_DRIVER_HINT)


KERNEL_DRIVER_HINT = (
    "load VirtualBox's kernel driver: sudo modprobe vboxdrv (after a kernel update, reinstall "
    "virtualbox-dkms or run /sbin/vboxconfig), then check with labctl doctor"
)


@runtime_checkable
class VrrpPartitioner(Protocol):
    """Backends that can cut VRRP between two machines on the wire (nspawn: nftables on the
    lab bridge) while both stay reachable over SSH. Drills fall back to in-guest rules."""

    def block_vrrp(self, a: str, b: str) -> None:
        """Drop IP protocol 112 between machines a and b, both directions."""

    def unblock_vrrp(self, a: str, b: str) -> None:
        """Remove what block_vrrp(a, b) added; a no-op when nothing is blocked."""


@runtime_checkable
class PartialBackend(Protocol):
    """Backends that implement only part of the Hypervisor (ssh: no hypervisor at all)."""

    def unsupported(self, operation: str) -> BackendUnavailable | None:
        """The error for an operation this backend cannot do (None when it can).

        ``operation``: a Hypervisor method name (clone, start, stop, pause, set_link, destroy,
        exec_in_guest) or a command that needs them (up, down).
        """


def require(hv: Hypervisor | None, operation: str) -> None:
    """Raise the backend's own BackendUnavailable when it cannot do ``operation``."""
    if isinstance(hv, PartialBackend):
        error = hv.unsupported(operation)
        if error is not None:
            raise error


# name -> "module:factory"; imported only when the backend is chosen, so a missing optional
# dependency (pyvbox) does not break the other backends.
BACKENDS: dict[str, str] = {
    "nspawn": "labctl.hypervisor.nspawn:from_profile",
    "vboxmanage": "labctl.hypervisor.vboxmanage:from_profile",
    "pyvbox": "labctl.hypervisor.pyvbox:from_profile",
    "ssh": "labctl.hypervisor.ssh_backend:from_profile",
}


def backend_name(profile: Profile) -> str:
    """The backend the profile selects (``driver = "auto"`` resolved on this host)."""
    if profile.lab.backend in ("nspawn", "ssh"):
        return profile.lab.backend
    from labctl.hypervisor.vbox_common import resolve_driver

    return resolve_driver(profile)[0]


def get_hypervisor(profile: Profile) -> Hypervisor:
    """Load the profile's backend lazily and return it (not yet checked: call .check())."""
    name = backend_name(profile)
    module_name, _, factory_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {name!r} cannot be loaded: {exc}",
            hint="pip install 'labctl[virtualbox]'" if name == "pyvbox" else None,
        ) from exc
    factory = getattr(module, factory_name)
    hypervisor: Hypervisor = factory(profile)
    return hypervisor
