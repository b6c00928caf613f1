"""Connection policy without a network: error classification, endpoints, waiting, host keys."""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import paramiko
import pytest

from labctl import paths
from labctl.errors import GuestUnreachable, LabctlError, OperationFailed, ProfileError
from labctl.hostkeys import HostKeyChanged, HostKeyStore
from labctl.ops.connect import connect, connect_all, connect_each, endpoint_for
from labctl.profile import Profile, parse
from labctl.remote import AuthFailed, ConnectFailed, Endpoint, Remote, Result, is_transient

PROFILE = """
[lab]
name = "unit-lab"
backend = "{backend}"
{ssh}
[machines.web]
address = "10.249.90.11/24"
[pairs.front]
primary = "web"
standby = "web-standby"
standby_address = "10.249.90.21/24"
vrid = 50
vip = ["10.249.90.101/24"]
priority = {{ primary = 101, standby = 100 }}
auth_pass = "s3cret"
"""


def _profile(backend: str = "nspawn", ssh: str = "") -> Profile:
    return parse(PROFILE.format(backend=backend, ssh=ssh))


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "labctl"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    return tmp_path


def _refused() -> OSError:
    return paramiko.ssh_exception.NoValidConnectionsError(
        {("10.0.0.1", 22): OSError(errno.ECONNREFUSED, "refused")}
    )


@pytest.mark.parametrize(
    "exc",
    [
        _refused(),
        TimeoutError("timed out"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        EOFError(),
        paramiko.SSHException("Error reading SSH protocol banner"),
    ],
)
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        paramiko.AuthenticationException("Authentication failed."),
        paramiko.BadHostKeyException(
            "h", paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
        ),
        paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"),
        socket.gaierror(-2, "Name or service not known"),
    ],
)
def test_permanent_errors(exc: BaseException) -> None:
    assert not is_transient(exc)


