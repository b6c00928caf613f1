"""SshRemote: the Remote protocol over one paramiko SSH connection.

Host-key decisions are ``labctl.hostkeys``' (the client itself trusts nothing and hands every
key to the store); error classes and classification are ``labctl.remote``'s.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import secrets
import select
import shlex
import threading
import time
from collections.abc import Sequence
from typing import Any

import paramiko

from labctl.errors import GuestUnreachable, LabctlError, OperationFailed
from labctl.hostkeys import HostKeyChanged, HostKeyStore, fingerprint
from labctl.remote import (
    AuthFailed,
    CommandFailed,
    ConnectFailed,
    Endpoint,
    Result,
    SudoPasswordRequired,
    describe_error,
    is_transient,
)

_SUDO_PASSWORD_MARKERS = ("a password is required", "a terminal is required")
_MISSING = 66  # exit status of our `get` helper for "no such file" (EX_NOINPUT)

log = logging.getLogger(__name__)
# paramiko's transport thread logs expected failures (a banner error while a machine boots) at
# ERROR with a traceback; labctl reports them itself, so keep them off stderr unless configured.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class _StorePolicy(paramiko.MissingHostKeyPolicy):
    """Hands every host-key decision to the HostKeyStore (the client itself trusts nothing)."""

    def __init__(self, store: HostKeyStore, endpoint: Endpoint) -> None:
        self.store = store
        self.endpoint = endpoint

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        self.store.check(self.endpoint.name, self.endpoint.known_hosts_name, key)


_RSA_WIRE_TYPES = ("rsa-sha2-512", "rsa-sha2-256")


def _transport_factory(trusted_types: Sequence[str]) -> Any:
    """A paramiko Transport that asks first for the key types we already trust for the host."""

    def make(sock: Any, **kwargs: Any) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        if trusted_types:
            options = transport.get_security_options()
            wanted: list[str] = []
            for kind in trusted_types:
                wanted.extend(_RSA_WIRE_TYPES if kind == "ssh-rsa" else [kind])
            available = list(options.key_types)
            first = [k for k in wanted if k in available]
            options.key_types = tuple(dict.fromkeys([*first, *available]))
        return transport

    return make


class SshRemote:
    """A Remote over one paramiko SSH connection, reused for every command and file.

    Commands run as root: directly when logged in as root, else through ``sudo -n --`` (a sudo
    that wants a password raises SudoPasswordRequired instead of hanging).

    Attributes:
        name: the machine's name.
        endpoint: where and as whom it is logged in.
        command_timeout: default seconds one command may take.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        client: paramiko.SSHClient,
        *,
        command_timeout: float = 300.0,
        sudo: bool | None = None,
    ) -> None:
        self.name = endpoint.name
        self.endpoint = endpoint
        self.command_timeout = command_timeout
        # sudo=None: decided by the login user; explicit for tests that stand in a fake sudo
        self.sudo = endpoint.user != "root" if sudo is None else sudo
        self._client = client
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()

    # -- connecting -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        endpoint: Endpoint,
        *,
        host_keys: HostKeyStore,
        timeout: float = 10.0,
        command_timeout: float = 300.0,
        allow_agent: bool = True,
        look_for_keys: bool = True,
    ) -> SshRemote:
        """One connection attempt (no retry) that classifies failure.

        Args:
            endpoint: where and as whom to log in.
            host_keys: trusted keys; unknown hosts are recorded there on first use.
            timeout: seconds for the TCP connect, the banner and authentication.
            command_timeout: default seconds for each command on this connection.
            allow_agent: offer keys from ssh-agent.
            look_for_keys: offer ~/.ssh/id_* keys.

        Raises:
            ConnectFailed: a transient failure (refused, timeout, reset, no route, early EOF).
            AuthFailed: no credential was accepted.
            HostKeyChanged: the machine's key differs from the trusted one.
            SudoPasswordRequired: non-root user without passwordless sudo.
            OperationFailed: any other SSH failure.
        """
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_StorePolicy(host_keys, endpoint))
        trusted = host_keys.trusted(endpoint.known_hosts_name)
        trusted_types = [t.key.get_name() for t in trusted if t.key is not None]
        try:
            client.connect(
                endpoint.host,
                port=endpoint.port,
                username=endpoint.user,
                key_filename=endpoint.key_filename,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                allow_agent=allow_agent,
                look_for_keys=look_for_keys,
                transport_factory=_transport_factory(trusted_types),
            )
        except LabctlError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyChanged(
                endpoint.name,
                endpoint.known_hosts_name,
                fingerprint(exc.key),
                [fingerprint(exc.expected_key)],
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise _auth_failed(endpoint, exc) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            if is_transient(exc):
                raise ConnectFailed(endpoint, describe_error(exc)) from exc
            if "no authentication methods" in str(exc).lower():
                raise _auth_failed(endpoint, exc) from exc
            raise OperationFailed(
                f"{endpoint.name} ({endpoint.describe()}): SSH failed: {describe_error(exc)}"
            ) from exc
        remote = cls(endpoint, client, command_timeout=command_timeout)
        if remote.sudo:
            try:
                remote.run(["true"], timeout=timeout)
            except Exception:
                remote.close()
                raise
        return remote

    # -- commands -------------------------------------------------------------------------

    def _wire(self, argv: Sequence[str]) -> str:
        return shlex.join(["sudo", "-n", "--", *argv] if self.sudo else list(argv))

    def _exec(self, command: str, timeout: float, stdin: bytes | None) -> tuple[int, bytes, bytes]:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise GuestUnreachable(f"{self.name}: the SSH connection is closed")
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            chan = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise GuestUnreachable(
                f"{self.name}: SSH connection lost: {describe_error(exc)}"
            ) from exc
        try:
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            while True:
                while chan.recv_ready():
                    out.append(chan.recv(65536))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
                if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OperationFailed(
                        f"{self.name}: `{command}` did not finish within {timeout:g} s",
                        hint="raise [timeouts] command in the profile if it needs longer",
                    )
                select.select([chan], [], [], min(remaining, 5.0))
            remaining = max(deadline - time.monotonic(), 0.1)
            if not chan.status_event.wait(remaining):
                raise OperationFailed(
                    f"{self.name}: `{command}` did not finish within {timeout:g} s"
                )
            code = chan.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise GuestUnreachable(
                f"{self.name}: SSH connection lost while running `{command}`: {describe_error(exc)}"
            ) from exc
        finally:
            chan.close()
        return code, b"".join(out), b"".join(err)

    def _run_bytes(
        self, argv: Sequence[str], *, timeout: float | None, stdin: bytes | None
    ) -> tuple[Result, bytes]:
        argv = tuple(argv)
        code, out, err = self._exec(self._wire(argv), timeout or self.command_timeout, stdin)
        result = Result(argv, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        if self.sudo and code == 1 and any(m in result.stderr for m in _SUDO_PASSWORD_MARKERS):
            raise SudoPasswordRequired(self.endpoint)
        return result, out

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """Run argv as root (joined with shlex.join) and wait for it.

        Args:
            argv: the command and its arguments; scripts go as ``["sh", "-c", script]``.
            check: raise CommandFailed when it exits non-zero.
            timeout: seconds it may take (default: the connection's command_timeout).
            stdin: bytes fed to its standard input.

        Raises:
            CommandFailed: non-zero exit with check=True (carries the Result).
            SudoPasswordRequired: sudo asked for a password.
            OperationFailed: it did not finish within timeout.
            GuestUnreachable: the connection was lost.
        """
        result, _ = self._run_bytes(argv, timeout=timeout, stdin=stdin)
        if check and not result.ok:
            raise CommandFailed(self.name, result)
        return result

    # -- files ----------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise OperationFailed(f"{self.name}: cannot open SFTP: {exc}") from exc
        return self._sftp

    def put(self, data: bytes, path: str, *, mode: int = 0o644, owner: str = "root:root") -> None:
        """Write data atomically: temp file next to path, chmod/chown, then rename.

        The temp file gets its final mode before any data is written, so a secret is never
        readable by others, and a reader of path sees the old or the new file, never half.

        Args:
            data: the file's full content.
            path: absolute target path on the machine.
            mode: permission bits of the result.
            owner: ``user:group`` of the result.
        """
        directory, base = posixpath.split(path)
        token = secrets.token_hex(4)
        staged = posixpath.join(directory, f".{base}.labctl-{token}")
        with self._sftp_lock:
            sftp = self._sftp_client()
            upload = staged if not self.sudo else f"/tmp/.labctl-{token}"
            try:
                with sftp.open(upload, "wb") as fh:
                    fh.chmod(mode if not self.sudo else 0o600)
                    fh.write(data)
            except OSError as exc:
                self._discard(sftp, upload)
                raise OperationFailed(f"{self.name}: cannot write {path}: {exc}") from exc
        user, _, group = owner.partition(":")
        if self.sudo:
            script = (
                'rc=0; install -m "$1" -o "$2" -g "$3" -- "$4" "$5" && mv -f -- "$5" "$6" '
                '|| rc=$?; rm -f -- "$4" "$5"; exit $rc'
            )
            self.run(
                ["sh", "-c", script, "sh", f"{mode:04o}", user, group or user, upload, staged, path]
            )
            return
        script = 'chown -- "$1" "$2" && mv -f -- "$2" "$3" || { rc=$?; rm -f -- "$2"; exit $rc; }'
        if owner in ("root:root", "root", "0:0"):
            with self._sftp_lock:
                try:
                    sftp.posix_rename(staged, path)
                    return
                except OSError as exc:
                    self._discard(sftp, staged)
                    raise OperationFailed(f"{self.name}: cannot write {path}: {exc}") from exc
        self.run(["sh", "-c", script, "sh", owner, staged, path])

    @staticmethod
    def _discard(sftp: paramiko.SFTPClient, path: str) -> None:
        with contextlib.suppress(OSError):
            sftp.remove(path)

    def get(self, path: str) -> bytes | None:
        """A file's content as bytes, or None when it does not exist."""
        if self.sudo:
            script = f'[ -e "$1" ] || exit {_MISSING}; exec cat -- "$1"'
            argv = ["sh", "-c", script, "sh", path]
            result, raw = self._run_bytes(argv, timeout=None, stdin=None)
            if result.exit_code == _MISSING:
                return None
            if not result.ok:
                raise CommandFailed(self.name, result)
            return raw
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                with sftp.open(path, "rb") as fh:
                    return bytes(fh.read())
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise OperationFailed(f"{self.name}: cannot read {path}: {exc}") from exc

    def close(self) -> None:
        """Close SFTP and the SSH connection (safe to call twice)."""
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self._client.close()


def _auth_failed(endpoint: Endpoint, exc: BaseException) -> AuthFailed:
    offered = f"key {endpoint.key_filename}, " if endpoint.key_filename else ""
    return AuthFailed(
        f"{endpoint.name} ({endpoint.describe()}): authentication failed "
        f"(offered {offered}ssh-agent keys, ~/.ssh/id_*): {describe_error(exc)}",
        hint="set ssh.key in the profile or an IdentityFile in ~/.ssh/config, and make sure "
        f"its public key is in ~{endpoint.user}/.ssh/authorized_keys on the machine",
    )
