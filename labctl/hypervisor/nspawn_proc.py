"""Host-side process facts for the nspawn backend: /proc reads and kernel-event waits.

Nothing here sleeps or polls: waits block in the kernel (pidfd, the notify socket).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from pathlib import Path

from labctl.errors import OperationFailed

KILL_WAIT = 15.0
START_WAIT = 30.0
# Every guest's systemd takes several inotify instances from root's per-user budget; the
# default of 128 stops the ~18th guest on a host ("Failed to allocate manager object: Too
# many open files"). start() raises it, as container hosts (LXD, k8s nodes) do.
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_MIN = 8192


def ensure_inotify_instances() -> None:
    try:
        if int(INOTIFY_INSTANCES.read_text()) < INOTIFY_MIN:
            INOTIFY_INSTANCES.write_text(str(INOTIFY_MIN))
    except (OSError, ValueError) as exc:
        raise OperationFailed(
            f"cannot raise fs.inotify.max_user_instances to {INOTIFY_MIN}: {exc}",
            hint=f"sysctl -w fs.inotify.max_user_instances={INOTIFY_MIN}",
        ) from exc


def await_ready(notify: socket.socket, pid: int, name: str, log: Path) -> None:
    """Block until nspawn sends READY=1, or fail when it exits first."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = -1
    try:
        poller = select.poll()
        poller.register(notify.fileno(), select.POLLIN)
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        while True:
            events = poller.poll(START_WAIT * 1000)
            if not events:
                raise OperationFailed(
                    f"{name}: systemd-nspawn did not start within {START_WAIT:g}s"
                )
            fds = {fd for fd, _ in events}
            if notify.fileno() in fds and b"READY=1" in notify.recv(4096):
                return
            if pidfd < 0 or pidfd in fds:
                tail = " | ".join(_tail(log, 3))
                raise OperationFailed(f"{name}: systemd-nspawn exited while starting: {tail}")
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of a process, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out.extend(int(x) for x in (task / "children").read_text().split())
    return out


def wait_gone(pid: int, timeout: float) -> None:
    """Block (in the kernel, via pidfd) until pid has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise OperationFailed(f"process {pid} did not exit after SIGKILL")
    finally:
        os.close(fd)
