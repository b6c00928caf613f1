"""A Hypervisor whose calls run in the VirtualBox sandbox's Python (test harness).

labctl's pyvbox driver needs VirtualBox's SDK binding (vboxapi), which exists only for the
sandbox's Python. ``RemoteHypervisor`` starts ``tests/vbox/hv_server.py`` there with a profile
and forwards every Hypervisor call to it: the driver code that runs is labctl's own, unmodified;
only the call crosses a pipe. LabctlErrors come back as the same classes with the same message.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from labctl import errors
from labctl.hypervisor import ExecResult, Machine, MachineState, Nic, VirtualBoxHost
from tests.vbox.sandbox import SandboxRun


def served(sandbox: SandboxRun, profile: dict[str, Any]) -> RemoteHypervisor:
    """The run's server for this profile, started on first use and kept for the session
    (starting the sandbox's Python with labctl and pyvbox costs about a second)."""
    key = json.dumps(profile, sort_keys=True)
    server = sandbox.servers.get(key)
    if server is None:
        server = sandbox.servers[key] = RemoteHypervisor(sandbox, profile)
    assert isinstance(server, RemoteHypervisor)
    return server


class RemoteHypervisor:
    """The Hypervisor protocol (and VirtualBoxDetails), served from inside the sandbox."""

    def __init__(self, sandbox: SandboxRun, profile: dict[str, Any]) -> None:
        self._proc = subprocess.Popen(
            sandbox.argv("python3", "-m", "tests.vbox.hv_server", json.dumps(profile)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.name = str(self._read()["ready"])

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"hv_server died (exit {self._proc.wait()}); see stderr")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        assert self._proc.stdin is not None
        self._proc.stdin.write(
            json.dumps({"method": method, "args": args, "kwargs": kwargs}) + "\n"
        )
        reply = self._read()
        if "error" in reply:
            err = reply["error"]
            cls = getattr(errors, err["type"])
            assert issubclass(cls, errors.LabctlError)
            raise cls(err["message"], hint=err["hint"])
        return reply["ok"]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)

    @staticmethod
    def _machine(data: dict[str, Any]) -> Machine:
        nics = tuple(Nic(**nic) for nic in data.pop("nics", []))
        return Machine(**{**data, "state": MachineState(data["state"]), "nics": nics})

    # -- Hypervisor -------------------------------------------------------------------------

    def check(self) -> None:
        self._call("check")

    def inspect(self, name: str) -> Machine:
        return self._machine(self._call("inspect", name))

    def list(self) -> list[Machine]:
        return [self._machine(m) for m in self._call("list")]

    def clone(self, source: str, target: str, *, linked: bool = False) -> None:
        self._call("clone", source, target, linked=linked)

    def start(self, name: str) -> None:
        self._call("start", name)

    def stop(self, name: str, *, hard: bool = False) -> None:
        self._call("stop", name, hard=hard)

    def pause(self, name: str) -> None:
        self._call("pause", name)

    def resume(self, name: str) -> None:
        self._call("resume", name)

    def set_link(self, name: str, up: bool) -> None:
        self._call("set_link", name, up)

    def exec_in_guest(self, name: str, argv: Sequence[str], *, timeout: float = 60.0) -> ExecResult:
        data = self._call("exec_in_guest", name, list(argv), timeout=timeout)
        return ExecResult(tuple(data["argv"]), data["exit_code"], data["stdout"], data["stderr"])

    def destroy(self, name: str) -> None:
        self._call("destroy", name)

    # -- VirtualBoxDetails ------------------------------------------------------------------

    def nic_attachment(self, name: str) -> str:
        return str(self._call("nic_attachment", name))

    def guest_additions(self, name: str) -> str | None:
        value = self._call("guest_additions", name)
        return None if value is None else str(value)

    def host_report(self) -> VirtualBoxHost:
        return VirtualBoxHost(**self._call("host_report"))
