"""The nspawn backend: real Debian machines as directories, booted with systemd-nspawn.

Layout under ``labctl.paths.lab_dir(lab)/machines/<name>/``:

* overlay machines (production machines made from the image, linked clones): ``upper/`` and
  ``work/`` over read-only lower layers (the image's rootfs; for a linked clone first a
  snapshot of its source's upper layer), mounted on ``root/``;
* full machines (full clones): ``root/`` is a plain tree.

Overlays are mounted only inside a private mount namespace of the process that needs them
(the nspawn launcher, a chroot for stopped-machine edits), so they vanish with that process:
a killed machine leaves no mount behind. Each machine runs as
``systemd-nspawn --boot --network-bridge=BR -M <unit>`` where ``unit`` is unique per lab
directory; nspawn derives from it the host-side veth ``vb-<unit>`` and the guest's MAC.

Mechanism only: every call does one thing and returns. The one exception is that a hard stop
and ``destroy`` block on the kernel (pidfd) until the killed processes are gone, as
``VBoxManage controlvm poweroff`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from labctl import paths
from labctl.errors import BackendUnavailable, OperationFailed
from labctl.hypervisor import ExecResult, Machine, MachineState
from labctl.hypervisor import nspawn_net as net
from labctl.hypervisor.nspawn_copy import copy_tree, flatten
from labctl.hypervisor.nspawn_image import Image
from labctl.hypervisor.nspawn_proc import (
    KILL_WAIT,
    await_ready,
    children,
    ensure_inotify_instances,
    proc_stat,
    wait_gone,
)
from labctl.profile import Profile
from labctl.state import Kind, LabState, MachineRecord, MachineRole, StateStore

TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nft": "nftables",
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "setsid": "util-linux",
    "ssh-keygen": "openssh-client",
}
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FREEZER_ROOT = Path("/sys/fs/cgroup/freezer")
Paths = list[str]  # spelled out here because the class defines a method named ``list``
_Pids = list[int]


# host-wide setup shared by the machines of a lab (bridge, nft table, inotify limit)
_HOST_SETUP = threading.Lock()


def from_profile(profile: Profile) -> NspawnHypervisor:
    """The registry's factory (``labctl.hypervisor.nspawn:from_profile``)."""
    return NspawnHypervisor(profile)


