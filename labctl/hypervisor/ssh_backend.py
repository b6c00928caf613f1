"""The ssh backend: existing machines (bare metal, cloud VMs, someone else's hypervisor).

There is no hypervisor: labctl reaches the machines only over SSH, so everything that works
inside a machine works (provision, verify, doctor, drills that stop or kill keepalived, drop
VRRP with nftables in the guests, or fail the health check), and everything that needs the
machine's outside does not. Each of those operations raises BackendUnavailable (exit 4) with
one sentence saying why and what to use instead. ``inspect`` tells what a TCP connection can:
a machine whose SSH port answers with an SSH banner is running; any other machine is
unreachable (stopped, absent or cut off look the same from here).

Mechanism only, like every backend: one probe per call, no retries.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from labctl.errors import BackendUnavailable
from labctl.hypervisor import ExecResult, Machine, MachineState
from labctl.profile import Profile, host_ip

# (name, address) -> (host, port) actually dialled: ~/.ssh/config may redirect a name
Resolve = Callable[[str, str], tuple[str, int]]

PROBE_TIMEOUT = 2.0

_WHY = 'lab.backend "ssh" reaches existing machines only over SSH, with no hypervisor'

# operation -> (what it needs, what to do instead)
_UNSUPPORTED: dict[str, tuple[str, str]] = {
    "clone": (
        "clone copies a machine's disk",
        "create the standby where your machines run (with its own hostname, machine-id and SSH "
        "host keys), add its address to the profile, then run labctl provision pair",
    ),
    "up": (
        "up creates and boots machines",
        "start the machines where they run (their hypervisor, cloud console or power button); "
        "labctl status shows which answer SSH",
    ),
    "start": (
        "starting a machine needs its hypervisor",
        "start it where it runs (its hypervisor, cloud console or power button)",
    ),
    "down": (
        "down powers machines off",
        "shut them down where they run (e.g. ssh HOST sudo poweroff); to stop only keepalived "
        "use labctl failover PAIR --fault stop",
    ),
    "stop": (
        "powering a machine off needs its hypervisor",
        "use labctl failover PAIR --fault stop or --fault crash (keepalived stopped or killed)",
    ),
    "destroy": (
        "destroy deletes machines labctl created, and it created none here",
        "delete the machines where they run; labctl leaves them alone",
    ),
    "pause": (
        "--fault freeze pauses the whole machine from outside",
        "use --fault crash (keepalived killed) or --fault partition (VRRP dropped by nftables "
        "inside both machines)",
    ),
    "resume": (
        "resuming a paused machine needs its hypervisor",
        "resume it where it runs",
    ),
    "set_link": (
        "--fault link unplugs the machine's network cable from outside",
        "use --fault partition (VRRP dropped by nftables inside both machines, SSH kept) or "
        "--fault crash",
    ),
    "exec_in_guest": (
        "a side channel into the guest needs its hypervisor",
        "labctl uses SSH for everything on this backend",
    ),
}
_ALIASES = {"freeze": "pause", "link": "set_link"}


def from_profile(profile: Profile) -> SshBackend:
    """The registry's factory (``labctl.hypervisor.ssh_backend:from_profile``)."""

    def resolve(name: str, address: str) -> tuple[str, int]:
        # the host and port a login would use (explicit [ssh] keys, then ~/.ssh/config)
        from labctl.ops.connect import endpoint_for

        endpoint = endpoint_for(profile, name, address)
        return endpoint.host, endpoint.port

    return SshBackend(profile, resolve=resolve)


class SshBackend:
    """Existing machines, addressed only by SSH.

    Args:
        profile: the lab profile (machine and standby addresses, ``ssh.port``).
        resolve: where to dial a machine; defaults to its profile address and ``ssh.port``.
        timeout: seconds one probe of ``inspect`` may take.
    """

    name = "ssh"

    def __init__(
        self, profile: Profile, *, resolve: Resolve | None = None, timeout: float = PROBE_TIMEOUT
    ) -> None:
        self.profile = profile
        self.timeout = min(timeout, profile.timeouts.connect)
        port = profile.ssh.port
        self._resolve = resolve or (lambda _name, address: (str(host_ip(address)), port))
        self._addresses = {name: address for name, address, _ in profile.all_nodes()}

    def unsupported(self, operation: str) -> BackendUnavailable | None:
        """The exit-4 error for an operation that needs a hypervisor; None for the others."""
        key = _ALIASES.get(operation, operation)
        if key not in _UNSUPPORTED:
            return None
        needs, instead = _UNSUPPORTED[key]
        return BackendUnavailable(f"{needs}, and {_WHY}: {instead}")

    def _refuse(self, operation: str) -> BackendUnavailable:
        error = self.unsupported(operation)
        assert error is not None
        return error

    def check(self) -> None:
        """Nothing to check on this host: SSH (paramiko) is part of labctl."""

    def inspect(self, name: str) -> Machine:
        """RUNNING when the machine's SSH port answers with an SSH banner, else UNREACHABLE.

        A name the profile does not know is ABSENT (labctl has nothing to dial).
        """
        address = self._addresses.get(name)
        if address is None:
            return Machine(name, MachineState.ABSENT)
        host, port = self._resolve(name, address)
        state = MachineState.RUNNING if self._answers(host, port) else MachineState.UNREACHABLE
        return Machine(name, state, address=str(host_ip(address)), managed=False)

    def _answers(self, host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=self.timeout) as sock:
                sock.settimeout(self.timeout)
                return sock.recv(256).startswith(b"SSH-")
        except OSError:
            return False

    def list(self) -> list[Machine]:
        """labctl created no machine of an ssh lab."""
        return []

    def clone(self, source: str, target: str, *, linked: bool = False) -> None:
        raise self._refuse("clone")

    def start(self, name: str) -> None:
        raise self._refuse("start")

    def stop(self, name: str, *, hard: bool = False) -> None:
        raise self._refuse("stop")

    def pause(self, name: str) -> None:
        raise self._refuse("pause")

    def resume(self, name: str) -> None:
        raise self._refuse("resume")

    def set_link(self, name: str, up: bool) -> None:
        raise self._refuse("set_link")

    def exec_in_guest(self, name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        raise self._refuse("exec_in_guest")

    def destroy(self, name: str) -> None:
        raise self._refuse("destroy")
