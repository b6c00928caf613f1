"""Fault kinds, the VRRP figure each should take, and injecting/recovering one on a node."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from labctl import keepalived as ka
from labctl.errors import OperationFailed
from labctl.hypervisor import Hypervisor, VrrpPartitioner, require
from labctl.ops import faults as pending
from labctl.ops.faults import FaultJournal, new_record
from labctl.ops.verify import UNREACHABLE_ERRORS
from labctl.profile import PairSpec, Profile
from labctl.remote import Remote


class Fault(enum.StrEnum):
    STOP = "stop"
    CRASH = "crash"
    FREEZE = "freeze"
    LINK = "link"
    PARTITION = "partition"
    HEALTH = "health"


HARD_FAULTS = frozenset({Fault.CRASH, Fault.FREEZE, Fault.LINK, Fault.PARTITION})

FAILING_CHECK = (
    b"#!/bin/sh\n# labctl failover --fault health: this check fails on purpose\nexit 1\n"
)

NFT_TABLE = pending.NFT_TABLE

# Waits until the node itself sends a VRRP advert (a packet socket sees outgoing frames), so a
# hard fault lands just after an advert and the peer's master-down timer starts at injection:
# without it the measured takeover is anywhere in [theory - advert_int, theory]. perl-base is
# Essential on Debian, so this runs on minbase guests too. A classic BPF filter (ldh [12] = IPv4,
# ldb [23] = protocol 112, ld [26] = the node's address) lets the kernel pass only the node's own
# adverts: unfiltered, the socket also gets every frame of the drill's own SSH probes, and a
# perl starved of CPU falls behind them and misses the window (bench/advert_wait.py measures
# both on a loaded node). Frames queued before the filter is attached are checked by hand.
WAIT_FOR_OWN_ADVERT = r"""
my ($own, $secs) = @ARGV;
socket(my $s, 17, 3, 0x0300) or die "packet socket: $!\n";
my $want = pack("C4", split(/\./, $own));
my $filter = join "", map { pack("S C C L", @$_) } (
  [0x28, 0, 0, 12], [0x15, 0, 5, 0x0800],
  [0x30, 0, 0, 23], [0x15, 0, 3, 112],
  [0x20, 0, 0, 26], [0x15, 0, 1, unpack("N", $want)],
  [0x06, 0, 0, 0x40000], [0x06, 0, 0, 0],
);
setsockopt($s, 1, 26, pack("S x![P] P", length($filter) / 8, $filter))
  or die "SO_ATTACH_FILTER: $!\n";
