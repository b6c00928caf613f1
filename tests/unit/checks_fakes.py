"""In-memory fakes for verify, drill and doctor unit tests: machines, clock, executor."""

from __future__ import annotations

import base64
import ipaddress
import json
import shlex
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from typing import Any, ParamSpec, TypeVar

from labctl.errors import GuestUnreachable
from labctl.hypervisor import ExecResult, Machine, MachineState, Nic, VirtualBoxHost
from labctl.remote import CommandFailed, Result

P = ParamSpec("P")
T = TypeVar("T")

HOST_KEYS = {
    "prod-back": ("ssh-ed25519", base64.b64encode(b"prod-back host key 32 bytes....").decode()),
    "prod-back-standby": (
        "ssh-ed25519",
        base64.b64encode(b"standby host key 32 bytes.....").decode(),
    ),
}
STRANGER_KEY = ("ssh-ed25519", base64.b64encode(b"somebody else entirely.........").decode())


# One pair on the nspawn lab subnet, shared by the verify, drill and doctor unit tests.
PAIR_PROFILE = """\
[lab]
name = "unit-lab"
backend = "nspawn"

[machines.prod-back]
address = "10.249.90.10/24"

[pairs.back]
primary = "prod-back"
standby = "prod-back-standby"
standby_address = "10.249.90.20/24"
interface = "host0"
vrid = 51
vip = ["10.249.90.100/24"]
priority = { primary = 101, standby = 100 }
advert_int = 1
auth_pass = "s3cret!"
"""
# The same pair with the heartbeat health check (needs check_heartbeat.sh beside the profile).
PAIR_PROFILE_WITH_CHECK = (
    PAIR_PROFILE + '[pairs.back.check]\nscript = "check_heartbeat.sh"\ninterval = 2\nweight = 2\n'
)


class FakeClock:
    """Monotonic time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


class SyncExecutor(Executor):
    """Runs every task at once, in the caller's thread: deterministic tests."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered through the future, like a real pool
            future.set_exception(exc)
        return future


@dataclass
class FakeMachine:
    """One lab machine as a remote sees it: addresses, keepalived, files."""

    name: str
    address: str
    interface: str = "host0"
    vips: list[str] = field(default_factory=list)
    service: str = "active"
    vrrp_state: str | None = "BACKUP"
    priority: int = 100
    reachable: bool = True
    files: dict[str, bytes] = field(default_factory=dict)
    script_user: bool = True
    version: str | None = "2.2.7"
    mac: str = "02:00:00:00:00:01"
    stats: dict[str, tuple[str, str]] = field(default_factory=dict)
    neigh: dict[str, str] = field(default_factory=dict)  # ip -> MAC answering ARP
    adverts: list[tuple[str, int, int]] = field(default_factory=list)
    tap: list[tuple[str, str, int]] = field(default_factory=list)  # VRRP seen: src, dst, count
    journal: list[tuple[int, str]] = field(default_factory=list)  # (realtime usec, message)
    commands: list[tuple[str, ...]] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)  # of each command, in order
    on_command: Callable[[tuple[str, ...]], None] | None = None
    has_nft: bool = False
    commands_failing: set[str] = field(default_factory=set)  # argv[0]s that exit 1

    def ip_addr(self) -> str:
        lines = ["1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever"]
        lines.append(f"2: {self.interface}    inet {self.address} brd x scope global")
        for vip in self.vips:
            lines.append(f"2: {self.interface}    inet {vip} scope global secondary")
        return "\n".join(lines) + "\n"

    def json_dump(self) -> str:
        if self.service != "active" or self.vrrp_state is None:
            return ""
        code = {"INIT": 0, "BACKUP": 1, "MASTER": 2, "FAULT": 3}[self.vrrp_state]
        data = {
            "iname": "VI_back",
            "state": code,
            "effective_priority": self.priority,
            "auth_data": "",
        }
        return json.dumps([{"data": data, "stats": {}}]) + "\n"


