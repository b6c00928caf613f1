"""doctor's "adverts" check: does each node hear the VRRP adverts its reachable peer sends?

A network that drops multicast (many clouds, some switches, a filter on a bridge) leaves both
nodes of a multicast pair deaf to each other: each becomes MASTER and both hold the VIP. Seen
from one node, that is "the peer sends adverts, none arrive". To tell "the peer sends none"
(a healthy BACKUP is silent) from "its adverts are lost", both nodes listen at the same time
with a packet socket, which sees the frames a node sends as well as those it receives: a node
that sent adverts during the window while its peer received none of them points at the
network, and the fix is ``unicast = true`` (keepalived then sends to the peer's own address).

The listener is Perl (perl-base is Essential on Debian, present on minbase guests). It prints
one line per (source, destination) seen for the pair's VRID, with a count, then ``done``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from labctl.ops.verify import UNREACHABLE_ERRORS
from labctl.profile import Node, PairSpec
from labctl.remote import Remote

# ETH_P_ALL packet socket: outgoing frames too. Counts VRRP (IP protocol 112) of one VRID.
TAP = r"""
my ($secs, $want) = @ARGV;
socket(my $s, 17, 3, 0x0300) or die "vrrp tap: $!\n";
my %seen;
my $end = time + $secs;
my $rin = ''; vec($rin, fileno($s), 1) = 1;
while ((my $left = $end - time) > 0) {
  my $n = select(my $rout = $rin, undef, undef, $left);
  last if $n < 0;
  next if $n == 0;
  defined(recv($s, my $buf, 2048, 0)) or last;
  next unless substr($buf, 12, 2) eq "\x08\x00" && ord(substr($buf, 23, 1)) == 112;
  my $ihl = (ord(substr($buf, 14, 1)) & 15) * 4;
  next unless ord(substr($buf, 14 + $ihl + 1, 1)) == $want;
  my $src = join('.', unpack('C4', substr($buf, 26, 4)));
  my $dst = join('.', unpack('C4', substr($buf, 30, 4)));
  $seen{"$src $dst"}++;
}
print "$_ $seen{$_}\n" for sort keys %seen;
print "done\n";
"""


@dataclass(frozen=True)
class Finding:
    """One result line of the check (doctor turns it into a Check of its own kind)."""

    ok: bool
    detail: str
    fix: str | None = None


def parse_tap(stdout: str) -> dict[tuple[str, str], int] | None:
    """(source, destination) -> adverts seen; None when the listener did not finish."""
    if "done" not in stdout.split():
        return None
    seen: dict[tuple[str, str], int] = {}
    for line in stdout.splitlines():
        bits = line.split()
        if len(bits) == 3 and bits[2].isdigit():
            seen[(bits[0], bits[1])] = seen.get((bits[0], bits[1]), 0) + int(bits[2])
    return seen


def judge(
    pair_name: str,
    pair: PairSpec,
    nodes: Sequence[Node],
    taps: Mapping[str, dict[tuple[str, str], int]],
    seconds: float,
) -> list[Finding]:
    """For each node whose peer sent adverts (seen on the peer itself): did any arrive?"""
    found: list[Finding] = []
    for node in nodes:
        peer = next((n for n in nodes if n.name != node.name), None)
        if peer is None or node.name not in taps or peer.name not in taps:
            continue
        sent = sum(c for (src, _dst), c in taps[peer.name].items() if src == peer.ip)
        if not sent:
            continue  # a BACKUP is silent; nothing to expect
        heard = sum(c for (src, _dst), c in taps[node.name].items() if src == peer.ip)
        if heard:
            found.append(
                Finding(True, f"{node.name} hears {peer.name}'s adverts ({heard} in {seconds:g} s)")
            )
            continue
        how = "unicast" if pair.unicast else "multicast to 224.0.0.18"
        detail = (
            f"{node.name} heard no VRRP adverts from {peer.name} in {seconds:g} s although "
            f"{peer.name} sent {sent} ({how}): the network between them drops VRRP, so both "
            "become MASTER (split brain)"
        )
        if pair.unicast:
            fix = "let IP protocol 112 pass between the two nodes (firewall, security group)"
        else:
            fix = (
                f"set pairs.{pair_name}.unicast = true and run labctl provision pair "
                f"{pair_name} (or let multicast VRRP to 224.0.0.18 through)"
            )
        found.append(Finding(False, detail, fix))
    return found


def listen(
    pair_name: str,
    pair: PairSpec,
    nodes: Sequence[Node],
    remotes: Mapping[str, Remote],
    *,
    seconds: float,
    timeout: float,
) -> list[Finding]:
    """Listen on every reachable node of the pair at once, then judge what each saw."""
    reachable = [n for n in nodes if n.name in remotes]

    def tap(node: Node) -> dict[tuple[str, str], int] | None:
        argv = ["perl", "-e", TAP, f"{seconds:g}", str(pair.vrid)]
        try:
            result = remotes[node.name].run(argv, check=False, timeout=seconds + timeout)
        except UNREACHABLE_ERRORS:
            return None
        return parse_tap(result.stdout)

    with ThreadPoolExecutor(max_workers=max(1, len(reachable))) as pool:
        got = dict(zip((n.name for n in reachable), pool.map(tap, reachable), strict=True))
    taps = {name: seen for name, seen in got.items() if seen is not None}
    return judge(pair_name, pair, nodes, taps, seconds)
