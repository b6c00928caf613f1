"""Reaching the lab's machines over SSH: who to log in as, and how long to wait.

This is the waiting policy for every command that talks to guests (provision, verify, doctor,
drills): retry only transient failures (refused, timeout, reset, no route, EOF before the
banner) with tenacity, under the profile's ``[timeouts]`` deadline, logging what is awaited.
Authentication and host-key errors end the wait at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import paramiko
import tenacity

from labctl import paths
from labctl.errors import GuestUnreachable, LabctlError, OperationFailed, ProfileError
from labctl.profile import Node, Profile, host_ip
from labctl.remote import (
    AuthFailed,
    ConnectFailed,
    Endpoint,
    HostKeyChanged,
    HostKeyStore,
    Remote,
)
from labctl.ssh import SshRemote

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]
Clock = Callable[[], float]


class Opener(Protocol):
    """Makes one connection attempt (``SshRemote.open`` or a test double)."""

    def __call__(
        self,
        endpoint: Endpoint,
        *,
        host_keys: HostKeyStore,
        timeout: float,
        command_timeout: float,
    ) -> Remote: ...


def _open_ssh(
    endpoint: Endpoint, *, host_keys: HostKeyStore, timeout: float, command_timeout: float
) -> Remote:
    return SshRemote.open(
        endpoint, host_keys=host_keys, timeout=timeout, command_timeout=command_timeout
    )


def ssh_config_path() -> Path:
    return Path("~/.ssh/config").expanduser()


def _ssh_config(host: str) -> dict[str, object]:
    path = ssh_config_path()
    if not path.is_file():
        return {}
    try:
        config = paramiko.SSHConfig.from_path(str(path))
        return dict(config.lookup(host))
    except (OSError, paramiko.SSHException) as exc:
        raise OperationFailed(f"cannot read {path}: {exc}") from exc


def endpoint_for(profile: Profile, name: str, address: str) -> Endpoint:
    """How to log in to one machine of the lab.

    Explicit ``[ssh]`` keys in the profile win. Otherwise, for labs on real machines,
    ``~/.ssh/config`` applies (a ``Host NAME`` block may redirect with HostName/Port, and
    supply User and IdentityFile); nspawn guests are labctl's own and use the lab key.
    """
    ssh = profile.ssh
    explicit = ssh.model_fields_set
    ip = str(host_ip(address))
    host, user, port = ip, ssh.user, ssh.port
    key: str | None = None
    options: dict[str, object] = {}
    if profile.lab.backend != "nspawn":
        by_name = _ssh_config(name)
        redirected = str(by_name.get("hostname", name)) != name
        options = by_name if redirected else _ssh_config(ip)
        if redirected:
            host = str(by_name["hostname"])
        if "user" not in explicit and "user" in options:
            user = str(options["user"])
        if "port" not in explicit and "port" in options:
            port = int(str(options["port"]))
    if ssh.key_path is not None:
        if not ssh.key_path.is_file():
            raise ProfileError(f"ssh.key: file not found: {ssh.key_path}")
        key = str(ssh.key_path)
    elif profile.lab.backend == "nspawn":
        lab_key = paths.lab_key_path(profile.lab.name)
        if not lab_key.is_file():
            raise OperationFailed(
                f"the lab's SSH key {lab_key} does not exist",
                hint="`labctl lab up` creates it with the lab's machines",
            )
        key = str(lab_key)
    else:
        identity = options.get("identityfile")
        files = identity if isinstance(identity, list) else []
        existing = [str(Path(f).expanduser()) for f in files if Path(f).expanduser().is_file()]
        key = existing[0] if existing else None
    return Endpoint(name=name, host=host, port=port, user=user, key_filename=key)


def host_key_store(profile: Profile) -> HostKeyStore:
    """Trusted host keys for the lab: labctl's record plus ~/.ssh/known_hosts."""
    return HostKeyStore(record=paths.known_hosts_path(profile.lab.name))


