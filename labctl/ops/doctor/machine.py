"""Per-machine checks: what a machine shows over SSH (one command), and what it must show.

keepalived installed and its version; the script user; the VRRP interface carries the
machine's address; VirtualBox only: the lab NIC is not on NAT and Guest Additions run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labctl import keepalived as ka
from labctl.errors import LabctlError
from labctl.hypervisor import Hypervisor, VirtualBoxDetails
from labctl.ops.doctor.report import Check, Status
from labctl.ops.verify import UNREACHABLE_ERRORS, describe_error, split_sections
from labctl.profile import Node, Profile
from labctl.remote import Remote

BUGGY_VERSIONS = {
    "2.2.7": "its config test (keepalived -t) is killed or exits oddly on valid "
    "files; labctl interprets it by behaviour"
}


@dataclass(frozen=True)
class MachineFacts:
    name: str
    version: str | None  # None: keepalived not installed
    script_user: bool
    addresses: tuple[ka.IfAddr, ...]
    links: dict[str, str]  # interface -> MAC
    service: str | None
    conf: str | None = field(repr=False)  # installed keepalived.conf: holds the password
    stats: dict[str, tuple[str, str]]  # path -> (owner, octal mode)


def _facts_script(paths: Sequence[str]) -> str:
    stat_args = " ".join(shlex.quote(p) for p in paths)
    return (
        "echo @@version; command -v keepalived >/dev/null && keepalived --version 2>&1 | head -1\n"
        f"echo @@user; getent passwd {ka.SCRIPT_USER} >/dev/null && echo present\n"
        "echo @@addr; ip -o -4 addr show\n"
        "echo @@link; ip -o link show\n"
        "echo @@service; systemctl is-active keepalived 2>/dev/null\n"
        f"echo @@stat; stat -c '%U %a %n' {stat_args} 2>/dev/null\n"
        "echo @@end\n"
    )


_VERSION = re.compile(r"Keepalived v(\d+(?:\.\d+)+)")
_LINK = re.compile(r"^\d+:\s+([^\s:@]+)(?:@\S+)?:.*link/\w+\s+([0-9a-f:]{17})")


def parse_facts(name: str, stdout: str, conf: str | None) -> MachineFacts:
    parts = split_sections(stdout)
    version_match = _VERSION.search(parts.get("version", ""))
    links = {}
    for line in parts.get("link", "").splitlines():
        m = _LINK.match(line.strip())
        if m:
            links[m[1]] = m[2]
    stats = {}
    for line in parts.get("stat", "").splitlines():
        bits = line.split(maxsplit=2)
        if len(bits) == 3:
            stats[bits[2]] = (bits[0], bits[1])
    return MachineFacts(
        name=name,
        version=version_match[1] if version_match else None,
        script_user="present" in parts.get("user", ""),
        addresses=tuple(ka.parse_ip_addr(parts.get("addr", ""))),
        links=links,
        service=parts.get("service", "").strip() or None,
        conf=conf,
        stats=stats,
    )


# ---------------------------------------------------------------------------
# The checks


@dataclass
class MachineChecks:
    """Gathers a machine's facts and checks them. ``checks`` collects what was found."""

    profile: Profile
    connect: Callable[[Node], Remote]
    command_timeout: float = 30.0
    checks: list[Check] = field(default_factory=list)

    def add(
        self, subject: str, check: str, status: Status, detail: str, fix: str | None = None
    ) -> None:
        self.checks.append(Check(subject, check, status, detail, fix))

    def _scripts_of(self, name: str) -> list[str]:
        paths = []
        for pair_name, pair in self.profile.pairs.items():
            if pair.check and name in (n.name for n in self.profile.nodes(pair_name)):
                paths.append(f"{ka.KEEPALIVED_DIR}/{pair.check.script}")
        return paths

    def gather(self, node: Node) -> tuple[Remote | None, MachineFacts | None, str | None]:
        try:
            remote = self.connect(node)
        except UNREACHABLE_ERRORS as exc:
            return None, None, describe_error(exc)
        scripts = self._scripts_of(node.name)
        paths = ["/etc", ka.KEEPALIVED_DIR, *scripts]
        try:
            result = remote.run(
                ["sh", "-c", _facts_script(paths)], check=False, timeout=self.command_timeout
            )
            raw = remote.get(ka.CONF_PATH)
        except UNREACHABLE_ERRORS as exc:
            return None, None, describe_error(exc)
        conf = raw.decode("utf-8", "replace") if raw is not None else None
        return remote, parse_facts(node.name, result.stdout, conf), None

    def machine_checks(self, node: Node, f: MachineFacts, hv: Hypervisor | None) -> None:
        name = node.name
        in_pair = [p for p in self.profile.pairs if name in (n.name for n in self.profile.nodes(p))]
        provision = f"labctl provision pair {' '.join(in_pair)}".rstrip()
        if f.version is None:
            self.add(name, "keepalived", Status.WARN, "not installed", provision)
        elif f.version in BUGGY_VERSIONS:
            self.add(
                name,
                "keepalived",
                Status.WARN,
                f"version {f.version}: {BUGGY_VERSIONS[f.version]}",
                "nothing to do; a newer keepalived (>= 2.2.8) fixes it",
            )
        else:
            self.add(name, "keepalived", Status.OK, f"version {f.version}")

        needs_user = any(self.profile.pairs[p].check for p in in_pair)
        if f.script_user:
            self.add(name, "script user", Status.OK, f"{ka.SCRIPT_USER} exists")
        elif needs_user and f.conf is not None:
            self.add(
                name,
                "script user",
                Status.FAIL,
                f"{ka.SCRIPT_USER} does not exist: keepalived silently drops the check "
                "script (enable_script_security)",
                provision,
            )
        elif needs_user:
            self.add(
                name,
                "script user",
                Status.WARN,
                f"{ka.SCRIPT_USER} does not exist yet (provisioning creates it)",
                provision,
            )

        for pair_name in in_pair:
            self._interface_check(pair_name, node, f)

        if hv is not None and isinstance(hv, VirtualBoxDetails):
            self._virtualbox_checks(name, hv)

    def _interface_check(self, pair_name: str, node: Node, f: MachineFacts) -> None:
        wanted = self.profile.pairs[pair_name].interface
        actual = ka.interface_for(f.addresses, node.address)
        subject = node.name
        if wanted is not None and wanted not in f.links:
            self.add(
                subject,
                "interface",
                Status.FAIL,
                f"pairs.{pair_name}.interface {wanted} does not exist "
                f"(has: {', '.join(sorted(f.links)) or 'none'})",
                f"set pairs.{pair_name}.interface to the NIC carrying {node.ip}",
            )
        elif actual is None:
            self.add(
                subject,
                "interface",
                Status.FAIL,
                f"no interface carries its address {node.ip}",
                "fix the machine's network configuration or the profile's address",
            )
        elif wanted is not None and actual != wanted:
            self.add(
                subject,
                "interface",
                Status.FAIL,
                f"{node.ip} is on {actual}, not on pairs.{pair_name}.interface {wanted}",
                f"set pairs.{pair_name}.interface = {actual!r}",
            )
        else:
            self.add(subject, "interface", Status.OK, f"{actual} carries {node.ip}")

    def _lab_nic(self, name: str, hv: VirtualBoxDetails) -> str | None:
        """The lab NIC as users name it (``generic (VDE)``), where the backend lists NICs."""
        if not isinstance(hv, Hypervisor):
            return None
        slot = self.profile.lab.virtualbox.nic
        nic = next((n for n in hv.inspect(name).nics if n.slot == slot), None)
        return nic.describe() if nic is not None else None

    def _virtualbox_checks(self, name: str, hv: VirtualBoxDetails) -> None:
        try:
            attachment = hv.nic_attachment(name)
            additions = hv.guest_additions(name)
            described = self._lab_nic(name, hv) or attachment
        except LabctlError as exc:
            self.add(name, "virtualbox", Status.WARN, f"cannot read VM settings: {exc.message}")
            return
        if attachment == "nat":
            self.add(
                name,
                "nic attachment",
                Status.FAIL,
                "lab NIC is attached to NAT: VRRP (IP protocol 112) does not cross it",
                "attach it to a NAT network, internal network, host-only, bridged or a generic "
                "driver (VDE, UDPTunnel)",
            )
        else:
            self.add(name, "nic attachment", Status.OK, described)
        if additions is None:
            self.add(
                name,
                "guest additions",
                Status.WARN,
                "not running: no exec side channel for drills",
                "install the VirtualBox Guest Additions in the guest",
            )
        else:
            self.add(name, "guest additions", Status.OK, f"version {additions}")

    # -- pairs ---------------------------------------------------------------