class _FakeRemote:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def run(
        self,
        argv: object,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        return Result(("true",), 0, "", "")

    def put(self, data: bytes, path: str, *, mode: int = 0o644, owner: str = "root:root") -> None:
        pass

    def get(self, path: str) -> bytes | None:
        return None

    def close(self) -> None:
        self.closed = True


class _ScriptedOpener:
    """Fails with the scripted errors per machine, then connects."""

    def __init__(self, script: dict[str, list[LabctlError]]) -> None:
        self.script = script
        self.calls: list[tuple[str, float]] = []
        self.opened: list[_FakeRemote] = []

    def __call__(
        self, endpoint: Endpoint, *, host_keys: HostKeyStore, timeout: float, command_timeout: float
    ) -> Remote:
        self.calls.append((endpoint.name, timeout))
        errors = self.script.get(endpoint.name, [])
        if errors:
            raise errors.pop(0)
        remote = _FakeRemote(endpoint.name)
        self.opened.append(remote)
        return remote


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _ep(name: str = "web") -> Endpoint:
    return Endpoint(name=name, host="10.249.90.11")


def test_connect_retries_transient_failures_then_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = _Clock()
    opener = _ScriptedOpener({"web": [ConnectFailed(_ep(), "connection refused")] * 3})
    with caplog.at_level(logging.INFO, logger="labctl.ops.connect"):
        remote = connect(
            _ep(),
            host_keys=HostKeyStore(tmp_path / "kh"),
            deadline=90,
            sleep=clock.sleep,
            clock=clock,
            opener=opener,
        )
    assert remote.name == "web" and len(opener.calls) == 4
    assert len(clock.slept) == 3
    assert sum("connection refused" in r.getMessage() for r in caplog.records) == 3


def test_connect_attempt_timeout_never_exceeds_what_is_left(tmp_path: Path) -> None:
    clock = _Clock()
    opener = _ScriptedOpener({"web": [ConnectFailed(_ep(), "timed out")] * 100})
    with pytest.raises(GuestUnreachable):
        connect(
            _ep(),
            host_keys=HostKeyStore(tmp_path / "kh"),
            deadline=5,
            attempt_timeout=10,
            sleep=clock.sleep,
            clock=clock,
            opener=opener,
        )
    assert opener.calls[0][1] == 5  # first attempt: the whole deadline, not 10 s
    assert all(t <= 5 for _, t in opener.calls)


@pytest.mark.parametrize(
    "error",
    [
        AuthFailed("web: authentication failed"),
        HostKeyChanged("web", "10.249.90.11", "SHA256:new", ["SHA256:old"]),
    ],
)
def test_connect_never_retries_auth_or_host_key_errors(tmp_path: Path, error: LabctlError) -> None:
    clock = _Clock()
    opener = _ScriptedOpener({"web": [error]})
    with pytest.raises(type(error)):
        connect(
            _ep(),
            host_keys=HostKeyStore(tmp_path / "kh"),
            deadline=90,
            sleep=clock.sleep,
            clock=clock,
            opener=opener,
        )
    assert len(opener.calls) == 1 and clock.slept == []


def _lab_key() -> None:
    key = paths.lab_key_path("unit-lab")
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("not really a key")


def test_connect_all_returns_one_remote_per_machine() -> None:
    _lab_key()
    prof = _profile()
    opener = _ScriptedOpener({"web-standby": [ConnectFailed(_ep("web-standby"), "refused")]})
    clock = _Clock()
    remotes = connect_all(
        prof,
        [*prof.nodes("front"), ("web", "10.249.90.11")],
        sleep=clock.sleep,
        clock=clock,
        opener=opener,
    )
    assert sorted(remotes) == ["web", "web-standby"]
    assert sorted(name for name, _ in opener.calls) == ["web", "web-standby", "web-standby"]


def test_connect_all_names_every_unreachable_machine_and_closes_the_rest() -> None:
    _lab_key()
    prof = _profile(ssh="[timeouts]\nboot = 20")
    forever: list[LabctlError] = [ConnectFailed(_ep("web-standby"), "connection refused")] * 1000
    opener = _ScriptedOpener({"web-standby": forever})
    clock = _Clock()
    with pytest.raises(GuestUnreachable) as info:
        connect_all(prof, prof.nodes("front"), sleep=clock.sleep, clock=clock, opener=opener)
    assert "web-standby did not answer SSH within 20 s" in info.value.message
    assert all(r.closed for r in opener.opened) and len(opener.opened) == 1


def test_connect_each_keeps_errors_per_machine() -> None:
    _lab_key()
    prof = _profile()
    opener = _ScriptedOpener({"web": [AuthFailed("web: authentication failed")]})
    results = connect_each(prof, prof.nodes("front"), opener=opener)
    assert isinstance(results["web"], AuthFailed)
    assert not isinstance(results["web-standby"], LabctlError)


def test_nspawn_lab_uses_the_lab_key() -> None:
    _lab_key()
    ep = endpoint_for(_profile(), "web", "10.249.90.11/24")
    assert ep == Endpoint("web", "10.249.90.11", 22, "root", str(paths.lab_key_path("unit-lab")))


def test_nspawn_lab_without_its_key_says_how_to_get_one() -> None:
    with pytest.raises(OperationFailed) as info:
        endpoint_for(_profile(), "web", "10.249.90.11/24")
    assert "does not exist" in info.value.message and "lab up" in (info.value.hint or "")


def test_explicit_key_must_exist(tmp_path: Path) -> None:
    prof = _profile(ssh=f'[ssh]\nkey = "{tmp_path}/nope"')
    with pytest.raises(ProfileError, match=r"ssh\.key: file not found"):
        endpoint_for(prof, "web", "10.249.90.11")


def test_ssh_config_supplies_host_user_port_and_identity(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh" / "id_web").write_text("k")
    (home / ".ssh" / "config").write_text(
        "Host web\n  HostName 127.0.0.1\n  Port 2222\n  User admin\n"
        f"  IdentityFile {home}/.ssh/id_web\n"
        "Host 10.249.90.*\n  User ops\n"
    )
    prof = _profile(backend="virtualbox")
    assert endpoint_for(prof, "web", "10.249.90.11/24") == Endpoint(
        "web", "127.0.0.1", 2222, "admin", f"{home}/.ssh/id_web"
    )
    # no Host block redirects the standby: the address pattern applies
    assert endpoint_for(prof, "web-standby", "10.249.90.21/24") == Endpoint(
        "web-standby", "10.249.90.21", 22, "ops", None
    )
    # explicit profile keys beat ~/.ssh/config
    prof = _profile(backend="virtualbox", ssh='[ssh]\nuser = "root"\nport = 22')
    assert endpoint_for(prof, "web", "10.249.90.11/24").user == "root"
    assert endpoint_for(prof, "web", "10.249.90.11/24").port == 22


def test_host_key_store_matches_hashed_names_and_ports(tmp_path: Path) -> None:
    key = paramiko.ECDSAKey.generate()
    other = paramiko.ECDSAKey.generate()
    hashed = paramiko.HostKeys.hash_host("10.0.0.5")
    user = tmp_path / "user"
    user.write_text(f"{hashed} {key.get_name()} {key.get_base64()}\n# comment\ngarbage\n")
    store = HostKeyStore(tmp_path / "record", user_files=(user,))
    store.check("m", "10.0.0.5", key)  # trusted through the hashed entry
    assert store.notices == []
    with pytest.raises(HostKeyChanged, match=r"10\.0\.0\.5"):
        store.check("m", "10.0.0.5", other)
    store.check("m", "[10.0.0.5]:2222", other)  # a different port is a different host
    assert len(store.notices) == 1
    assert (tmp_path / "record").read_text().startswith("[10.0.0.5]:2222 ecdsa-sha2-nistp256 ")


def test_unreadable_entry_for_a_host_is_never_trust_on_first_use(tmp_path: Path) -> None:
    record = tmp_path / "record"
    record.write_text("10.0.0.7 ssh-ed25519 not-base64!\n10.0.0.8 ssh-ed25519\n")
    store = HostKeyStore(record, user_files=())
    with pytest.raises(HostKeyChanged, match=r"unreadable entry \(.*record:1\)"):
        store.check("m", "10.0.0.7", paramiko.ECDSAKey.generate())
    assert store.notices == []
