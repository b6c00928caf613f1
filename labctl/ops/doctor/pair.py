"""Per-pair checks: script safety, VIP subnet, VIP answered (ARP probe), VRID free on the
segment (VRRP listener), both nodes' configs agree and match the profile."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labctl import keepalived as ka
from labctl.errors import LabctlError
from labctl.ops import doctor_adverts
from labctl.ops.doctor.machine import MachineFacts
from labctl.ops.doctor.report import Check, Status
from labctl.ops.verify import UNREACHABLE_ERRORS, describe_error
from labctl.profile import Node, Profile
from labctl.remote import Remote

LISTEN_SECONDS = 3
VRRP_GROUP = "224.0.0.18"

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
# The checks


@dataclass
class PairChecks:
    """Checks one pair from its reachable nodes' facts and open connections."""

    profile: Profile
    listen_seconds: int = LISTEN_SECONDS
    command_timeout: float = 30.0

    def checks(
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

