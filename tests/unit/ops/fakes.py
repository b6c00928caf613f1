"""An in-memory Hypervisor for unit tests of the lab and clone operations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from labctl.errors import OperationFailed
from labctl.hypervisor import ExecResult, Machine, MachineState
from labctl.hypervisor.nspawn_image import Image

HOST_KEYS = "ssh-ed25519 AAAAfake{n} root@{name}\nssh-rsa AAAArsa{n} root@{name}\n"


@dataclass
class FakeMachine:
    name: str
    address: str
    state: MachineState = MachineState.STOPPED
    link_up: bool = True
    managed: bool = True
    identity_applied: bool = False
    source: str | None = None


@dataclass
class FakeHypervisor:
    """Records every call in ``calls``; machines answer SSH when running with the link up."""

    addresses: dict[str, str]
    name: str = "fake"
    edits_stopped_disks: bool = True
    machines: dict[str, FakeMachine] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    identity_exit: int = 0
    ignores_graceful_stop: set[str] = field(default_factory=set)
    torn_down: bool = False
    _keys: int = 0

    def _get(self, name: str) -> FakeMachine:
        if name not in self.machines:
            raise OperationFailed(f"no machine {name}")
        return self.machines[name]

    def check(self) -> None:
        self.calls.append(("check",))

    def inspect(self, name: str) -> Machine:
        m = self.machines.get(name)
        if m is None:
            return Machine(name, MachineState.ABSENT)
        return Machine(name, m.state, m.address, m.managed, link_up=m.link_up)

    def list(self) -> list[Machine]:
        return [self.inspect(n) for n in self.machines]

    def create(self, name: str, image: Image, *, address: str) -> None:
        self.calls.append(("create", name))
        self.machines[name] = FakeMachine(name, address)

    def clone(self, source: str, target: str, *, linked: bool = False) -> None:
        self.calls.append(("clone", source, target, "linked" if linked else "full"))
        self._get(source)
        if target in self.machines:
            raise OperationFailed(f"{target} exists")
        self.machines[target] = FakeMachine(
            target, self.addresses[target], link_up=False, source=source
        )

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self._get(name).state = MachineState.RUNNING

    def stop(self, name: str, *, hard: bool = False) -> None:
        self.calls.append(("stop", name, "hard" if hard else "graceful"))
        if hard or name not in self.ignores_graceful_stop:
            self._get(name).state = MachineState.STOPPED

    def pause(self, name: str) -> None:
        self.calls.append(("pause", name))
        self._get(name).state = MachineState.PAUSED

    def resume(self, name: str) -> None:
        self.calls.append(("resume", name))
        self._get(name).state = MachineState.RUNNING

    def set_link(self, name: str, up: bool) -> None:
        self.calls.append(("set_link", name, "up" if up else "down"))
        self._get(name).link_up = up

    def exec_in_guest(self, name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        m = self._get(name)
        is_identity = len(argv) > 3 and argv[3] == "identity"
        self.calls.append(("exec", name, "identity" if is_identity else argv[0]))
        if not self.edits_stopped_disks and m.state is not MachineState.RUNNING:
            raise OperationFailed(f"{name} is not running")
        if is_identity:
            if self.identity_exit:
                return ExecResult(tuple(argv), self.identity_exit, "", "disk full")
            m.identity_applied = True
            self._keys += 1
            return ExecResult(tuple(argv), 0, HOST_KEYS.format(n=self._keys, name=name), "")
        return ExecResult(tuple(argv), 0, "", "")

    def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))
        self.machines.pop(name, None)

    def teardown(self) -> None:
        self.torn_down = True

    def answers(self, ip: str) -> bool:
        return any(
            m.state is MachineState.RUNNING and m.link_up and m.address.split("/")[0] == ip
            for m in self.machines.values()
        )

    def probe(self, ip: str, port: int, timeout: float) -> str:
        if self.answers(ip):
            return "SSH-2.0-fake"
        raise ConnectionRefusedError(f"{ip}:{port} refused")
