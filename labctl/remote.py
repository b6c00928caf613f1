"""Remote execution: argv in, Result out.

``Remote`` is the protocol every operation uses to talk to a machine; ``SshRemote`` implements
it with paramiko. A non-zero exit raises ``CommandFailed`` carrying the Result.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from labctl.errors import OperationFailed

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
