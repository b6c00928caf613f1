"""The backend check: the profile's hypervisor loads and can run on this host."""

from __future__ import annotations

from collections.abc import Callable

from labctl.errors import LabctlError
from labctl.hypervisor import KERNEL_DRIVER_HINT, Hypervisor, VirtualBoxDetails
from labctl.ops.doctor.report import Check, Status


def check(factory: Callable[[], Hypervisor]) -> tuple[Hypervisor | None, list[Check]]:
    """The usable hypervisor (None when it is not) and the checks saying so."""
    try:
        hv = factory()
        hv.check()
    except LabctlError as exc:
        return None, [
            Check(
                "lab",
                "backend",
                Status.FAIL,
                exc.message,
                exc.hint or "install what the backend needs (scripts/bootstrap)",
            )
        ]
    found = [Check("lab", "backend", Status.OK, f"{hv.name} usable on this host")]
    if isinstance(hv, VirtualBoxDetails):
        found += virtualbox_host(hv)
    return hv, found


def virtualbox_host(hv: VirtualBoxDetails) -> list[Check]:
    """Which VirtualBox, through which driver, and whether its VMs can start here."""
    try:
        host = hv.host_report()
    except LabctlError as exc:
        return [Check("lab", "virtualbox", Status.WARN, f"cannot read its version: {exc.message}")]
    detail = f"VirtualBox {host.version} via {host.driver} ({host.why})"
    found = [Check("lab", "virtualbox", Status.OK, detail)]
    if host.start_blocker is None:
        found.append(Check("lab", "vm start", Status.OK, "VirtualBox's kernel driver is loaded"))
    else:
        found.append(
            Check("lab", "vm start", Status.FAIL, host.start_blocker, KERNEL_DRIVER_HINT)
        )
    return found
