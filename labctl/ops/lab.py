"""Lab lifecycle: base image, up, down, status, destroy, and the identity every machine gets.

Policy lives here (order, waiting, clean-up after failures); the hypervisor only does single
steps. Waiting uses tenacity under a deadline with an injectable ``sleep`` so unit tests with
fake hypervisors and fake probes run instantly.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from tenacity import (
    RetryError,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from labctl import paths
from labctl.errors import GuestUnreachable, OperationFailed
from labctl.hypervisor import Hypervisor, MachineState, require, require_startable
from labctl.hypervisor.nspawn_image import Image, ImageBuild, ensure_image
from labctl.ops.machines import lab_link_up
from labctl.profile import Profile, host_ip
from labctl.state import atomic_write, lab_lock

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
Sleep = Callable[[float], None]
Probe = Callable[[str, int, float], str]

# Written into every machine (new or cloned) while it is stopped, or through the side channel
# with its cable unplugged: hostname, machine-id, SSH host keys (all types), static address,
# the lab's SSH key for root and the profile's user. Prints the new public host keys.
IDENTITY_SCRIPT = r"""
set -eu
name=$1 address=$2 machine_id=$3 pubkey=$4 user=$5 interface=$6 live=${7:-}
printf '%s\n' "$name" > /etc/hostname
[ -f /etc/hosts ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    > /etc/hosts
sed -i '/^127\.0\.1\.1[[:space:]]/d' /etc/hosts
printf '127.0.1.1\t%s\n' "$name" >> /etc/hosts
printf '%s\n' "$machine_id" > /etc/machine-id
# new keys of the types the machine had (all three when it had none); an RSA key costs
# minutes on a slow (interpreted) guest, so a machine without one does not get one
types=$(for key in /etc/ssh/ssh_host_*_key; do [ -f "$key" ] || continue
    key=${key#/etc/ssh/ssh_host_}; printf '%s ' "${key%_key}"; done)
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
for type in ${types:-rsa ecdsa ed25519}; do
    ssh-keygen -q -t "$type" -N '' -C "root@$name" -f "/etc/ssh/ssh_host_${type}_key"
done
mkdir -p /etc/systemd/network
# networkd applies the first matching file in lexical order: 00- comes before the machine's own
if [ -n "$interface" ]; then match="Name=$interface"; else match="Type=ether"; fi
cat > /etc/systemd/network/00-labctl.network <<EOF
[Match]
$match

[Network]
Address=$address
LinkLocalAddressing=no
ConfigureWithoutCarrier=yes
IgnoreCarrierLoss=yes
EOF
# the lab key is added: the keys production trusts (its admins') keep working on its clone
trust() { touch "$1"; grep -qxF "$pubkey" "$1" || printf '%s\n' "$pubkey" >> "$1"; chmod 600 "$1"; }
install -d -m 700 /root/.ssh
trust /root/.ssh/authorized_keys
if [ "$user" != root ]; then
    id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
    printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$user" > "/etc/sudoers.d/labctl-$user"
    chmod 440 "/etc/sudoers.d/labctl-$user"
    home=$(getent passwd "$user" | cut -d: -f6)
    install -d -m 700 -o "$user" -g "$user" "$home/.ssh"
    trust "$home/.ssh/authorized_keys"
    chown "$user:$user" "$home/.ssh/authorized_keys"
fi
sync
if [ "$live" = live ]; then
    # in place of a reboot: what holds the old identity in memory takes the new one
    printf '%s' "$name" > /proc/sys/kernel/hostname
    systemctl restart systemd-journald.service
    if [ -n "$interface" ]; then ip -4 addr flush dev "$interface"; fi
    systemctl try-restart systemd-networkd.service
    systemctl try-restart ssh.service
fi
cat /etc/ssh/ssh_host_*_key.pub
"""


@runtime_checkable
class MachineFactory(Protocol):
    """Backends that create production machines from the base image (nspawn)."""

    def create(self, name: str, image: Image, *, address: str) -> None: ...


@runtime_checkable
class LabNetwork(Protocol):
    """Backends that own host-side lab networking to remove once the lab is empty."""

    def teardown(self) -> None: ...


@dataclass(frozen=True)
class MachineStatus:
    """One row of ``labctl status``."""

    machine: str
    role: str
    state: str
    address: str | None
    managed: bool

    def to_json(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "role": self.role,
            "state": self.state,
            "address": self.address,
            "managed": self.managed,
        }


@dataclass(frozen=True)
class UpResult:
    created: list[str]
    started: list[str]
    machines: list[MachineStatus]
    resumed: list[str] = field(default_factory=list)
    reconnected: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.started or self.resumed or self.reconnected)


@dataclass(frozen=True)
class DownResult:
    stopped: list[str]
    killed: list[str]


# -- keys and trust ----------------------------------------------------------------------


def ensure_lab_key(lab: str) -> str:
    """The lab's SSH public key, generating the ed25519 key pair on first use."""
    key = paths.lab_key_path(lab)
    with lab_lock(paths.lab_dir(lab)):
        if not key.exists():
            _run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"labctl@{lab}",
                    "-f",
                    str(key),
                ]
            )
        return Path(f"{key}.pub").read_text().strip()


def record_host_keys(lab: str, address: str, public_keys: Iterable[str]) -> None:
    """Trust exactly these host keys for ``address`` (bare IP), replacing older records."""
    ip = str(host_ip(address))
    known = paths.known_hosts_path(lab)
    with lab_lock(paths.lab_dir(lab)):
        lines = known.read_text().splitlines() if known.exists() else []
        kept = [line for line in lines if line.split(" ", 1)[0] != ip]
        for key in public_keys:
            parts = key.split()
            if len(parts) >= 2:
                kept.append(f"{ip} {parts[0]} {parts[1]}")
        atomic_write(known, "".join(f"{line}\n" for line in kept))


def forget_host_keys(lab: str, address: str) -> None:
    record_host_keys(lab, address, [])


def lab_interface(profile: Profile, name: str) -> str:
    """The interface that carries ``name``'s lab address: its pair's ``interface``; else the
    nspawn lab's ``host0``; else "" (the identity then matches any Ethernet link)."""
    for pair in profile.pairs.values():
        if name in (pair.primary, pair.standby) and pair.interface:
            return pair.interface
    return "host0" if profile.lab.backend == "nspawn" else ""


def apply_identity(
    hv: Hypervisor, profile: Profile, name: str, address: str, *, live: bool = False
) -> list[str]:
    """Give a stopped (or isolated) machine its own identity; return its public host keys.

    ``live``: the machine runs (cable out) and takes the identity without a reboot: hostname
    set, journald, systemd-networkd and sshd restarted."""
    pubkey = ensure_lab_key(profile.lab.name)
    argv = [
        "sh",
        "-c",
        IDENTITY_SCRIPT,
        "identity",
        name,
        address,
        uuid.uuid4().hex,
        pubkey,
        profile.ssh.user,
        lab_interface(profile, name),
        "live" if live else "",
    ]
    result = hv.exec_in_guest(name, argv, timeout=profile.timeouts.command)
    if result.exit_code != 0:
        raise OperationFailed(
            f"{name}: writing its identity failed (exit {result.exit_code}): "
            f"{result.stderr.strip()[-300:]}"
        )
    keys = [line for line in result.stdout.splitlines() if line.startswith(("ssh-", "ecdsa-"))]
    if not keys:
        raise OperationFailed(f"{name}: no SSH host keys were generated")
    record_host_keys(profile.lab.name, address, keys)
    return keys


# -- waiting -----------------------------------------------------------------------------


def ssh_banner(host: str, port: int, timeout: float) -> str:
    """Connect and read the server's identification line; OSError when nothing answers."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        data = sock.recv(256)
    banner = data.decode("ascii", "replace").strip()
    if not banner.startswith("SSH-"):
        raise ConnectionError(f"not an SSH server: {banner[:40]!r}")
    return banner


def _poll_machine(retry_on: type[BaseException], *, deadline: float, sleep: Sleep) -> Retrying:
    """How labctl polls a local machine: quick backoff (50 ms up to 0.5 s) until ``deadline``."""
    return Retrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_before_delay(deadline),
        wait=wait_exponential(multiplier=0.05, max=0.5),
        before_sleep=before_sleep_log(log, logging.DEBUG),
        sleep=sleep,
    )


def wait_for_ssh(
    name: str,
    address: str,
    *,
    port: int,
    deadline: float,
    connect_timeout: float = 2.0,
    probe: Probe | None = None,
    sleep: Sleep = time.sleep,
    alive: Callable[[], bool] | None = None,
) -> str:
    """Wait until ``address`` answers with an SSH banner; GuestUnreachable after ``deadline``.

    ``alive`` (when given) is asked after each failed attempt; a machine that is no longer
    running fails at once instead of at the deadline.
    """
    probe = probe or ssh_banner  # looked up late so tests can replace it
    ip = str(host_ip(address))

    def attempt_probe() -> str:
        try:
            return probe(ip, port, min(connect_timeout, deadline))
        except OSError:
            if alive is not None and not alive():
                raise GuestUnreachable(
                    f"{name} stopped while booting (it never answered SSH on {ip}:{port})",
                    hint="its console log (nspawn: console.log in its machine directory) says why",
                ) from None
            raise

    retrying = _poll_machine(OSError, deadline=deadline, sleep=sleep)
    try:
        for attempt in retrying:
            with attempt:
                return attempt_probe()
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise GuestUnreachable(
            f"{name} ({ip}:{port}) did not answer SSH within {deadline:g}s: {last}",
            hint="see `labctl status`; the machine's console log is in its machine directory",
        ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def wait_until_stopped(
    hv: Hypervisor, names: Sequence[str], *, deadline: float, sleep: Sleep = time.sleep
) -> list[str]:
    """Wait until every machine is stopped; return those still running at the deadline."""

    class _StillRunning(Exception):
        pass

    retrying = _poll_machine(_StillRunning, deadline=deadline, sleep=sleep)
    running: list[str] = list(names)
    try:
        for attempt in retrying:
            with attempt:
                running = [
                    n
                    for n in names
                    if hv.inspect(n).state not in (MachineState.STOPPED, MachineState.ABSENT)
                ]
                if running:
                    raise _StillRunning(", ".join(running))
    except RetryError:
        return running
    return []


# -- operations --------------------------------------------------------------------------


def build_image(
    profile: Profile, *, rebuild: bool = False, progress: Progress | None = None
) -> ImageBuild:
    """Build the profile's base image unless it exists with the current recipe."""
    return ensure_image(profile.lab.nspawn.image, rebuild=rebuild, progress=progress)


def _role_of(profile: Profile) -> dict[str, tuple[str, str]]:
    return {name: (role, address) for name, address, role in profile.all_nodes()}


def up_names(profile: Profile, hv: Hypervisor, machines: Sequence[str] = ()) -> list[str]:
    """What ``up`` acts on: the named machines, else every production machine and every
    standby that exists (a missing standby is ``labctl clone``'s job)."""
    if machines:
        return list(dict.fromkeys(machines))
    standbys = [p.standby for p in profile.pairs.values()]
    existing = [s for s in standbys if hv.inspect(s).state is not MachineState.ABSENT]
    return [*profile.machines, *existing]


def up(
    profile: Profile,
    hv: Hypervisor,
    machines: Sequence[str] = (),
    *,
    progress: Progress | None = None,
    probe: Probe | None = None,
    sleep: Sleep = time.sleep,
) -> UpResult:
    """Create missing production machines, start every machine (standbys too), resume paused
    ones, reconnect unplugged cables, and wait until SSH answers on each (concurrently)."""
    probe = probe or ssh_banner  # looked up late so tests can replace it
    say = progress or (lambda _line: None)
    roles = _role_of(profile)
    profile.check_machines(machines)
    require(hv, "up")
    hv.check()
    require_startable(hv)
    names = up_names(profile, hv, machines)
    missing = [n for n in names if hv.inspect(n).state is MachineState.ABSENT]
    for name in missing:
        role = roles[name][0]
        if role == "standby":
            primary = next(p.primary for p in profile.pairs.values() if p.standby == name)
            raise OperationFailed(
                f"{name} is a standby and does not exist yet", hint=f"labctl clone {primary}"
            )
        if not isinstance(hv, MachineFactory):
            raise OperationFailed(
                f"{name} does not exist; the {hv.name} backend cannot create machines",
                hint="create it in the hypervisor, then run labctl clone for its standby",
            )
    if missing:
        assert isinstance(hv, MachineFactory)
        image = build_image(profile, progress=say).image

        def create(name: str) -> None:
            say(f"{name}: creating from image")
            hv.create(name, image, address=roles[name][1])
            try:
                apply_identity(hv, profile, name, roles[name][1])
            except BaseException:
                hv.destroy(name)
                raise

        _each(create, missing)
    started: list[str] = []
    resumed: list[str] = []
    reconnected: list[str] = []

    def bring_up(name: str) -> None:
        machine = hv.inspect(name)
        if lab_link_up(profile, machine) is False:
            say(f"{name}: reconnecting its cable")
            hv.set_link(name, True)
            reconnected.append(name)
        if machine.state is MachineState.PAUSED:
            say(f"{name}: resuming (it was paused)")
            hv.resume(name)
            resumed.append(name)
        elif machine.state is MachineState.STOPPED:
            say(f"{name}: starting")
            hv.start(name)
            started.append(name)
        wait_for_ssh(
            name,
            roles[name][1],
            port=profile.ssh.port,
            deadline=profile.timeouts.boot,
            connect_timeout=profile.timeouts.connect,
            probe=probe,
            sleep=sleep,
            alive=_running(hv, name),
        )
        say(f"{name}: SSH answers")

    _each(bring_up, names)
    rows = [s for s in status(profile, hv) if s.machine in names]
    order = {n: i for i, n in enumerate(names)}
    return UpResult(
        [n for n in names if n in missing],
        sorted(started, key=order.__getitem__),
        rows,
        sorted(resumed, key=order.__getitem__),
        sorted(reconnected, key=order.__getitem__),
    )


def _each(action: Callable[[str], None], names: Sequence[str]) -> None:
    """Run action(name) for every name concurrently; the first failure is raised."""
    if len(names) <= 1:
        for name in names:
            action(name)
        return
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="up") as pool:
        futures = [pool.submit(action, n) for n in names]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def _running(hv: Hypervisor, name: str) -> Callable[[], bool]:
    return lambda: hv.inspect(name).state is MachineState.RUNNING