def _digest(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


class NspawnHypervisor:
    """Drive one lab's nspawn machines.

    Args:
        profile: the lab profile (``lab.name``, ``[lab.nspawn]``, machine addresses).
    """

    name = "nspawn"
    edits_stopped_disks = True

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.settings = profile.lab.nspawn
        self.directory = paths.lab_dir(profile.lab.name)
        self.store = StateStore(self.directory)
        self.table = f"labctl_{_digest(str(self.directory.resolve()))}"

    # -- paths and runtime facts -------------------------------------------------------

    def machine_dir(self, name: str) -> Path:
        return self.directory / "machines" / name

    def root(self, name: str) -> Path:
        """The machine's root tree (for overlay machines: the mount point, empty when idle)."""
        return self.machine_dir(name) / "root"

    def console_log(self, name: str) -> Path:
        """The guest's console output since its last start."""
        return self.machine_dir(name) / "console.log"

    def unit(self, name: str) -> str:
        return "l" + _digest(str(self.machine_dir(name).resolve()))

    def port(self, name: str) -> str:
        """The host side of the machine's veth, as nspawn names it."""
        return f"vb-{self.unit(name)}"[:15]

    def _freezer(self, name: str) -> Path | None:
        if not (FREEZER_ROOT / "cgroup.procs").exists():  # cgroup v1 freezer hierarchy only
            return None
        return FREEZER_ROOT / f"labctl-{self.unit(name)}"

    def _record(self, name: str) -> MachineRecord | None:
        return self.store.load().machines.get(name)

    def _require(self, name: str) -> MachineRecord:
        rec = self._record(name)
        if rec is None:
            raise OperationFailed(
                f"machine {name!r} does not exist in lab {self.profile.lab.name}",
                hint="labctl up creates production machines; labctl clone creates standbys",
            )
        return rec

    def nspawn_pid(self, name: str) -> int | None:
        """The PID of the machine's systemd-nspawn process while it runs, else None."""
        pidfile = self.machine_dir(name) / "nspawn.pid"
        try:
            pid_text, _, start_text = pidfile.read_text().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        stat = proc_stat(pid)
        if stat is None or stat[0] == "Z" or stat[1] != start_text.strip():
            return None
        return pid

    def init_pid(self, name: str) -> int | None:
        """The PID (host view) of the guest's PID 1, once nspawn has started it."""
        pid = self.nspawn_pid(name)
        if pid is None:
            return None
        try:
            own_ns = os.readlink(f"/proc/{pid}/ns/pid")
            for child in children(pid):
                if os.readlink(f"/proc/{child}/ns/pid") != own_ns:
                    return child
        except OSError:
            return None
        return None

    def _guest_pids(self, name: str) -> _Pids:
        init = self.init_pid(name)
        if init is None:
            return []
        try:
            ns = os.readlink(f"/proc/{init}/ns/pid")
        except OSError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                        pids.append(int(entry))
        return pids

    def _init_handles_shutdown(self, name: str) -> bool:
        """Whether the guest's init takes SIGRTMIN+3 (nspawn's shutdown request) yet.

        The kernel drops signals a namespace's init neither catches nor blocks; systemd
        blocks them and reads them from a signalfd, so either mask counts.
        """
        init = self.init_pid(name)
        if init is None:
            return False
        try:
            status = Path(f"/proc/{init}/status").read_text()
        except OSError:
            return False
        bit = 1 << (signal.SIGRTMIN + 3 - 1)
        masks = [
            int(line.split()[1], 16)
            for line in status.splitlines()
            if line.startswith(("SigCgt:", "SigBlk:"))
        ]
        return any(mask & bit for mask in masks)

    def _is_paused(self, name: str) -> bool:
        freezer = self._freezer(name)
        if freezer is not None and (freezer / "freezer.state").exists():
            return (freezer / "freezer.state").read_text().strip() != "THAWED"
        init = self.init_pid(name)
        stat = proc_stat(init) if init else None
        return stat is not None and stat[0] == "T"

    # -- Hypervisor protocol --------------------------------------------------------------

    def check(self) -> None:
        """Raise BackendUnavailable unless this host can run nspawn machines (root, tools)."""
        missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
        if missing:
            raise BackendUnavailable(
                f"the nspawn backend needs {', '.join(missing)} on this host",
                hint=f"apt-get install {' '.join(missing)}",
            )
        if os.geteuid() != 0:
            raise BackendUnavailable(
                "the nspawn backend needs root (bridges, nftables, systemd-nspawn)",
                hint="run labctl with sudo",
            )

    def inspect(self, name: str) -> Machine:
        """The machine's state and address; ABSENT when labctl did not create it."""
        rec = self._record(name)
        if rec is None:
            return Machine(name, MachineState.ABSENT)
        if self.nspawn_pid(name) is None:
            state = MachineState.STOPPED
        elif self._is_paused(name):
            state = MachineState.PAUSED
        else:
            state = MachineState.RUNNING
        return Machine(name, state, rec.address, managed=True, link_up=rec.link_up)

    def list(self) -> list[Machine]:
        """Every machine labctl created for this lab."""
        return [self.inspect(name) for name in sorted(self.store.load().machines)]

    def create(self, name: str, image: Image, *, address: str) -> None:
        """Create a production machine: an overlay over the image, not started.

        Its identity (hostname, machine-id, host keys, address) is written afterwards by the
        caller through ``exec_in_guest`` on the stopped machine.
        """
        with self.store.locked() as state:
            self._claim(state, name)
            mdir = self.machine_dir(name)
            try:
                for sub in ("upper", "work", "root"):
                    (mdir / sub).mkdir(parents=True)
            except OSError as exc:
                shutil.rmtree(mdir, ignore_errors=True)
                raise OperationFailed(f"cannot create machine {name}: {exc}") from exc
            state.machines[name] = self._new_record(
                name, "production", "overlay", address, [str(image.rootfs)]
            )

    def clone(self, source: str, target: str, *, linked: bool = False) -> None:
        """Copy ``source``'s disk into a new, stopped ``target`` whose link is disconnected.

        Full: a plain copy of the source's tree (``cp -a --reflink=auto``). Linked: a snapshot
        of the source's upper layer under a new overlay. The source may be running and is not
        modified. A failure removes everything made for the target.
        """
        with self.store.locked() as state:
            src = state.machines.get(source)
            if src is None:
                raise OperationFailed(
                    f"cannot clone {source!r}: no such machine in lab {self.profile.lab.name}",
                    hint=f"create it first: labctl up {source}",
                )
            self._claim(state, target)
            tdir = self.machine_dir(target)
            role: MachineRole = "standby" if self._is_standby(target) else "production"
            try:
                tdir.mkdir(parents=True)
                if linked:
                    kind: Kind = "overlay"
                    lowers = self._snapshot(src, tdir / "snapshot")
                    for sub in ("upper", "work", "root"):
                        (tdir / sub).mkdir()
                else:
                    kind, lowers = "full", []
                    self._flatten(src, tdir / "root")
            except BaseException as exc:
                shutil.rmtree(tdir, ignore_errors=True)
                if isinstance(exc, OperationFailed | KeyboardInterrupt):
                    raise
                raise OperationFailed(f"cloning {source} to {target} failed: {exc}") from exc
            rec = self._new_record(target, role, kind, self._address_of(target), lowers)
            rec.source = source
            rec.link_up = False
            state.machines[target] = rec

    def start(self, name: str) -> None:
        """Boot the machine on the lab bridge; returns once nspawn runs, not once it answers."""
        rec = self._require(name)
        if self.nspawn_pid(name) is not None:
            return
        with _HOST_SETUP:  # machines of one lab may start concurrently (up, clone --all)
            ensure_inotify_instances()
            net.ensure_bridge(self.settings.bridge, self.settings.gateway, self.settings.subnet)
            net.ensure_table(self.table)
        if rec.link_up:
            net.remove_element(self.table, "down", self.port(name))
        else:
            net.add_element(self.table, "down", self.port(name))
        freezer = self._freezer(name)
        join = ""
        if freezer is not None:
            freezer.mkdir(exist_ok=True)
            (freezer / "freezer.state").write_text("THAWED")
            join = f"echo $$ > {shlex.quote(str(freezer / 'cgroup.procs'))}\n"
        nspawn = shlex.join(
            [
                "systemd-nspawn",
                "-D",
                str(self.root(name)),
                "--boot",
                f"--network-bridge={self.settings.bridge}",
                "--register=no",
                "--keep-unit",
                "-M",
                self.unit(name),
                "--console=passive",
            ]
        )
        inner = f"set -e\n{self._mount_cmd(rec)}exec {nspawn}"
        launcher = f"{join}exec unshare -m --propagation private sh -c {shlex.quote(inner)}"
        log = self.console_log(name)
        # nspawn reports READY=1 on $NOTIFY_SOCKET once the guest's init runs (its veth is
        # up by then): start() returns at that event, like VBoxManage startvm, so that
        # exec_in_guest and set_link work at once.
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = f"labctl-{self.unit(name)}-{os.getpid()}"
        notify.bind(f"\0{address}")
        with notify:
            out = net.run(
                [
                    "sh",
                    "-c",
                    'setsid sh -c "$0" </dev/null >"$1" 2>&1 & echo $!',
                    launcher,
                    str(log),
                ],
                env={**os.environ, "NOTIFY_SOCKET": f"@{address}"},
            )
            pid = int(out.strip())
            stat = proc_stat(pid)
            if stat is None:
                raise OperationFailed(f"{name}: systemd-nspawn exited at once; see {log}")
            (self.machine_dir(name) / "nspawn.pid").write_text(f"{pid} {stat[1]}\n")
            await_ready(notify, pid, name, log)
        if not rec.link_up:
            net.set_port(self.port(name), False)

    def stop(self, name: str, *, hard: bool = False) -> None:
        """Graceful: ask systemd in the guest to power off (returns at once). Hard: kill every
        process of the machine and return when they are gone."""
        self._require(name)
        pid = self.nspawn_pid(name)
        if pid is None:
            self._cleanup_runtime(name)
            return
        if not hard and self._init_handles_shutdown(name):
            self._thaw(name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            return
        # A graceful stop in the first instants of boot, before the guest's init handles the
        # shutdown signal, would be dropped by the kernel; nothing runs yet that a shutdown
        # would stop and every write already went to the host's page cache, so pull the plug.
        victims = [*self._guest_pids(name), pid]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        self._thaw(name)  # frozen tasks only die once thawed
        for victim in victims:
            wait_gone(victim, KILL_WAIT)
        self._cleanup_runtime(name)

    def pause(self, name: str) -> None:
        """Freeze every guest process and silence its NIC (like a paused VM)."""
        self._require(name)
        if self.nspawn_pid(name) is None:
            raise OperationFailed(f"cannot pause {name}: it is not running")
        net.add_element(self.table, "down", self.port(name))
        freezer = self._freezer(name)
        if freezer is not None and (freezer / "freezer.state").exists():
            (freezer / "freezer.state").write_text("FROZEN")
            return
        for _ in range(2):  # a second pass catches children forked during the first
            for pid in self._guest_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """Thaw a paused machine and reconnect its NIC if its cable is plugged in."""
        rec = self._require(name)
        self._thaw(name)
        if rec.link_up:
            net.remove_element(self.table, "down", self.port(name))

    def set_link(self, name: str, up: bool) -> None:
        """Plug or pull the machine's cable (host-side veth and bridge filter)."""
        with self.store.locked() as state:
            rec = state.machines.get(name)
            if rec is None:
                raise OperationFailed(f"machine {name!r} does not exist")
            rec.link_up = up
        port = self.port(name)
        if up:
            if not self._is_paused(name):
                net.remove_element(self.table, "down", port)
            net.set_port(port, True)
        else:
            net.add_element(self.table, "down", port)
            net.set_port(port, False)

    def exec_in_guest(self, name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        """Run argv as root in the guest: nsenter when running, a chroot when stopped."""
        rec = self._require(name)
        env = ["env", "-i", f"PATH={GUEST_PATH}", "HOME=/root", "LANG=C.UTF-8", *argv]
        init = self.init_pid(name)
        if init is not None:
            cmd = ["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "-r", "-w", *env]
        elif self.nspawn_pid(name) is not None:
            raise OperationFailed(f"{name} is starting; its init is not up yet")
        else:
            inner = f'set -e\n{self._mount_cmd(rec)}exec chroot "$0" "$@"'
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner]
            cmd += [str(self.root(name)), *env]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise OperationFailed(
                f"{name}: {shlex.join(argv)} did not finish within {timeout:g}s"
            ) from exc
        return ExecResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def destroy(self, name: str) -> None:
        """Kill the machine if running and delete its directory and record."""
        rec = self._record(name)
        if rec is None:
            if self.machine_dir(name).exists():
                raise OperationFailed(
                    f"refusing to destroy {name}: labctl has no record of creating it"
                )
            return
        self.stop(name, hard=True)
        with self.store.locked() as state:
            for other in state.machines:
                if other != name:
                    self.unblock_vrrp(name, other)
            net.remove_element(self.table, "down", self.port(name))
            shutil.rmtree(self.machine_dir(name), ignore_errors=True)
            if self.machine_dir(name).exists():
                raise OperationFailed(f"could not remove {self.machine_dir(name)}")
            state.machines.pop(name, None)

    # -- VrrpPartitioner -----------------------------------------------------------------

    def block_vrrp(self, a: str, b: str) -> None:
        """Drop VRRP (IP protocol 112) between a and b on the lab bridge, both directions."""
        self._require(a)
        self._require(b)
        pa, pb = self.port(a), self.port(b)
        net.add_element(self.table, "vrrp_block", f"{pa} . {pb}", f"{pb} . {pa}")

    def unblock_vrrp(self, a: str, b: str) -> None:
        """Remove what block_vrrp(a, b) added; a no-op when nothing is blocked."""
        pa, pb = self.port(a), self.port(b)
        net.remove_element(self.table, "vrrp_block", f"{pa} . {pb}")
        net.remove_element(self.table, "vrrp_block", f"{pb} . {pa}")

    def vrrp_blocked(self) -> set[str]:
        """The port pairs currently partitioned (``vb-x . vb-y``)."""
        return net.set_elements(self.table, "vrrp_block")

    # -- lab-wide ------------------------------------------------------------------------

    def teardown(self) -> None:
        """Remove the lab's network (nft table, bridge) once no machine of it is left."""
        if self.store.load().machines:
            return
        net.delete_table(self.table)
        bridge = self.settings.bridge
        if net.link_exists(bridge) and not any(Path(f"/sys/class/net/{bridge}/brif").iterdir()):
            net.delete_bridge(bridge)
        with contextlib.suppress(OSError):
            (self.directory / "machines").rmdir()

    # -- internals -----------------------------------------------------------------------

    def _claim(self, state: LabState, name: str) -> None:
        if name in state.machines or self.machine_dir(name).exists():
            raise OperationFailed(f"machine {name!r} already exists in lab {self.profile.lab.name}")

    def _is_standby(self, name: str) -> bool:
        return any(p.standby == name for p in self.profile.pairs.values())

    def _address_of(self, name: str) -> str:
        for node, address, _role in self.profile.all_nodes():
            if node == name:
                return address
        raise OperationFailed(f"{name!r} is not a machine or standby of the profile")

    def _new_record(
        self, name: str, role: MachineRole, kind: Kind, address: str, lowers: Paths
    ) -> MachineRecord:
        return MachineRecord(
            name=name, role=role, kind=kind, address=address, unit=self.unit(name), lowers=lowers
        )

    def _layers(self, rec: MachineRecord) -> Paths:
        """Lower layers of the read-only view of a machine's current disk, topmost first."""
        mdir = self.machine_dir(rec.name)
        if rec.kind == "full":
            return [str(mdir / "root")]
        return [str(mdir / "upper"), *rec.lowers]

    def _mount_cmd(self, rec: MachineRecord) -> str:
        if rec.kind == "full":
            return ""
        mdir = self.machine_dir(rec.name)
        for p in (*rec.lowers, str(mdir)):
            if any(c in p for c in ",:\n"):
                raise OperationFailed(f"path {p!r} contains ',' or ':' (overlayfs cannot use it)")
        opts = f"lowerdir={':'.join(rec.lowers)},upperdir={mdir / 'upper'},workdir={mdir / 'work'}"
        return (
            f"mount -t overlay overlay -o {shlex.quote(opts)} {shlex.quote(str(mdir / 'root'))}\n"
        )

    def _snapshot(self, src: MachineRecord, dest: Path) -> Paths:
        """Copy the source's own layer to ``dest``; return the clone's lower layers."""
        layers = self._layers(src)
        copy_tree(Path(layers[0]), dest)
        return [str(dest), *layers[1:]]

    def _flatten(self, src: MachineRecord, dest: Path) -> None:
        """Copy the source's merged tree to ``dest`` as a plain tree."""
        flatten(self._layers(src), dest)

    def _thaw(self, name: str) -> None:
        freezer = self._freezer(name)
        if freezer is not None and (freezer / "freezer.state").exists():
            (freezer / "freezer.state").write_text("THAWED")
            return
        for pid in self._guest_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _cleanup_runtime(self, name: str) -> None:
        # called once the machine's processes are gone: it is off the network at once
        net.delete_port(self.port(name))
        with contextlib.suppress(FileNotFoundError):
            (self.machine_dir(name) / "nspawn.pid").unlink()
        freezer = self._freezer(name)
        if freezer is not None:
            with contextlib.suppress(OSError):
                freezer.rmdir()
