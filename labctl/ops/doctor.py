"""`labctl doctor`: checks before anything breaks, each an OK/WARN/FAIL line with a fix.

What is checked, and how:

* backend: the profile's hypervisor backend loads and ``check()`` passes.
* profile: it loaded and validated (the CLI reports an invalid profile before this runs).
* per machine, over SSH (one command each): reachable with a trusted host key (the connect
  helper refuses unknown-changed keys); keepalived installed and its version (2.2.7's config
  test is unreliable: WARN); the script user exists (FAIL when keepalived is already configured
  without it: keepalived then silently drops the check); the VRRP interface exists and carries
  the machine's address; VirtualBox only: the lab NIC is not attached to NAT (VRRP does not
  cross it) and Guest Additions run (the freeze/link drills and exec side channel need them).
* per pair: the check script and every directory above it root-owned and not group/world
  writable; each VIP inside the interface's subnet; the VIP not answered by anything before the
  pair is up (or only by the node holding it), found by an ARP probe from a node that does not
  hold it (bash's /dev/tcp triggers the ARP request; ``ip neigh`` shows who answered); the VRID
  not used by anyone else on the segment, by listening for VRRP adverts for a few seconds on a
  node with a raw socket; the installed configs of both nodes agree on VRID, VIPs, advert_int,
  version and authentication (a mismatch is a lasting split brain), and match the profile;
  each node hears the adverts its reachable peer sends (both listen at once; a peer that sends
  while the other hears nothing means the network drops VRRP: use unicast; see
  ops/doctor_adverts.py).

The listener is a few lines of Perl run with the guest's ``perl`` (Debian's perl-base is
Essential: present even on minbase guests, which have no tcpdump or python). Running it on a
node works for every backend, because the node is on the segment by definition; listening on
the host would only work where the host is on the lab segment (nspawn).

JSON shape (``labctl doctor --json``), stable; keys are never removed, only added::

    {"ok": false, "exit_code": 6,
     "counts": {"OK": 12, "WARN": 2, "FAIL": 1},
     "checks": [{"subject": "prod-back",      # lab | machine name | pairs.NAME
                 "check": "script user",
                 "status": "FAIL",             # OK | WARN | FAIL
                 "detail": "keepalived_script does not exist ...",
                 "fix": "labctl provision pair back"}]}   # null when nothing to do
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import ipaddress
import re
import shlex
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from labctl import keepalived as ka
from labctl.errors import EXIT_CHECKS, EXIT_OK, LabctlError
from labctl.hypervisor import KERNEL_DRIVER_HINT, Hypervisor, VirtualBoxDetails
from labctl.ops import doctor_adverts
from labctl.ops.verify import UNREACHABLE_ERRORS, describe_error, split_sections
from labctl.profile import Node, Profile
from labctl.remote import Remote

LISTEN_SECONDS = 3
VRRP_GROUP = "224.0.0.18"
BUGGY_VERSIONS = {
    "2.2.7": "its config test (keepalived -t) is killed or exits oddly on valid "
    "files; labctl interprets it by behaviour"
}


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    subject: str
    check: str
    status: Status
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "check": self.check,
            "status": str(self.status),
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status is not Status.FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_CHECKS

    def counts(self) -> dict[str, int]:
        return {s.value: sum(c.status is s for c in self.checks) for s in Status}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "checks": [c.to_json() for c in self.checks],
        }


# ---------------------------------------------------------------------------
# What a machine shows


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
# keepalived.conf facts that must agree between the nodes of a pair


@dataclass(frozen=True)
class ConfFacts:
    vrid: str | None
    advert_int: str | None
    version: str
    auth_type: str | None
    auth_pass: str | None  # a digest of it: the password itself is never kept
    vips: tuple[str, ...]

    def differences(self, other: ConfFacts) -> list[str]:
        names = []
        for key in ("vrid", "advert_int", "version", "auth_type", "auth_pass", "vips"):
            if getattr(self, key) != getattr(other, key):
                names.append(key)
        return names


def _word(text: str, key: str) -> str | None:
    m = re.search(rf"^\s*{key}\s+(\S+)", text, re.MULTILINE)
    return m[1] if m else None


def _digest(secret: str | None) -> str | None:
    return None if secret is None else hashlib.sha256(secret.encode()).hexdigest()[:16]


def conf_facts(text: str) -> ConfFacts:
    """What must agree between two nodes, read from a keepalived.conf (labctl's or by hand)."""
    body = re.sub(r"#.*", "", text)
    vips: list[str] = []
    block = re.search(r"virtual_ipaddress\s*\{([^}]*)\}", body)
    if block:
        for line in block[1].splitlines():
            if line.split():
                vips.append(str(ipaddress.IPv4Interface(line.split()[0]).ip))
    return ConfFacts(
        vrid=_word(body, "virtual_router_id"),
        advert_int=_word(body, "advert_int"),
        version=_word(body, "version") or "2",
        auth_type=_word(body, "auth_type"),
        auth_pass=_digest(_word(body, "auth_pass")),
        vips=tuple(sorted(vips)),
    )


# ---------------------------------------------------------------------------
# Probes on the segment


# Joins the VRRP group on the node's address and prints "source vrid priority" per advert.
LISTENER = r"""
use Socket qw(:DEFAULT pack_ip_mreq IP_ADD_MEMBERSHIP IPPROTO_IP);
my ($secs, $local) = @ARGV;
socket(my $s, AF_INET, SOCK_RAW, 112) or die "raw socket: $!\n";
setsockopt($s, IPPROTO_IP, IP_ADD_MEMBERSHIP,
           pack_ip_mreq(inet_aton("224.0.0.18"), inet_aton($local))) or warn "join: $!\n";
my $end = time + $secs;
my $rin = ''; vec($rin, fileno($s), 1) = 1;
$| = 1;
while ((my $left = $end - time) > 0) {
  my $n = select(my $rout = $rin, undef, undef, $left);
  last if $n <= 0;
  defined(recv($s, my $buf, 4096, 0)) or last;
  my $ihl = (ord(substr($buf, 0, 1)) & 15) * 4;
  my ($vt, $vrid, $prio) = unpack("C3", substr($buf, $ihl, 3));
  print inet_ntoa(substr($buf, 12, 4)), " $vrid $prio\n";
}
print "done\n";
"""


@dataclass(frozen=True)
class Advert:
    source: str
    vrid: int
    priority: int


def parse_adverts(stdout: str) -> list[Advert]:
    found = []
    for line in stdout.splitlines():
        bits = line.split()
        if len(bits) == 3 and bits[1].isdigit() and bits[2].isdigit():
            found.append(Advert(bits[0], int(bits[1]), int(bits[2])))
    return found


def arp_probe_script(vip_ip: str, interface: str) -> str:
    ip, dev = shlex.quote(vip_ip), shlex.quote(interface)
    return (
        f"ip neigh flush to {ip} dev {dev} 2>/dev/null\n"
        f"timeout 1 bash -c 'exec 3<>/dev/tcp/{vip_ip}/22' 2>/dev/null\n"
        f"ip neigh show to {ip} dev {dev}\n"
    )


_NEIGH = re.compile(r"lladdr\s+([0-9a-f:]{17})\s+(\w+)")


def parse_neigh(stdout: str) -> str | None:
    """The MAC that answered ARP for the address, or None when nothing did."""
    m = _NEIGH.search(stdout)
    if m and m[2] not in ("FAILED", "INCOMPLETE"):
        return m[1]
    return None


# ---------------------------------------------------------------------------
# The operation


@dataclass
class Doctor:
    """Runs every check. Args: profile, connect (node -> Remote, raises when unreachable),
    hypervisor (a zero-argument factory; it may raise BackendUnavailable)."""

    profile: Profile
    connect: Callable[[Node], Remote]
    hypervisor: Callable[[], Hypervisor]
    listen_seconds: int = LISTEN_SECONDS
    command_timeout: float = 30.0
    checks: list[Check] = field(default_factory=list)

    def add(
        self, subject: str, check: str, status: Status, detail: str, fix: str | None = None
    ) -> None:
        self.checks.append(Check(subject, check, status, detail, fix))

    def run(self) -> DoctorReport:
        hv = self._backend()
        self.add(
            "lab",
            "profile",
            Status.OK,
            f"{self.profile.path}: {len(self.profile.machines)} machines, "
            f"{len(self.profile.pairs)} pairs",
        )
        machines = self._machines()
        with ThreadPoolExecutor(
            max_workers=max(1, len(machines)), thread_name_prefix="doctor"
        ) as pool:
            gathered = dict(zip(machines, pool.map(self._gather, machines.values()), strict=True))
        facts: dict[str, MachineFacts] = {}
        remotes: dict[str, Remote] = {}
        try:
            for name, (remote, got, error) in gathered.items():
                if remote is None or got is None:
                    self.add(
                        name,
                        "ssh",
                        Status.FAIL,
                        f"not reachable: {error}",
                        "start it (labctl up / labctl clone) and check its host key",
                    )
                    continue
                remotes[name], facts[name] = remote, got
                self.add(name, "ssh", Status.OK, "reachable, host key trusted")
                self._machine_checks(machines[name], got, hv)
            with ThreadPoolExecutor(
                max_workers=max(1, len(self.profile.pairs)), thread_name_prefix="doctor-pair"
            ) as pool:
                pair_checks = list(
                    pool.map(lambda p: self._pair_checks(p, facts, remotes), self.profile.pairs)
                )
            for found in pair_checks:
                self.checks.extend(found)
        finally:
            for remote in remotes.values():
                with contextlib.suppress(*UNREACHABLE_ERRORS):
                    remote.close()
        return DoctorReport(tuple(self.checks))

    # -- backend -------------------------------------------------------------

    def _backend(self) -> Hypervisor | None:
        try:
            hv = self.hypervisor()
            hv.check()
        except LabctlError as exc:
            self.add(
                "lab",
                "backend",
                Status.FAIL,
                exc.message,
                exc.hint or "install what the backend needs (scripts/bootstrap)",
            )
            return None
        self.add("lab", "backend", Status.OK, f"{hv.name} usable on this host")
        if isinstance(hv, VirtualBoxDetails):
            self._virtualbox_host(hv)
        return hv

    def _virtualbox_host(self, hv: VirtualBoxDetails) -> None:
        try:
            host = hv.host_report()
        except LabctlError as exc:
            self.add("lab", "virtualbox", Status.WARN, f"cannot read its version: {exc.message}")
            return
        self.add("lab", "virtualbox", Status.OK, f"VirtualBox {host.version} via {host.driver} "
                 f"({host.why})")  # fmt: skip
        if host.start_blocker is None:
            self.add("lab", "vm start", Status.OK, "VirtualBox's kernel driver is loaded")
        else:
            self.add("lab", "vm start", Status.FAIL, host.start_blocker, KERNEL_DRIVER_HINT)

    # -- machines ------------------------------------------------------------

    def _machines(self) -> dict[str, Node]:
        found: dict[str, Node] = {}
        for pair in self.profile.pairs:
            for node in self.profile.nodes(pair):
                found.setdefault(node.name, node)
        for name, spec in self.profile.machines.items():
            found.setdefault(name, Node("", name, spec.address, "primary"))
        return found

    def _scripts_of(self, name: str) -> list[str]:
        paths = []
        for pair_name, pair in self.profile.pairs.items():
            if pair.check and name in (n.name for n in self.profile.nodes(pair_name)):
                paths.append(f"{ka.KEEPALIVED_DIR}/{pair.check.script}")
        return paths

    def _gather(self, node: Node) -> tuple[Remote | None, MachineFacts | None, str | None]:
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

    def _machine_checks(self, node: Node, f: MachineFacts, hv: Hypervisor | None) -> None:
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

    def _virtualbox_checks(self, name: str, hv: VirtualBoxDetails) -> None:
        try:
            attachment = hv.nic_attachment(name)
            additions = hv.guest_additions(name)
        except LabctlError as exc:
            self.add(name, "virtualbox", Status.WARN, f"cannot read VM settings: {exc.message}")
            return
        if attachment == "nat":
            self.add(
                name,
                "nic attachment",
                Status.FAIL,
                "lab NIC is attached to NAT: VRRP (IP protocol 112) does not cross it",
                "attach it to a NAT network, internal network, host-only or bridged",
            )
        else:
            self.add(name, "nic attachment", Status.OK, f"{attachment}")
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

    def _pair_checks(
        self, pair_name: str, facts: dict[str, MachineFacts], remotes: dict[str, Remote]
    ) -> list[Check]:
        out: list[Check] = []
        subject = f"pairs.{pair_name}"
        pair = self.profile.pairs[pair_name]
        nodes = [n for n in self.profile.nodes(pair_name) if n.name in facts]

        def add(check: str, status: Status, detail: str, fix: str | None = None) -> None:
            out.append(Check(subject, check, status, detail, fix))

        provision = f"labctl provision pair {pair_name}"
        if pair.check is not None:
            path = f"{ka.KEEPALIVED_DIR}/{pair.check.script}"
            for node in nodes:
                add(
                    "script permissions",
                    *_script_safety(path, facts[node.name], node.name, provision),
                )
        if not nodes:
            add(
                "pair",
                Status.FAIL,
                "no node of the pair is reachable",
                "start the machines (labctl up)",
            )
            return out

        for vip in pair.vip:
            vip_ip = ipaddress.IPv4Interface(vip).ip
            for node in nodes:
                own = next(
                    (
                        a
                        for a in facts[node.name].addresses
                        if a.interface.ip == ipaddress.IPv4Interface(node.address).ip
                    ),
                    None,
                )
                if own is None:
                    continue
                if vip_ip in own.interface.network:
                    add(
                        "vip subnet",
                        Status.OK,
                        f"{vip_ip} is inside {own.interface.network} on {node.name}",
                    )
                else:
                    add(
                        "vip subnet",
                        Status.FAIL,
                        f"{vip_ip} is outside {own.interface.network} of {node.name}",
                        f"pick pairs.{pair_name}.vip inside {own.interface.network}",
                    )
            out.extend(self._vip_answer(pair_name, vip, nodes, facts, remotes))
        # both listen for the same few seconds, side by side
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="doctor-adverts") as pool:
            heard = pool.submit(self._advert_check, pair_name, nodes, remotes)
            out.extend(self._vrid_check(pair_name, nodes, remotes))
            out.extend(heard.result())
        out.extend(self._conf_check(pair_name, nodes, facts))
        return out

    def _vip_answer(
        self,
        pair_name: str,
        vip: str,
        nodes: Sequence[Node],
        facts: dict[str, MachineFacts],
        remotes: dict[str, Remote],
    ) -> list[Check]:
        subject = f"pairs.{pair_name}"
        vip_ip = str(ipaddress.IPv4Interface(vip).ip)
        holders = [n for n in nodes if ka.holds(facts[n.name].addresses, vip)]
        probers = [n for n in nodes if n not in holders]
        if len(holders) == 2:
            return [
                Check(
                    subject,
                    "vip answered",
                    Status.WARN,
                    f"{vip_ip} is on both nodes (split brain)",
                    "labctl verify",
                )
            ]
        if not probers:
            return [
                Check(
                    subject,
                    "vip answered",
                    Status.WARN,
                    f"{vip_ip}: no reachable node without it to probe from",
                )
            ]
        prober = probers[0]
        iface = ka.interface_for(facts[prober.name].addresses, prober.address)
        if iface is None:
            return []
        try:
            result = remotes[prober.name].run(
                ["sh", "-c", arp_probe_script(vip_ip, iface)],
                check=False,
                timeout=self.command_timeout,
            )
        except UNREACHABLE_ERRORS as exc:
            return [
                Check(
                    subject,
                    "vip answered",
                    Status.WARN,
                    f"ARP probe from {prober.name} failed: {describe_error(exc)}",
                )
            ]
        mac = parse_neigh(result.stdout)
        if holders:
            holder = holders[0]
            holder_macs = set(facts[holder.name].links.values())
            if mac is None or mac in holder_macs:
                return [
                    Check(
                        subject,
                        "vip answered",
                        Status.OK,
                        f"{vip_ip} answered only by its holder {holder.name}",
                    )
                ]
            return [
                Check(
                    subject,
                    "vip answered",
                    Status.FAIL,
                    f"{vip_ip} is held by {holder.name} but ARP is answered by {mac}, "
                    "another machine claims it",
                    f"free {vip_ip} on that machine or pick another VIP",
                )
            ]
        if mac is None:
            return [
                Check(
                    subject,
                    "vip answered",
                    Status.OK,
                    f"nothing answers {vip_ip} (free for the pair)",
                )
            ]
        return [
            Check(
                subject,
                "vip answered",
                Status.FAIL,
                f"{vip_ip} is already answered by {mac} while neither node holds it",
                f"free {vip_ip} on that machine or pick another pairs.{pair_name}.vip",
            )
        ]

    def _advert_check(
        self, pair_name: str, nodes: Sequence[Node], remotes: dict[str, Remote]
    ) -> list[Check]:
        pair = self.profile.pairs[pair_name]
        seconds = max(self.listen_seconds, pair.advert_int + 1)
        found = doctor_adverts.listen(
            pair_name, pair, nodes, remotes, seconds=seconds, timeout=self.command_timeout
        )
        return [
            Check(
                f"pairs.{pair_name}",
                "adverts",
                Status.OK if f.ok else Status.FAIL,
                f.detail,
                f.fix,
            )
            for f in found
        ]

    def _vrid_check(
        self, pair_name: str, nodes: Sequence[Node], remotes: dict[str, Remote]
    ) -> list[Check]:
        subject = f"pairs.{pair_name}"
        pair = self.profile.pairs[pair_name]
        listener = nodes[0]
        seconds = max(self.listen_seconds, pair.advert_int + 1)
        try:
            result = remotes[listener.name].run(
                ["perl", "-e", LISTENER, str(seconds), listener.ip],
                check=False,
                timeout=seconds + self.command_timeout,
            )
        except UNREACHABLE_ERRORS as exc:
            return [
                Check(
                    subject,
                    "vrid",
                    Status.WARN,
                    f"could not listen for VRRP on {listener.name}: {describe_error(exc)}",
                )
            ]
        if "done" not in result.stdout:
            return [
                Check(
                    subject,
                    "vrid",
                    Status.WARN,
                    f"could not listen for VRRP on {listener.name}: "
                    f"{result.stderr_tail(2) or 'perl failed'}",
                )
            ]
        ours = {n.ip for n in self.profile.nodes(pair_name)}
        foreign = sorted(
            {
                a.source
                for a in parse_adverts(result.stdout)
                if a.vrid == pair.vrid and a.source not in ours
            }
        )
        if foreign:
            return [
                Check(
                    subject,
                    "vrid",
                    Status.FAIL,
                    f"VRID {pair.vrid} is already used on the segment by "
                    f"{', '.join(foreign)}: the pairs break each other",
                    f"give pairs.{pair_name}.vrid a value nobody else uses",
                )
            ]
        return [
            Check(
                subject,
                "vrid",
                Status.OK,
                f"no other router uses VRID {pair.vrid} (listened {seconds} s on {listener.name})",
            )
        ]

    def _conf_check(
        self, pair_name: str, nodes: Sequence[Node], facts: dict[str, MachineFacts]
    ) -> list[Check]:
        subject = f"pairs.{pair_name}"
        provision = f"labctl provision pair {pair_name}"
        installed = {n.name: facts[n.name].conf for n in nodes}
        present = {k: conf_facts(v) for k, v in installed.items() if v is not None}
        if not present:
            return [Check(subject, "configs agree", Status.WARN, "not provisioned yet", provision)]
        out = []
        if len(present) == 2:
            (a, fa), (b, fb) = present.items()
            diff = fa.differences(fb)
            if diff:
                out.append(
                    Check(
                        subject,
                        "configs agree",
                        Status.FAIL,
                        f"{a} and {b} differ in {', '.join(diff)}: a lasting split brain",
                        provision,
                    )
                )
            else:
                out.append(
                    Check(
                        subject,
                        "configs agree",
                        Status.OK,
                        "both nodes share VRID, VIPs, advert_int and authentication",
                    )
                )
        elif len(nodes) == 2:
            missing = [n.name for n in nodes if installed[n.name] is None]
            out.append(
                Check(
                    subject,
                    "configs agree",
                    Status.WARN,
                    f"no keepalived.conf on {', '.join(missing)}",
                    provision,
                )
            )
        try:
            wanted = conf_facts(
                ka.render_node(self.profile, pair_name, "primary", mask_secrets=False).conf
            )
        except LabctlError:
            return out
        drift = {name: f.differences(wanted) for name, f in present.items()}
        drift = {k: v for k, v in drift.items() if v}
        for name, keys in drift.items():
            out.append(
                Check(
                    subject,
                    "matches profile",
                    Status.WARN,
                    f"{name}'s installed config differs from the profile in {', '.join(keys)}",
                    provision,
                )
            )
        if not drift:
            out.append(
                Check(subject, "matches profile", Status.OK, "installed configs match the profile")
            )
        return out