my $end = time + $secs + 1;
while (time < $end) {
  my $rin = ''; vec($rin, fileno($s), 1) = 1;
  select(my $rout = $rin, undef, undef, 1) > 0 or next;
  recv($s, my $buf, 2048, 0);
  next unless substr($buf, 12, 2) eq "\x08\x00";
  next unless ord(substr($buf, 23, 1)) == 112 && substr($buf, 26, 4) eq $want;
  print "advert\n";
  exit 0;
}
exit 1;
"""


def skew_time(pair: PairSpec, priority: int) -> float:
    """keepalived's skew time for a backup of this priority (VRRP_TIMER_SKEW in vrrp.h).

    VRRPv3 (RFC 5798): ``((256 − priority) × Master_Adver_Interval) / 256``; VRRPv2 (RFC 3768
    and keepalived's v2 code): ``(256 − priority) / 256`` s, whatever advert_int is.
    """
    if pair.vrrp_version == 3:
        return (256 - priority) * pair.advert_int / 256
    return (256 - priority) / 256


# faults after which the faulted node comes back as a BACKUP (keepalived restarted, or its
# priority lowered and then restored); under the others it never stopped being MASTER
RESTARTS_AS_BACKUP = frozenset({Fault.STOP, Fault.CRASH, Fault.HEALTH})


def settle_target(pair: PairSpec, fault: Fault, faulted: str, peer: str, *, primary: str) -> str:
    """The node that should hold the VIP once the fault is undone.

    With preempt, the highest priority node: the primary. With ``nopreempt``, a node that comes
    back as BACKUP does not take the VIP from a lower priority MASTER, so after stop, crash and
    health the node that took over keeps it; after freeze, link and partition the faulted node
    was MASTER all along, and of two MASTERs that hear each other the higher priority wins
    (RFC 5798 6.4.3), whatever nopreempt says: the primary again.
    """
    if not pair.preempt and fault in RESTARTS_AS_BACKUP:
        return peer
    return primary


def theory(pair: PairSpec, fault: Fault, *, taker_priority: int) -> tuple[float, str]:
    """The VRRP figure a takeover should take, and its kind (hard | graceful | bound)."""
    skew = skew_time(pair, taker_priority)
    if fault is Fault.STOP:
        return skew, "graceful"
    if fault is Fault.HEALTH:
        # the failure is seen within interval × fall; the lowered priority makes the backup
        # ignore the master's adverts (preempt), so it takes over one master-down later
        check = pair.check
        assert check is not None
        return check.interval * check.fall + 3 * pair.advert_int + skew, "bound"
    return 3 * pair.advert_int + skew, "hard"


@dataclass
class FaultInjector:
    """Injects and recovers one fault on a pair's current holder."""

    profile: Profile
    pair_name: str
    fault: Fault
    remotes: Mapping[str, Remote]
    hypervisor: Hypervisor | None
    command_timeout: float = 60.0
    journal: FaultJournal | None = None  # the lab's record of a fault in place
    _saved_check: bytes | None = None

    def preflight(self, faulted: str, peer: str) -> None:
        """Refuse early (before any trial) when this fault cannot be injected here."""
        pair = self.profile.pair(self.pair_name)
        if self.fault in (Fault.FREEZE, Fault.LINK) and self.hypervisor is None:
            raise OperationFailed(f"--fault {self.fault} needs the lab's hypervisor backend")
        if self.fault is Fault.FREEZE:
            require(self.hypervisor, "pause")
        if self.fault is Fault.LINK:
            require(self.hypervisor, "set_link")
        if self.fault is Fault.HEALTH and pair.check is None:
            raise OperationFailed(
                f"--fault health: pairs.{self.pair_name} has no [check] script to make fail",
                hint=f"add [pairs.{self.pair_name}.check] to the profile and provision again",
            )
        if self.fault is Fault.PARTITION and not isinstance(self.hypervisor, VrrpPartitioner):
            for name in (faulted, peer):
                found = self.remotes[name].run(["sh", "-c", "command -v nft"], check=False)
                if not found.ok:
                    raise OperationFailed(
                        f"--fault partition: the backend cannot cut VRRP on the wire and "
                        f"{name} has no nft to drop it inside the guest",
                        hint=f"install nftables on both nodes of pairs.{self.pair_name}",
                    )

    def _check_path(self) -> str:
        check = self.profile.pair(self.pair_name).check
        assert check is not None
        return f"{ka.KEEPALIVED_DIR}/{check.script}"

    def wait_for_advert(self, name: str) -> bool:
        """Return right after ``name`` sent a VRRP advert; False when that could not be seen."""
        advert_int = self.profile.pair(self.pair_name).advert_int
        argv = ["perl", "-e", WAIT_FOR_OWN_ADVERT, self._ip(name), f"{2 * advert_int:g}"]
        try:
            result = self.remotes[name].run(
                argv, check=False, timeout=2 * advert_int + self.command_timeout
            )
        except UNREACHABLE_ERRORS:
            return False
        return result.ok and "advert" in result.stdout

    def inject(self, faulted: str, peer: str) -> None:
        if self.journal is not None:
            # recorded first: a labctl killed from here on leaves a lab that `up` heals
            self.journal.record(new_record(self.pair_name, str(self.fault), faulted, peer))
        remote = self.remotes[faulted]
        t = self.command_timeout
        if self.fault is Fault.STOP:
            remote.run(["systemctl", "stop", "keepalived"], timeout=t)
        elif self.fault is Fault.CRASH:
            remote.run(["sh", "-c", "kill -KILL $(pidof keepalived)"], timeout=t)
        elif self.fault is Fault.FREEZE:
            assert self.hypervisor is not None
            self.hypervisor.pause(faulted)
        elif self.fault is Fault.LINK:
            assert self.hypervisor is not None
            self.hypervisor.set_link(faulted, False)
        elif self.fault is Fault.PARTITION:
            if isinstance(self.hypervisor, VrrpPartitioner):
                self.hypervisor.block_vrrp(faulted, peer)
            else:
                for name, other in ((faulted, peer), (peer, faulted)):
                    self.remotes[name].run(_nft_block(self._ip(other)), timeout=t)
        elif self.fault is Fault.HEALTH:
            path = self._check_path()
            self._saved_check = remote.get(path)
            if self._saved_check is None:
                raise OperationFailed(f"{faulted}: {path} is missing; provision the pair first")
            remote.put(FAILING_CHECK, path, mode=0o755)

    def recover(self, faulted: str, peer: str) -> None:
        remote = self.remotes[faulted]
        t = self.command_timeout
        if self.fault in (Fault.STOP, Fault.CRASH):
            remote.run(["systemctl", "start", "keepalived"], timeout=t)
        elif self.fault is Fault.FREEZE:
            assert self.hypervisor is not None
            self.hypervisor.resume(faulted)
        elif self.fault is Fault.LINK:
            assert self.hypervisor is not None
            self.hypervisor.set_link(faulted, True)
        elif self.fault is Fault.PARTITION:
            if isinstance(self.hypervisor, VrrpPartitioner):
                self.hypervisor.unblock_vrrp(faulted, peer)
            else:
                for name in (faulted, peer):
                    self.remotes[name].run(["nft", "delete", "table", "inet", NFT_TABLE], timeout=t)
        elif self.fault is Fault.HEALTH and self._saved_check is not None:
            remote.put(self._saved_check, self._check_path(), mode=0o755)
            self._saved_check = None
        if self.journal is not None:
            self.journal.clear(self.pair_name)

    def _ip(self, name: str) -> str:
        for node in self.profile.nodes(self.pair_name):
            if node.name == name:
                return node.ip
        raise KeyError(name)


def _nft_block(peer_ip: str) -> list[str]:
    # each node drops what its peer sends: VRRP is cut both ways, SSH keeps working
    script = (
        f"add table inet {NFT_TABLE}\n"
        f"add chain inet {NFT_TABLE} input_vrrp {{ type filter hook input priority 0; }}\n"
        f"add rule inet {NFT_TABLE} input_vrrp ip saddr {peer_ip} ip protocol vrrp drop\n"
    )
    return ["sh", "-c", f"printf '%s' '{script}' | nft -f -"]
