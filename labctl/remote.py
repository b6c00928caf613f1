"""Remote execution: argv in, Result out.

``Remote`` is the protocol every operation uses to talk to a machine; ``labctl.ssh.SshRemote``
implements it with paramiko. A non-zero exit raises ``CommandFailed`` carrying the Result.

One connection attempt ends in a Remote or in one of the errors below: ``ConnectFailed``
(transient: refused, timeout, reset, no route, EOF before the banner) is the only one worth
retrying; authentication, host-key and sudo errors never are (``is_transient`` decides for
library exceptions). Waiting and retrying is policy and lives in ``labctl.ops.connect``.
"""

from __future__ import annotations

import errno
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import paramiko

from labctl.errors import GuestUnreachable, OperationFailed
from labctl.hostkeys import HostKeyChanged, HostKeyStore, known_hosts_name

__all__ = [
    "AuthFailed",
    "CommandFailed",
    "ConnectFailed",
    "Endpoint",
    "HostKeyChanged",
    "HostKeyStore",
    "Remote",
    "Result",
    "SudoPasswordRequired",
    "describe_error",
    "is_transient",
]

STDERR_TAIL_LINES = 15


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to log in.

    Attributes:
        name: the machine name (used in messages and for host-key records).
        host: address to connect to.
        port: SSH port.
        user: login user; non-root users run commands through ``sudo -n``.
        key_filename: a private key file, or None for agent / ~/.ssh/config.
    """

    name: str
    host: str
    port: int = 22
    user: str = "root"
    key_filename: str | None = None

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH uses for this host in known_hosts (``[host]:port`` off port 22)."""
        return known_hosts_name(self.host, self.port)

    def describe(self) -> str:
        """``user@host:port`` for messages."""
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Result:
    """What a command did on a machine."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        return "\n".join(self.stderr.strip().splitlines()[-lines:])


class CommandFailed(OperationFailed):
    """A remote command exited non-zero (``check=True``)."""

    def __init__(self, host: str, result: Result, *, hint: str | None = None) -> None:
        tail = result.stderr_tail() or result.stdout.strip()[-500:]
        message = f"{host}: `{result.command}` exited {result.exit_code}"
        if tail:
            message += f": {tail}"
        super().__init__(message, hint=hint)
        self.host = host
        self.result = result


class ConnectFailed(GuestUnreachable):
    """One connection attempt failed for a reason that may pass (the machine is still booting).

    Attributes:
        endpoint: where the attempt went.
        reason: what happened, e.g. ``connection refused``.
    """

    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        super().__init__(f"{endpoint.name} ({endpoint.describe()}): {reason}")
        self.endpoint = endpoint
        self.reason = reason


class AuthFailed(OperationFailed):
    """The machine answered but refused every credential offered."""


class SudoPasswordRequired(OperationFailed):
    """A non-root login user whose sudo asks for a password."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(
            f"{endpoint.name}: user {endpoint.user!r} needs passwordless sudo, but `sudo -n` "
            "asked for a password",
            hint=f"on {endpoint.name} add '{endpoint.user} ALL=(ALL) NOPASSWD: ALL' to a file "
            "in /etc/sudoers.d/, or log in as root (ssh.user)",
        )


@runtime_checkable
class Remote(Protocol):
    """A connection to one machine that runs argv and writes files as root."""

    name: str

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """Run argv (joined with shlex.join) as root; raise CommandFailed on non-zero if check."""

    def put(self, data: bytes, path: str, *, mode: int = 0o644, owner: str = "root:root") -> None:
        """Write data atomically: temp file in the same directory, chmod/chown, rename."""

    def get(self, path: str) -> bytes | None:
        """A file's content, or None when it does not exist."""

    def close(self) -> None:
        """Close the connection."""


# ---------------------------------------------------------------------------
# Error classification

_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.EHOSTDOWN,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ETIMEDOUT,
    errno.EPIPE,
}


def is_transient(exc: BaseException) -> bool:
    """True for failures a booting machine produces and that may pass on a later attempt.

    Authentication and host-key errors are never transient, although paramiko makes them
    subclasses of SSHException.
    """
    if isinstance(exc, paramiko.AuthenticationException | paramiko.BadHostKeyException):
        return False
    if isinstance(exc, HostKeyChanged | AuthFailed):
        return False
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return True
    if isinstance(exc, socket.timeout | TimeoutError | EOFError | ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(exc, paramiko.SSHException):
        text = str(exc).lower()
        return any(
            marker in text
            for marker in ("banner", "eof", "reset", "connection closed", "timed out", "timeout")
        )
    return False


def describe_error(exc: BaseException) -> str:
    """A short, human description of a connection error."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if codes == {errno.ECONNREFUSED}:
            return "connection refused"
        if codes <= {errno.EHOSTUNREACH, errno.ENETUNREACH}:
            return "no route to host"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or str(exc)
    if isinstance(exc, EOFError):
        return "connection closed before the SSH banner"
    text = str(exc).strip()
    return text or type(exc).__name__