def _script_safety(
    path: str, f: MachineFacts, name: str, provision: str
) -> tuple[Status, str, str | None]:
    if path not in f.stats:
        if f.conf is None:
            return Status.WARN, f"{name}: {path} not installed yet", provision
        return Status.FAIL, f"{name}: {path} is missing", provision
    unsafe = []
    components = ["/etc", ka.KEEPALIVED_DIR, path]
    for comp in components:
        owner, mode = f.stats.get(comp, ("?", "0"))
        bits = int(mode, 8)
        if owner != "root" or bits & 0o022:
            unsafe.append(f"{comp} ({owner} {mode})")
    owner, mode = f.stats[path]
    if not int(mode, 8) & 0o100:
        unsafe.append(f"{path} not executable ({mode})")
    if unsafe:
        return (
            Status.FAIL,
            f"{name}: unsafe for script security: {'; '.join(unsafe)} "
            "(keepalived disables the script)",
            f"chown root:root and chmod go-w those paths, or {provision}",
        )
    return Status.OK, f"{name}: {path} root-owned 0{f.stats[path][1][-3:]}, path safe", None


def doctor(
    profile: Profile,
    connect: Callable[[Node], Remote],
    hypervisor: Callable[[], Hypervisor],
    *,
    listen_seconds: int = LISTEN_SECONDS,
) -> DoctorReport:
    """Run every check; never raises for what it finds (that is the report)."""
    return Doctor(profile, connect, hypervisor, listen_seconds=listen_seconds).run()
