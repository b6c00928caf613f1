"""The ssh backend: hypervisor-only commands exit 4 with one line; status says what SSH tells."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labctl import profile as profile_mod
from labctl.errors import BackendUnavailable
from labctl.hypervisor import Hypervisor, MachineState, get_hypervisor, require
from labctl.hypervisor.ssh_backend import SshBackend
from tests.unit.conftest import BASE_PROFILE, CliResult

SSH_PROFILE = BASE_PROFILE.replace('backend = "virtualbox"', 'backend = "ssh"')


@pytest.fixture
def ssh_profile(write_profile: Callable[[str], Path]) -> Path:
    return write_profile(SSH_PROFILE)


def test_registry_loads_the_ssh_backend(ssh_profile: Path) -> None:
    hv = get_hypervisor(profile_mod.load(str(ssh_profile)))
    assert isinstance(hv, SshBackend) and isinstance(hv, Hypervisor)
    hv.check()  # nothing to install for it
    assert hv.list() == []


@pytest.mark.parametrize(
    ("args", "needs", "instead"),
    [
        (["clone", "prod-back"], "clone copies a machine's disk", "create the standby"),
        (["up"], "up creates and boots machines", "start the machines where they run"),
        (["down"], "down powers machines off", "--fault stop"),
        (["destroy", "--yes"], "destroy deletes machines labctl created", "delete the machines"),
        (["failover", "back", "--fault", "freeze"], "--fault freeze", "--fault crash"),
        (["failover", "back", "--fault", "link"], "--fault link", "--fault partition"),
    ],
)
def test_hypervisor_commands_exit_4_with_one_line(
    cli: Callable[..., CliResult], ssh_profile: Path, args: list[str], needs: str, instead: str
) -> None:
    # refused before any machine is dialled: the profile's 192.168.68.x hosts are never reached
    result = cli("-p", str(ssh_profile), *args)
    assert result.code == 4
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ") and needs in lines[0] and instead in lines[0]
    assert 'lab.backend "ssh"' in lines[0]
    assert result.out == ""


def test_operations_the_backend_can_do_are_not_refused(ssh_profile: Path) -> None:
    hv = get_hypervisor(profile_mod.load(str(ssh_profile)))
    for operation in ("inspect", "list", "check", "crash", "partition", "stop-keepalived"):
        require(hv, operation)
    with pytest.raises(BackendUnavailable) as caught:
        hv.pause("prod-back")
    assert caught.value.exit_code == 4


@pytest.fixture
def ssh_listener() -> Iterator[tuple[str, int]]:
    """A loopback server that greets like sshd (and nothing else)."""
    server = socket.create_server(("127.0.0.2", 0))
    server.settimeout(0.05)  # so the thread sees stop quickly
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        server.close()
        thread.join(timeout=5)


def test_status_shows_what_ssh_can_tell(
    cli: Callable[..., CliResult],
    write_profile: Callable[[str], Path],
    ssh_listener: tuple[str, int],
) -> None:
    _host, port = ssh_listener
    text = (
        SSH_PROFILE.replace("192.168.68.80/24", "127.0.0.2/8")
        .replace("192.168.68.90/24", "127.0.0.3/8")  # nothing listens there: refused
        .replace("192.168.68.89/24", "127.0.0.100/8")
        + f"\n[ssh]\nport = {port}\n"
    )
    result = cli("-p", str(write_profile(text)), "status", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["backend"] == "ssh"
    states = {m["machine"]: (m["state"], m["address"], m["managed"]) for m in doc["machines"]}
    assert states == {
        "prod-back": ("running", "127.0.0.2", False),
        "prod-back-standby": ("unreachable", "127.0.0.3", False),
    }


def test_inspect_needs_an_ssh_banner_not_just_an_open_port(ssh_profile: Path) -> None:
    silent = socket.create_server(("127.0.0.2", 0))  # accepts (backlog), never greets
    try:
        port = silent.getsockname()[1]
        hv = SshBackend(
            profile_mod.load(str(ssh_profile)),
            resolve=lambda _n, _a: ("127.0.0.2", port),
            timeout=0.2,
        )
        assert hv.inspect("prod-back").state is MachineState.UNREACHABLE
        assert hv.inspect("not-in-profile").state is MachineState.ABSENT
    finally:
        silent.close()
