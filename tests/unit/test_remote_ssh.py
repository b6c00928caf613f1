"""SshRemote against a real OpenSSH sshd on loopback (temp host key, temp authorized key).

Covers what a user sees from the SSH layer: commands and their exit codes, atomic writes,
reads, trust on first use, a changed host key refused, authentication failure not retried,
a refused port waited on until the deadline (on an injected clock), and sudo -n.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from labctl.errors import EXIT_FAILED, EXIT_UNREACHABLE, GuestUnreachable, OperationFailed
from labctl.hostkeys import HostKeyChanged, HostKeyStore, fingerprint
from labctl.ops.connect import connect
from labctl.remote import (
    AuthFailed,
    CommandFailed,
    ConnectFailed,
    Endpoint,
    Remote,
    SudoPasswordRequired,
)
from labctl.ssh import SshRemote

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "labctl-test", "-f", str(path)],
        check=True,
    )


@dataclass
class Sshd:
    port: int
    host_key: paramiko.PKey
    client_key: Path
    bin_dir: Path
    tmp: Path

    def endpoint(self, **kw: object) -> Endpoint:
        args: dict[str, object] = {
            "name": "loop",
            "host": "127.0.0.1",
            "port": self.port,
            "key_filename": str(self.client_key),
        }
        args.update(kw)
        return Endpoint(**args)  # type: ignore[arg-type]

    def store(self) -> HostKeyStore:
        return HostKeyStore(
            record=self.tmp / "labctl_known_hosts", user_files=(self.tmp / "user_known_hosts",)
        )


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)  # polling a condition: sshd binds within milliseconds
    raise AssertionError("sshd did not listen")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    assert Path(SSHD).exists(), "openssh-server is required (scripts/bootstrap installs it)"
    tmp = tmp_path_factory.mktemp("sshd")
    _keygen(tmp / "host_key")
    _keygen(tmp / "client_key")
    shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    # stand-ins for sudo, selected per test through $LABCTL_TEST_SUDO in the remote command
    (bin_dir / "sudo").write_text(
        "#!/bin/sh\n"
        'if [ -e "$0.password" ]; then echo "sudo: a password is required" >&2; exit 1; fi\n'
        '[ "$1" = -n ] && [ "$2" = -- ] || exit 2\n'
        "shift 2\n"
        'exec "$@"\n'
    )
    (bin_dir / "sudo").chmod(0o755)
    port = _free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {tmp / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        f"PidFile {tmp / 'sshd.pid'}\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n"
        f"SetEnv PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "LogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc, time.monotonic() + 10)
        host_key = paramiko.Ed25519Key.from_private_key_file(str(tmp / "host_key"))
        yield Sshd(port, host_key, tmp / "client_key", bin_dir, tmp)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def remote(sshd: Sshd) -> Iterator[SshRemote]:
    r = SshRemote.open(
        sshd.endpoint(), host_keys=sshd.store(), timeout=5, allow_agent=False, look_for_keys=False
    )
    try:
        yield r
    finally:
        r.close()


def test_run_returns_output_and_exit_code(remote: SshRemote) -> None:
    assert isinstance(remote, Remote)
    result = remote.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_run_quotes_argv_and_feeds_stdin(remote: SshRemote) -> None:
    result = remote.run(["printf", "%s|", "a b", "$HOME", "it's"])
    assert result.stdout == "a b|$HOME|it's|"
    assert remote.run(["cat"], stdin=b"fed\n").stdout == "fed\n"


def test_nonzero_exit_raises_with_stderr_tail(remote: SshRemote) -> None:
    script = "for i in $(seq 1 40); do echo line$i >&2; done; exit 7"
    with pytest.raises(CommandFailed) as info:
        remote.run(["sh", "-c", script])
    err = info.value
    assert err.result.exit_code == 7
    assert err.exit_code == EXIT_FAILED
    assert "exited 7" in err.message and "line40" in err.message
    assert "line1\n" not in err.message  # only the tail


def test_command_timeout_is_an_error_not_a_hang(remote: SshRemote) -> None:
    with pytest.raises(OperationFailed, match=r"did not finish within 0\.5 s"):
        remote.run(["sleep", "30"], timeout=0.5)


def test_put_is_atomic_with_mode(remote: SshRemote, tmp_path: Path) -> None:
    target = tmp_path / "conf"
    target.write_text("old\n")
    os.chmod(tmp_path, 0o755)
    remote.put(b"secret\n", str(target), mode=0o640)
    assert target.read_bytes() == b"secret\n"
    assert target.stat().st_mode & 0o7777 == 0o640
    assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]  # no temp file left


def test_put_replaces_by_rename_so_readers_never_see_half(
    remote: SshRemote, tmp_path: Path
) -> None:
    target = tmp_path / "big"
    target.write_bytes(b"a" * 100)
    before = target.stat().st_ino
    remote.put(b"b" * 300_000, str(target), mode=0o644)
    assert target.stat().st_ino != before  # a new inode renamed over, not rewritten in place
    assert target.read_bytes() == b"b" * 300_000


def test_put_into_missing_directory_fails_cleanly(remote: SshRemote, tmp_path: Path) -> None:
    with pytest.raises(OperationFailed, match="cannot write"):
        remote.put(b"x", str(tmp_path / "nope" / "f"))


def test_get_returns_bytes_or_none(remote: SshRemote, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"\x00\x01data")
    assert remote.get(str(tmp_path / "f")) == b"\x00\x01data"
    assert remote.get(str(tmp_path / "missing")) is None


def test_unknown_host_is_trusted_on_first_use_and_recorded(sshd: Sshd, tmp_path: Path) -> None:
    store = HostKeyStore(record=tmp_path / "lab" / "known_hosts", user_files=())
    SshRemote.open(
        sshd.endpoint(), host_keys=store, timeout=5, allow_agent=False, look_for_keys=False
    ).close()
    line = (tmp_path / "lab" / "known_hosts").read_text()
    assert line == f"[127.0.0.1]:{sshd.port} ssh-ed25519 {sshd.host_key.get_base64()}\n"
    assert len(store.notices) == 1 and fingerprint(sshd.host_key) in store.notices[0]
    # second time: known, nothing new recorded, no notice
    SshRemote.open(
        sshd.endpoint(), host_keys=store, timeout=5, allow_agent=False, look_for_keys=False
    ).close()
    assert (tmp_path / "lab" / "known_hosts").read_text() == line
    assert len(store.notices) == 1


def test_key_from_user_known_hosts_is_trusted(sshd: Sshd, tmp_path: Path) -> None:
    user_file = tmp_path / "user_known_hosts"
    user_file.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {sshd.host_key.get_base64()}\n")
    store = HostKeyStore(record=tmp_path / "record", user_files=(user_file,))
    SshRemote.open(
        sshd.endpoint(), host_keys=store, timeout=5, allow_agent=False, look_for_keys=False
    ).close()
    assert not (tmp_path / "record").exists() and store.notices == []


def test_changed_host_key_is_refused_naming_both_fingerprints(sshd: Sshd, tmp_path: Path) -> None:
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.client_key))  # any other key
    record = tmp_path / "known_hosts"
    record.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other.get_base64()}\n")
    store = HostKeyStore(record=record, user_files=())
    with pytest.raises(HostKeyChanged) as info:
        SshRemote.open(
            sshd.endpoint(), host_keys=store, timeout=5, allow_agent=False, look_for_keys=False
        )
    message = info.value.message
    assert "loop" in message and f"[127.0.0.1]:{sshd.port}" in message
    assert fingerprint(sshd.host_key) in message and fingerprint(other) in message
    assert info.value.exit_code == EXIT_FAILED
    assert record.read_text().count("\n") == 1  # the offered key was not recorded


def test_authentication_failure_is_not_retried(sshd: Sshd, tmp_path: Path) -> None:
    _keygen(tmp_path / "stranger")
    endpoint = sshd.endpoint(key_filename=str(tmp_path / "stranger"))
    attempts = 0

    def opener(
        endpoint: Endpoint, *, host_keys: HostKeyStore, timeout: float, command_timeout: float
    ) -> Remote:
        nonlocal attempts
        attempts += 1
        return SshRemote.open(
            endpoint, host_keys=host_keys, timeout=timeout, allow_agent=False, look_for_keys=False
        )

    with pytest.raises(AuthFailed, match=r"loop .*authentication failed"):
        connect(endpoint, host_keys=sshd.store(), deadline=60, sleep=_no_sleep, opener=opener)
    assert attempts == 1


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"should not wait (asked to sleep {seconds} s)")


def test_refused_port_is_retried_until_the_deadline(sshd: Sshd) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    endpoint = Endpoint(name="ghost", host="127.0.0.1", port=_free_port())
    with pytest.raises(GuestUnreachable) as info:
        connect(endpoint, host_keys=sshd.store(), deadline=30, sleep=sleep, clock=lambda: now[0])
    err = info.value
    assert not isinstance(err, ConnectFailed)
    assert err.exit_code == EXIT_UNREACHABLE
    assert "ghost did not answer SSH within 30 s" in err.message
    assert f"root@127.0.0.1:{endpoint.port}" in err.message and "connection refused" in err.message
    assert len(slept) >= 5 and sum(slept) <= 30  # waited, backing off, never past the deadline
    assert f"{len(slept) + 1} times" in err.message


def test_sudo_wraps_every_command_and_file_operation(sshd: Sshd, tmp_path: Path) -> None:
    r = SshRemote.open(
        sshd.endpoint(), host_keys=sshd.store(), timeout=5, allow_agent=False, look_for_keys=False
    )
    r.sudo = True  # the loopback sshd only knows root; a stand-in sudo runs what follows `--`
    try:
        assert r.run(["sh", "-c", 'echo "$0"', "via"]).stdout == "via\n"
        target = tmp_path / "conf"
        r.put(b"data\n", str(target), mode=0o600)
        assert target.read_bytes() == b"data\n" and target.stat().st_mode & 0o777 == 0o600
        assert r.get(str(target)) == b"data\n"
        assert r.get(str(tmp_path / "missing")) is None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]
    finally:
        r.close()


def test_sudo_wanting_a_password_is_a_clear_error(sshd: Sshd) -> None:
    marker = sshd.bin_dir / "sudo.password"
    marker.touch()
    r = SshRemote.open(
        sshd.endpoint(), host_keys=sshd.store(), timeout=5, allow_agent=False, look_for_keys=False
    )
    r.sudo = True
    try:
        with pytest.raises(SudoPasswordRequired) as info:
            r.run(["true"])
        assert "loop: user 'root' needs passwordless sudo" in info.value.message
        assert info.value.hint is not None and "NOPASSWD" in info.value.hint
    finally:
        marker.unlink()
        r.close()