def _stop_on_clock(clock: Clock, start: float, deadline: float) -> tenacity.stop.stop_base:
    """stop_before_delay measured on an injectable clock (tests advance it from their sleep)."""

    class _Stop(tenacity.stop.stop_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            return clock() - start + retry_state.upcoming_sleep >= deadline

    return _Stop()


def connect(
    endpoint: Endpoint,
    *,
    host_keys: HostKeyStore,
    deadline: float,
    attempt_timeout: float = 10.0,
    command_timeout: float = 300.0,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    opener: Opener = _open_ssh,
) -> Remote:
    """Connect to one machine, waiting up to ``deadline`` seconds for it to answer.

    Raises:
        GuestUnreachable: it never answered (names the machine, what was tried, last error).
        AuthFailed, HostKeyChanged, SudoPasswordRequired, OperationFailed: at once, no retry.
    """
    start = clock()
    attempts = 0

    def attempt() -> Remote:
        nonlocal attempts
        attempts += 1
        remaining = deadline - (clock() - start)
        return opener(
            endpoint,
            host_keys=host_keys,
            timeout=max(min(attempt_timeout, remaining), 0.5),
            command_timeout=command_timeout,
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ConnectFailed)
        & tenacity.retry_if_not_exception_type(
            (paramiko.AuthenticationException, paramiko.BadHostKeyException)
        )
        & tenacity.retry_if_not_exception_type((AuthFailed, HostKeyChanged)),
        stop=tenacity.stop_before_delay(deadline) | _stop_on_clock(clock, start, deadline),
        wait=tenacity.wait_exponential(multiplier=0.25, min=0.25, max=2.0),
        sleep=sleep,
        before_sleep=tenacity.before_sleep_log(log, logging.INFO),
        reraise=True,
    )
    try:
        return retrying(attempt)
    except ConnectFailed as exc:
        raise GuestUnreachable(
            f"{endpoint.name} did not answer SSH within {deadline:g} s: tried "
            f"{endpoint.describe()} {attempts} time{'s' if attempts != 1 else ''}, "
            f"last: {exc.reason}",
            hint=f"is {endpoint.name} running and is {endpoint.host} its address? "
            "(labctl lab status; [timeouts] boot sets the wait)",
        ) from exc


def _name_address(node: Node | tuple[str, str]) -> tuple[str, str]:
    return (node.name, node.address) if isinstance(node, Node) else node


def connect_each(
    profile: Profile,
    nodes: Iterable[Node | tuple[str, str]],
    *,
    deadline: float | None = None,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    host_keys: HostKeyStore | None = None,
    opener: Opener = _open_ssh,
) -> dict[str, Remote | LabctlError]:
    """Connect to every node concurrently; each gets its Remote or the error that stopped it.

    One connection per machine: a name listed twice is connected once.
    """
    wanted = dict(_name_address(n) for n in nodes)
    store = host_keys or host_key_store(profile)
    wait = profile.timeouts.boot if deadline is None else deadline

    def one(item: tuple[str, str]) -> Remote | LabctlError:
        name, address = item
        try:
            endpoint = endpoint_for(profile, name, address)
            return connect(
                endpoint,
                host_keys=store,
                deadline=wait,
                attempt_timeout=profile.timeouts.connect,
                command_timeout=profile.timeouts.command,
                sleep=sleep,
                clock=clock,
                opener=opener,
            )
        except LabctlError as exc:
            return exc

    if not wanted:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(wanted), 16)) as pool:
        results = list(pool.map(one, wanted.items()))
    return dict(zip(wanted, results, strict=True))


def connect_all(
    profile: Profile,
    nodes: Iterable[Node | tuple[str, str]],
    *,
    deadline: float | None = None,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    host_keys: HostKeyStore | None = None,
    opener: Opener = _open_ssh,
) -> dict[str, Remote]:
    """Connect to every node concurrently, or fail as a whole (closing what did connect).

    Raises:
        GuestUnreachable: naming every machine that did not answer in time.
        LabctlError: the first other failure (authentication, host key, sudo).
    """
    results = connect_each(
        profile,
        nodes,
        deadline=deadline,
        sleep=sleep,
        clock=clock,
        host_keys=host_keys,
        opener=opener,
    )
    errors = {n: r for n, r in results.items() if isinstance(r, LabctlError)}
    if not errors:
        return {n: r for n, r in results.items() if not isinstance(r, LabctlError)}
    close_all(r for r in results.values() if not isinstance(r, LabctlError))
    others = [e for e in errors.values() if not isinstance(e, GuestUnreachable)]
    if others or len(errors) == 1:
        raise (others or list(errors.values()))[0]
    first = next(iter(errors.values()))
    raise GuestUnreachable("; ".join(e.message for e in errors.values()), hint=first.hint)


def close_all(remotes: Iterable[Remote]) -> None:
    """Close connections, ignoring errors from ones that already broke."""
    for remote in remotes:
        try:
            remote.close()
        except Exception:  # closing a broken connection must not hide the real error
            log.debug("closing %s failed", remote.name, exc_info=True)