def down(
    profile: Profile, hv: Hypervisor, *, deadline: float = 30.0, sleep: Sleep = time.sleep
) -> DownResult:
    """Shut every machine of the lab down gracefully; kill those still up at the deadline."""
    require(hv, "down")
    hv.check()
    running = [m.name for m in hv.list() if m.state in (MachineState.RUNNING, MachineState.PAUSED)]
    for name in running:
        hv.stop(name)
    stubborn = wait_until_stopped(hv, running, deadline=deadline, sleep=sleep)
    for name in stubborn:
        hv.stop(name, hard=True)
    return DownResult([n for n in running if n not in stubborn], stubborn)


def status(profile: Profile, hv: Hypervisor) -> list[MachineStatus]:
    """Every machine of the profile (and any other machine labctl created for the lab)."""
    rows: list[MachineStatus] = []
    seen: set[str] = set()
    for name, address, role in profile.all_nodes():
        machine = hv.inspect(name)
        rows.append(
            MachineStatus(
                name, role, machine.state.value, machine.address or address, machine.managed
            )
        )
        seen.add(name)
    for machine in hv.list():
        if machine.name not in seen:
            rows.append(
                MachineStatus(machine.name, "unknown", machine.state.value, machine.address, True)
            )
    return rows


def destroy(profile: Profile, hv: Hypervisor) -> list[str]:
    """Delete every machine labctl created for this lab, then the lab's host network."""
    require(hv, "destroy")
    hv.check()
    destroyed = []
    for machine in hv.list():
        if not machine.managed:
            continue
        hv.destroy(machine.name)
        if machine.address:
            forget_host_keys(profile.lab.name, machine.address)
        destroyed.append(machine.name)
    if isinstance(hv, LabNetwork):
        hv.teardown()
    if not hv.list():
        # nothing of the lab is left: its key, trusted host keys and state go too
        shutil.rmtree(paths.lab_dir(profile.lab.name), ignore_errors=True)
    return destroyed


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise OperationFailed(
            f"{argv[0]} not found on PATH", hint="install OpenSSH's client (Debian: openssh-client)"
        ) from exc
    except (OSError, subprocess.CalledProcessError) as exc:
        raise OperationFailed(f"{argv[0]} failed: {exc}") from exc
