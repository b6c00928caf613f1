"""An in-memory Debian machine for provisioning tests: files, packages, users, keepalived.

It implements the Remote protocol by answering exactly the commands provisioning sends (an
unknown command fails the test, so the table stays honest) and records every change.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labctl.remote import CommandFailed, Result

KEEPALIVED_REJECTS_BAD_IF = (
    "(/etc/keepalived/.keepalived.conf.labctl-new: Line 13) WARNING - interface {ifname} for "
    "vrrp_instance VI_x doesn't exist\nNon-existent interface specified in configuration\n"
)


@dataclass
class File:
    data: bytes
    mode: int
    owner: str = "root:root"


@dataclass
class FakeMachine:
    """One machine. ``events`` is shared by a lab so the order across machines is visible."""

    name: str
    address: str  # with prefix, as `ip -o addr` shows it
    events: list[tuple[str, str]] = field(default_factory=list)
    installed: bool = False
    users: set[str] = field(default_factory=lambda: {"root"})
    files: dict[str, File] = field(default_factory=dict)
    dirs: dict[str, tuple[int, int]] = field(default_factory=lambda: {"/etc": (0, 0o755)})
    active: bool = False
    enabled: bool = False
    pid: int = 0
    loaded: bytes | None = None  # the config keepalived runs with
    ifname: str = "eth0"
    apt_error: str | None = None
    commands: list[tuple[str, ...]] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    config_test: Callable[[bytes], tuple[int, str]] | None = None
    closed: bool = False
    _next_pid: int = 1000

    # -- Remote -----------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        argv = tuple(argv)
        self.commands.append(argv)
        code, out, err = self._dispatch(argv)
        result = Result(argv, code, out, err)
        if check and code != 0:
            raise CommandFailed(self.name, result)
        return result

    def put(self, data: bytes, path: str, *, mode: int = 0o644, owner: str = "root:root") -> None:
        directory = path.rsplit("/", 1)[0]
        assert directory in self.dirs, f"{self.name}: put into missing directory {directory}"
        self.files[path] = File(data, mode, owner)
        self.writes.append(path)

    def get(self, path: str) -> bytes | None:
        self.reads.append(path)
        f = self.files.get(path)
        return f.data if f else None

    def close(self) -> None:
        self.closed = True

    # -- what the machine does --------------------------------------------------------------

    def mutations(self) -> list[tuple[str, ...]]:
        """Commands that change the machine (everything but probes, reads and tests)."""
        readonly = ("installed=", "systemctl show", "keepalived -t", "journalctl")
        return [c for c in self.commands if not any(r in " ".join(c) for r in readonly)] + [
            ("put", w) for w in self.writes
        ]

    def _dispatch(self, argv: tuple[str, ...]) -> tuple[int, str, str]:
        joined = " ".join(argv)
        if argv[:2] == ("sh", "-c") and "installed=" in argv[2]:
            return 0, self._probe(argv[4], argv[5]), ""
        if argv[:1] == ("env",) and "apt-get" in argv and "keepalived" in argv:
            if self.apt_error:
                return 100, "Reading package lists...\n", self.apt_error
            self.installed = True
            self.dirs.setdefault("/etc/keepalived", (0, 0o755))
            self.events.append((self.name, "install"))
            return 0, "Setting up keepalived\n", ""
        if argv[:1] == ("useradd",):
            self.users.add(argv[-1])
            return 0, "", ""
        if argv[:2] == ("install", "-d"):
            self.dirs[argv[-1]] = (0, int(argv[argv.index("-m") + 1], 8))
            return 0, "", ""
        if argv[:2] == ("sh", "-c") and "keepalived -t" in argv[2]:
            return self._config_test(argv[4])
        if argv[:2] == ("sh", "-c") and "cp -p" in argv[2]:
            candidate, conf, backup = argv[4], argv[5], argv[6]
            if conf in self.files:
                self.files[backup] = self.files[conf]
            self.files[conf] = self.files.pop(candidate)
            return 0, "", ""
        if argv[:3] == ("rm", "-f", "--"):
            self.files.pop(argv[3], None)
            return 0, "", ""
        if argv[:1] == ("systemctl",) and argv[1] in ("enable", "start", "reload"):
            return self._systemctl(argv[1])
        if argv[:2] == ("systemctl", "show"):
            state = "active" if self.active else "inactive"
            return 0, f"ActiveState={state}\nMainPID={self.pid}\n", ""
        if argv[:1] == ("journalctl",):
            return 0, "Starting keepalived\n", ""
        raise AssertionError(f"{self.name}: the fake does not know `{shlex.join(argv)}` ({joined})")

    def _probe(self, script: str, conf_path: str) -> str:
        # the output of the real probe on Debian 12 (systemctl show, stat -c, sha256sum)
        lines = [
            f"installed={int(self.installed)}",
            f"user={int('keepalived_script' in self.users)}",
            f"MainPID={self.pid}",
            f"ActiveState={'active' if self.active else 'inactive'}",
        ]
        unit_state = ("enabled" if self.enabled else "disabled") if self.installed else ""
        lines.append(f"UnitFileState={unit_state}")
        d = self.dirs.get("/etc/keepalived")
        if d:
            lines.append(f"stat {d[0]} {d[1]:o} /etc/keepalived")
        for path in (script, conf_path):
            f = self.files.get(path) if path else None
            if f is not None and path == script:
                owner = 0 if f.owner == "root:root" else 1000
                lines.append(f"stat {owner} {f.mode:o} {path}")
        for path in (script, conf_path):
            f = self.files.get(path) if path else None
            if f is not None:
                lines.append(f"{hashlib.sha256(f.data).hexdigest()}  {path}")
        lines.append("---")
        lines.append("1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever")
        lines.append(
            f"2: {self.ifname}    inet {self.address} brd 10.249.90.255 scope global "
            f"{self.ifname}\\       valid_lft forever preferred_lft forever"
        )
        return "\n".join(lines) + "\n"

    def _config_test(self, path: str) -> tuple[int, str, str]:
        f = self.files.get(path)
        if f is None:
            return 90, "", f"labctl: {path} is missing\n"
        assert self.installed, "config test before keepalived is installed"
        if self.config_test is not None:
            code, err = self.config_test(f.data)
            return code, "", err
        if f"interface {self.ifname}\n" not in f.data.decode():
            ifname = f.data.decode().split("interface ", 1)[1].split()[0]
            return 5, "", KEEPALIVED_REJECTS_BAD_IF.format(ifname=ifname)
        # keepalived 2.2.7 with a non-root script user: killed, no complaint
        return 143, "", "Terminated\n"

    def _systemctl(self, verb: str) -> tuple[int, str, str]:
        assert self.installed
        self.events.append((self.name, verb))
        if verb == "enable":
            self.enabled = True
        elif verb == "start" and not self.active:
            conf = self.files.get("/etc/keepalived/keepalived.conf")
            if conf is None:
                return 1, "", "Job for keepalived.service failed.\n"
            self.active, self.loaded = True, conf.data
            self._next_pid += 1
            self.pid = self._next_pid
        elif verb == "reload":
            if not self.active:
                return 1, "", "keepalived.service is not active, cannot reload.\n"
            self.loaded = self.files["/etc/keepalived/keepalived.conf"].data
        return 0, "", ""


@dataclass
class FakeLab:
    """Machines by name, and a connector handing them to provision()."""

    machines: dict[str, FakeMachine] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, address: str, **kw: object) -> FakeMachine:
        machine = FakeMachine(name, address, events=self.events, **kw)  # type: ignore[arg-type]
        self.machines[name] = machine
        return machine