class FakeRemote:
    """A Remote over a FakeMachine: understands the handful of commands labctl sends."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.name = machine.name
        self.closed = False

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        m = self.machine
        cmd = tuple(argv)
        m.commands.append(cmd)
        m.timeouts.append(timeout)
        if m.on_command is not None:
            m.on_command(cmd)
        if not m.reachable:
            raise GuestUnreachable(f"{m.name}: connection timed out")
        out, code = self._answer(cmd)
        if cmd[0] in m.commands_failing:
            out, code = "", 1
        result = Result(cmd, code, out, "")
        if check and code != 0:
            raise CommandFailed(m.name, result)
        return result

    def _answer(self, cmd: tuple[str, ...]) -> tuple[str, int]:
        m = self.machine
        if cmd == ("ip", "-o", "-4", "addr", "show"):
            return m.ip_addr(), 0
        if cmd[:2] == ("sh", "-c") and "@@journal" in cmd[2]:
            journal = "".join(f"{usec} {msg}\n" for usec, msg in m.journal)
            conf = m.files.get("/etc/keepalived/keepalived.conf", b"").decode()
            return (
                f"@@journal\n{journal}@@json\n{m.json_dump()}@@addr\n{m.ip_addr()}"
                f"@@neigh\n10.249.90.1 dev host0 lladdr 02:00:00:00:00:01 REACHABLE\n"
                f"@@conf\n{conf}@@end\n"
            ), 0
        if cmd[:2] == ("sh", "-c") and "@@json" in cmd[2]:
            kind, key = HOST_KEYS.get(m.name, STRANGER_KEY)
            out = (
                f"@@addr\n{m.ip_addr()}@@service\n{m.service}\n@@hostkeys\n"
                f"{kind} {key} root@{m.name}\n@@json\n{m.json_dump()}@@end\n"
            )
            return out, 0
        if cmd == ("keepalived", "--signum=JSON"):
            return "36\n", 0
        if cmd[:2] == ("sh", "-c") and "@@state" in cmd[2]:
            state = m.json_dump() if m.service == "active" else "STOPPED\n"
            return f"{m.ip_addr()}@@state\n{state}@@end\n", 0
        if cmd[:3] == ("journalctl", "-u", "keepalived"):
            lines = [
                json.dumps({"__REALTIME_TIMESTAMP": str(usec), "MESSAGE": msg})
                for usec, msg in m.journal
            ]
            return "".join(f"{line}\n" for line in lines), 0
        if cmd[:2] == ("sh", "-c") and "@@version" in cmd[2]:
            return self._facts(cmd[2]), 0
        if cmd[:2] == ("sh", "-c") and "ip neigh show" in cmd[2]:
            vip = shlex.split(cmd[2].splitlines()[-1])[4]
            mac = m.neigh.get(vip)
            return (f"{vip} lladdr {mac} REACHABLE\n" if mac else f"{vip} INCOMPLETE\n"), 0
        if cmd[:2] == ("perl", "-e") and "vrrp tap" in cmd[2]:
            lines = [f"{src} {dst} {count}" for src, dst, count in m.tap]
            return "\n".join([*lines, "done"]) + "\n", 0
        if cmd[:2] == ("perl", "-e") and "packet socket" in cmd[2]:
            return "advert\n", 0
        if cmd[:2] == ("perl", "-e"):
            lines = [f"{src} {vrid} {prio}" for src, vrid, prio in m.adverts]
            return "\n".join([*lines, "done"]) + "\n", 0
        if cmd == ("systemctl", "stop", "keepalived"):
            m.service = "inactive"
            return "", 0
        if cmd == ("systemctl", "start", "keepalived"):
            m.service = "active"
            return "", 0
        if cmd[:2] == ("sh", "-c") and "command -v nft" in cmd[2]:
            return ("/usr/sbin/nft\n", 0) if m.has_nft else ("", 1)
        return "", 0

    def _facts(self, script: str) -> str:
        m = self.machine
        version = f"Keepalived v{m.version} (01/16,2022)" if m.version else ""
        stat_lines = []
        for path in shlex.split(script.split("stat -c '%U %a %n'", 1)[1].split("2>")[0]):
            if path in m.stats:
                owner, mode = m.stats[path]
                stat_lines.append(f"{owner} {mode} {path}")
        return (
            f"@@version\n{version}\n@@user\n{'present' if m.script_user else ''}\n"
            f"@@addr\n{m.ip_addr()}@@link\n"
            f"1: lo: <LOOPBACK> mtu 65536 link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
            f"2: {m.interface}@if5: <BROADCAST> mtu 1500 link/ether {m.mac} brd ff:ff:ff:ff:ff:ff\n"
            f"@@service\n{m.service}\n@@stat\n" + "\n".join(stat_lines) + "\n@@end\n"
        )

    def put(self, data: bytes, path: str, *, mode: int = 0o644, owner: str = "root:root") -> None:
        if not self.machine.reachable:
            raise GuestUnreachable(f"{self.name}: connection timed out")
        self.machine.files[path] = data
        self.machine.commands.append(("put", path))
        if self.machine.on_command is not None:
            self.machine.on_command(("put", path))

    def get(self, path: str) -> bytes | None:
        if not self.machine.reachable:
            raise GuestUnreachable(f"{self.name}: connection timed out")
        return self.machine.files.get(path)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeHypervisor:
    """Records what drills and doctor ask of the backend."""

    name: str = "fake"
    calls: list[tuple[str, ...]] = field(default_factory=list)
    unavailable: str | None = None
    on_call: Callable[[tuple[str, ...]], None] | None = None
    states: dict[str, MachineState] = field(default_factory=dict)  # default: RUNNING
    links: dict[str, bool] = field(default_factory=dict)  # default: connected

    def _record(self, *call: str) -> None:
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)

    def check(self) -> None:
        from labctl.errors import BackendUnavailable

        if self.unavailable:
            raise BackendUnavailable(self.unavailable, hint="install it")

    def inspect(self, name: str) -> Machine:
        state = self.states.get(name, MachineState.RUNNING)
        return Machine(name, state, link_up=self.links.get(name, True))

    def list(self) -> list[Machine]:
        return []

    def clone(self, source: str, target: str, *, linked: bool = False) -> None:
        self._record("clone", source, target)

    def start(self, name: str) -> None:
        self._record("start", name)

    def stop(self, name: str, *, hard: bool = False) -> None:
        self._record("stop", name)

    def pause(self, name: str) -> None:
        self._record("pause", name)
        self.states[name] = MachineState.PAUSED

    def resume(self, name: str) -> None:
        self._record("resume", name)
        self.states[name] = MachineState.RUNNING

    def set_link(self, name: str, up: bool) -> None:
        self._record("set_link", name, "up" if up else "down")
        self.links[name] = up

    def exec_in_guest(self, name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        return ExecResult(tuple(argv), 0, "", "")

    def destroy(self, name: str) -> None:
        self._record("destroy", name)


@dataclass
class FakePartitioner(FakeHypervisor):
    def block_vrrp(self, a: str, b: str) -> None:
        self._record("block_vrrp", a, b)

    def unblock_vrrp(self, a: str, b: str) -> None:
        self._record("unblock_vrrp", a, b)


@dataclass
class FakeVirtualBox(FakeHypervisor):
    attachments: dict[str, str] = field(default_factory=dict)
    additions: dict[str, str | None] = field(default_factory=dict)
    start_blocker: str | None = None
    nics: dict[str, tuple[Nic, ...]] = field(default_factory=dict)

    def nic_attachment(self, name: str) -> str:
        return self.attachments.get(name, "intnet")

    def guest_additions(self, name: str) -> str | None:
        return self.additions.get(name, "7.0.14")

    def inspect(self, name: str) -> Machine:
        found = super().inspect(name)
        return replace(found, nics=self.nics.get(name, ()))

    def host_report(self) -> VirtualBoxHost:
        return VirtualBoxHost("7.2.22_Debian", "fake", "a unit-test fake", self.start_blocker)


def in_subnet(vip: str, address: str) -> bool:
    return ipaddress.IPv4Interface(vip).ip in ipaddress.IPv4Interface(address).network


def as_json(obj: Any) -> str:
    return json.dumps(obj, default=str)
