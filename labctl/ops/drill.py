"""`labctl failover`: break the VIP's holder on purpose and time how the standby takes over.

One trial: wait until the pair is settled (exactly one holder), inject the fault on the holder
(hard faults right after the holder sent a VRRP advert, seen on the holder itself, so that the
peer's master-down timer starts at injection and measured compares with theory),
poll both nodes' addresses over their already-open connections (a probe is started on each
node every ``poll_interval`` seconds, at most one in flight per node, each sample stamped with
the middle of its round trip), wait for the other node to take the VIP, recover the fault and
wait for the pair to settle again (back on the primary when the pair preempts).

Faults (``fault`` on the current holder):

* ``stop``: ``systemctl stop keepalived`` (graceful: keepalived sends a priority-0 advert).
* ``crash``: SIGKILL to every keepalived process (``systemctl kill`` ended as a graceful stop
  in nspawn guests). The VIP stays configured on the crashed node: expect an overlap.
* ``freeze``: ``Hypervisor.pause``; the node answers nothing until resumed.
* ``link``: ``Hypervisor.set_link(False)``; the node is unreachable, its processes run.
* ``partition``: VRRP between the two nodes is dropped (``VrrpPartitioner.block_vrrp`` when the
  backend has it, else nftables inside both guests); both stay reachable, both hold the VIP.
* ``health``: the check script is replaced by one that exits 1 (permissions untouched, so
  keepalived's script security keeps running it); the original is put back on recovery.

A node whose probe fails or has not answered within ``stale_after`` seconds is recorded as
unreachable in the timeline, never as "not holding".

Theory beside measured: a hard fault (crash, freeze, link, partition) takes the backup's
master-down interval, ``3 × advert_int + (256 − priority)/256``; a graceful stop its skew time
``(256 − priority)/256`` (priority of the node taking over); for ``health`` the figure is an
upper bound, ``check.interval × check.fall`` plus the master-down interval.

JSON shape (``labctl failover --json``), stable; keys are never removed, only added::

    {
      "pair": "back", "fault": "crash", "ok": true, "exit_code": 0,
      "theory": 3.609, "theory_kind": "hard",   # hard | graceful | bound
      "poll_interval": 0.03,
      "ended_ok": true,                         # the VIP ended on exactly one node
      "final_holders": ["prod-back"],
      "problems": [],                           # why ok is false, one sentence each
      "summary": {                              # over trials; null when no trial measured it
        "takeover": {"min": 3.58, "median": 3.6, "max": 3.63, "n": 1},
        "gap": {...}, "overlap": {...}, "failback": {...}, "error": {...}
      },
      "trials": [
        {"trial": 1, "faulted": "prod-back", "peer": "prod-back-standby",
         "released": 0.02,     # s after injection: faulted node first seen without the VIP
                               #   before recovery (null: never, e.g. unreachable or holding)
         "takeover": 3.6,      # s after injection: peer first seen holding (time to new holder)
         "gap": 0.0,           # s with neither node holding (both seen) until recovery
         "overlap": 3.1,       # s with both holding until recovery
         "unreachable": {"prod-back": 0.0},      # s each node was unreachable until recovery
         "recovered_at": 4.7,  # s after injection the fault was undone
         "failback": 1.2,      # s from recovery until settled again (null: never settled)
         "failback_gap": 0.0, "failback_overlap": 0.05,
         "settled_on": "prod-back",
         "error": -0.01,       # takeover - theory
         "resolution": 0.04,   # largest interval between two samples of the peer
         "synced": true,       # hard faults: injected right after the holder's own advert
         "problems": [],
         "events": [{"t": 0.0, "node": "prod-back", "holds": true, "error": null}, ...]}
      ]
    }

``events`` lists only changes of what a node showed (and the first sample of each node).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from labctl import keepalived as ka
from labctl.errors import EXIT_CHECKS, EXIT_OK, GuestUnreachable, LabctlError, OperationFailed
from labctl.hypervisor import Hypervisor, VrrpPartitioner, require
from labctl.ops.verify import UNREACHABLE_ERRORS
from labctl.profile import Node, PairSpec, Profile
from labctl.remote import Remote

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.025
MAX_INFLIGHT = 2
RECONNECT_AFTER = 3  # consecutive immediate failures before a connection counts as lost
STALE_AFTER = 0.5
PROBE_TIMEOUT = 30.0  # long: a probe abandoned early leaks an SSH session on a thawed node
TICK = 0.005
SETTLE_DEADLINE = 30.0
TAKEOVER_SLACK = 10.0
FAILBACK_DEADLINE = 30.0


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

NFT_TABLE = "labctl_drill"

# Waits until the node itself sends a VRRP advert (a packet socket sees outgoing frames), so a
# hard fault lands just after an advert and the peer's master-down timer starts at injection:
# without it the measured takeover is anywhere in [theory - advert_int, theory]. perl-base is
# Essential on Debian, so this runs on minbase guests too.
WAIT_FOR_OWN_ADVERT = r"""
my ($own, $secs) = @ARGV;
socket(my $s, 17, 3, 0x0300) or die "packet socket: $!\n";
my $want = pack("C4", split(/\./, $own));
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


def theory(pair: PairSpec, fault: Fault, *, taker_priority: int) -> tuple[float, str]:
    """The VRRP figure a takeover should take, and its kind (hard | graceful | bound)."""
    skew = (256 - taker_priority) / 256
    if fault is Fault.STOP:
        return skew, "graceful"
    if fault is Fault.HEALTH:
        # the failure is seen within interval × fall; the lowered priority makes the backup
        # ignore the master's adverts (preempt), so it takes over one master-down later
        check = pair.check
        assert check is not None
        return check.interval * check.fall + 3 * pair.advert_int + skew, "bound"
    return 3 * pair.advert_int + skew, "hard"


# ---------------------------------------------------------------------------
# Samples and the timeline (pure)


@dataclass(frozen=True)
class Sample:
    """What one node showed at time t (seconds after injection; negative = before)."""

    t: float
    node: str
    holds: bool | None  # None: unreachable (no answer), never "not holding"
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 4), "node": self.node, "holds": self.holds, "error": self.error}


@dataclass(frozen=True)
class Timeline:
    released: float | None
    takeover: float | None
    gap: float
    overlap: float
    unreachable: dict[str, float]
    failback_gap: float
    failback_overlap: float
    resolution: float | None


def _state_at(samples: Sequence[Sample], t: float) -> bool | str | None:
    """Latest holds value at t; 'none' string when nothing was sampled yet."""
    value: bool | str | None = "none"
    for s in samples:
        if s.t > t:
            break
        value = s.holds
    return value


def analyse(
    samples: Iterable[Sample],
    faulted: str,
    peer: str,
    *,
    recovered_at: float,
    end: float,
) -> Timeline:
    """Times and durations of one trial from its samples (t relative to injection)."""
    by_node: dict[str, list[Sample]] = {faulted: [], peer: []}
    for s in sorted(samples, key=lambda s: s.t):
        by_node.setdefault(s.node, []).append(s)
    released = next(
        (s.t for s in by_node[faulted] if 0 <= s.t <= recovered_at and s.holds is False), None
    )
    takeover = next((s.t for s in by_node[peer] if s.t >= 0 and s.holds is True), None)

    cuts = sorted({0.0, recovered_at, end, *(s.t for s in by_node[faulted] + by_node[peer])})
    cuts = [t for t in cuts if 0.0 <= t <= end]
    gap = overlap = fb_gap = fb_overlap = 0.0
    unreachable = {faulted: 0.0, peer: 0.0}
    for start, stop in itertools.pairwise(cuts):
        dt = stop - start
        a, b = _state_at(by_node[faulted], start), _state_at(by_node[peer], start)
        during_fault = start < recovered_at
        if a is False and b is False:
            if during_fault:
                gap += dt
            else:
                fb_gap += dt
        elif a is True and b is True:
            if during_fault:
                overlap += dt
            else:
                fb_overlap += dt
        if during_fault:
            for name, state in ((faulted, a), (peer, b)):
                if state is None:
                    unreachable[name] += dt

    peer_times = [s.t for s in by_node[peer] if 0.0 <= s.t <= recovered_at]
    resolution = max((b - a for a, b in itertools.pairwise(peer_times)), default=None)
    return Timeline(
        released=released,
        takeover=takeover,
        gap=gap,
        overlap=overlap,
        unreachable=unreachable,
        failback_gap=fb_gap,
        failback_overlap=fb_overlap,
        resolution=resolution,
    )


def changes(samples: Iterable[Sample]) -> list[Sample]:
    """The first sample of each node and every sample where what it showed changed."""
    last: dict[str, tuple[bool | None, bool]] = {}
    out = []
    for s in sorted(samples, key=lambda s: s.t):
        key = (s.holds, s.error is None)
        if last.get(s.node) != key:
            out.append(s)
            last[s.node] = key
    return out


@dataclass(frozen=True)
class Trial:
    index: int
    faulted: str
    peer: str
    timeline: Timeline
    recovered_at: float | None
    failback: float | None
    settled_on: str | None
    theory: float
    samples: tuple[Sample, ...]
    problems: tuple[str, ...] = ()
    synced: bool = False  # injected right after the holder's own advert

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def error(self) -> float | None:
        t = self.timeline.takeover
        return None if t is None else t - self.theory

    def to_json(self) -> dict[str, Any]:
        tl = self.timeline

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        return {
            "trial": self.index,
            "faulted": self.faulted,
            "peer": self.peer,
            "released": r(tl.released),
            "takeover": r(tl.takeover),
            "gap": r(tl.gap),
            "overlap": r(tl.overlap),
            "unreachable": {k: r(v) for k, v in tl.unreachable.items()},
            "recovered_at": r(self.recovered_at),
            "failback": r(self.failback),
            "failback_gap": r(tl.failback_gap),
            "failback_overlap": r(tl.failback_overlap),
            "settled_on": self.settled_on,
            "error": r(self.error),
            "resolution": r(tl.resolution),
            "synced": self.synced,
            "problems": list(self.problems),
            "events": [s.to_json() for s in changes(self.samples)],
        }


@dataclass(frozen=True)
class Stat:
    min: float
    median: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        got = [v for v in values if v is not None]
        if not got:
            return None
        return cls(min(got), statistics.median(got), max(got), len(got))

    def to_json(self) -> dict[str, Any]:
        return {
            "min": round(self.min, 4),
            "median": round(self.median, 4),
            "max": round(self.max, 4),
            "n": self.n,
        }


@dataclass(frozen=True)
class DrillReport:
    pair: str
    fault: Fault
    theory: float
    theory_kind: str
    poll_interval: float
    trials: tuple[Trial, ...]
    final_holders: tuple[str, ...]
    final_reachable: bool
    problems: tuple[str, ...] = ()

    @property
    def ended_ok(self) -> bool:
        return self.final_reachable and len(self.final_holders) == 1

    @property
    def ok(self) -> bool:
        return self.ended_ok and not self.problems and all(t.ok for t in self.trials)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_CHECKS

    def all_problems(self) -> list[str]:
        found = list(self.problems)
        for t in self.trials:
            found += [f"trial {t.index}: {p}" for p in t.problems]
        if not self.ended_ok:
            where = ", ".join(self.final_holders) or "no node"
            reach = "" if self.final_reachable else " (a node could not be reached)"
            found.append(
                f"the pair did NOT end with the VIP on exactly one node: on {where}{reach}"
            )
        return found

    def summary(self) -> dict[str, Stat | None]:
        return {
            "takeover": Stat.of(t.timeline.takeover for t in self.trials),
            "gap": Stat.of(t.timeline.gap for t in self.trials),
            "overlap": Stat.of(t.timeline.overlap for t in self.trials),
            "failback": Stat.of(t.failback for t in self.trials),
            "error": Stat.of(t.error for t in self.trials),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "fault": str(self.fault),
            "ok": self.ok,
            "exit_code": self.exit_code,
            "theory": round(self.theory, 4),
            "theory_kind": self.theory_kind,
            "poll_interval": self.poll_interval,
            "ended_ok": self.ended_ok,
            "final_holders": list(self.final_holders),
            "problems": self.all_problems(),
            "summary": {k: (v.to_json() if v else None) for k, v in self.summary().items()},
            "trials": [t.to_json() for t in self.trials],
        }


# ---------------------------------------------------------------------------
# Polling


def probe_holds(remote: Remote, vips: Sequence[str], timeout: float) -> bool:
    """Whether the machine carries any of the VIPs; raises when it does not answer."""
    result = remote.run(["ip", "-o", "-4", "addr", "show"], check=True, timeout=timeout)
    addrs = ka.parse_ip_addr(result.stdout)
    return any(ka.holds(addrs, v) for v in vips)


ProbeOutcome = tuple[float, float, bool | None, str | None]  # start, end, holds, error


@dataclass
class _Channel:
    name: str
    probe: Callable[[], bool]
    inflight: list[tuple[float, Future[ProbeOutcome]]] = field(default_factory=list)
    next_due: float = 0.0
    last_answer: float = 0.0
    stale_reported: float = 0.0


@dataclass
class Poller:
    """Samples every node every ``interval`` s without ever blocking on a silent one.

    An SSH exec round trip (~40-50 ms to a guest's sshd) is longer than the interval, so up to
    ``max_inflight`` probes per node overlap; each sample is stamped with the middle of its
    round trip. An answer that took longer than ``stale_after`` is stamped with its end instead:
    it may have waited out a freeze, and what it shows is the state after it. A node that has
    not answered for ``stale_after`` while a probe is outstanding is sampled as unreachable.
    """

    probes: Mapping[str, Callable[[], bool]]
    clock: Callable[[], float]
    executor: Executor
    interval: float = POLL_INTERVAL
    stale_after: float = STALE_AFTER
    max_inflight: int = MAX_INFLIGHT
    samples: list[Sample] = field(default_factory=list)
    _channels: list[_Channel] = field(default_factory=list)
    _latest: dict[str, Sample] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._channels = [_Channel(name, probe) for name, probe in self.probes.items()]

    def _run(self, probe: Callable[[], bool]) -> ProbeOutcome:
        start = self.clock()
        try:
            holds: bool | None = probe()
            error = None
        except UNREACHABLE_ERRORS as exc:
            holds, error = None, str(exc) or type(exc).__name__
        return start, self.clock(), holds, error

    def _add(self, sample: Sample) -> None:
        self.samples.append(sample)
        latest = self._latest.get(sample.node)
        if latest is None or sample.t >= latest.t:
            self._latest[sample.node] = sample

    def tick(self) -> None:
        now = self.clock()
        for ch in self._channels:
            for item in [i for i in ch.inflight if i[1].done()]:
                ch.inflight.remove(item)
                start, end, holds, error = item[1].result()
                slow = end - start > self.stale_after
                ch.last_answer = max(ch.last_answer, end)
                self._add(Sample(end if slow else (start + end) / 2, ch.name, holds, error))
            oldest = min((started for started, _ in ch.inflight), default=now)
            if (
                now - oldest >= self.stale_after
                and now - ch.last_answer >= self.stale_after
                and now - ch.stale_reported >= self.interval
            ):
                waited = now - oldest
                self._add(Sample(now, ch.name, None, f"no answer for {waited:.2f} s"))
                ch.stale_reported = now
            if len(ch.inflight) < self.max_inflight and now >= ch.next_due:
                ch.next_due = now + self.interval
                ch.inflight.append((now, self.executor.submit(self._run, ch.probe)))

    def latest(self, name: str) -> Sample | None:
        return self._latest.get(name)


# ---------------------------------------------------------------------------
# Faults


@dataclass
class FaultInjector:
    """Injects and recovers one fault on a pair's current holder."""

    profile: Profile
    pair_name: str
    fault: Fault
    remotes: Mapping[str, Remote]
    hypervisor: Hypervisor | None
    command_timeout: float = 60.0
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
        argv = ["perl", "-e", WAIT_FOR_OWN_ADVERT, self._ip(name), str(2 * advert_int)]
        try:
            result = self.remotes[name].run(
                argv, check=False, timeout=2 * advert_int + self.command_timeout
            )
        except UNREACHABLE_ERRORS:
            return False
        return result.ok and "advert" in result.stdout

    def inject(self, faulted: str, peer: str) -> None:
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


# ---------------------------------------------------------------------------
# The drill


@dataclass
class Drill:
    """Runs failover trials on one pair. Nothing here prints; the result is a DrillReport.

    Args:
        profile: the lab profile.
        pair_name: the pair to break.
        fault: what to break.
        remotes: open connections to both nodes, by machine name. A connection that is lost
            during the drill is replaced in this mapping (the caller closes what it holds).
        hypervisor: the lab's backend (needed for freeze and link; used for partition).
        clock: monotonic seconds; sleep: waits that many seconds (both injectable).
        executor: runs probes and fault commands; a thread pool by default.
        reconnect: opens a new connection to a node by name, used when one is lost.
    """

    profile: Profile
    pair_name: str
    fault: Fault
    remotes: MutableMapping[str, Remote]
    hypervisor: Hypervisor | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    executor: Executor | None = None
    poll_interval: float = POLL_INTERVAL
    stale_after: float = STALE_AFTER
    probe_timeout: float = PROBE_TIMEOUT
    settle_deadline: float = SETTLE_DEADLINE
    takeover_slack: float = TAKEOVER_SLACK
    failback_deadline: float = FAILBACK_DEADLINE
    tick: float = TICK
    progress: Callable[[str], None] | None = None
    reconnect: Callable[[str], Remote] | None = None

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def __post_init__(self) -> None:
        self.pair = self.profile.pair(self.pair_name)
        self.nodes: dict[str, Node] = {n.name: n for n in self.profile.nodes(self.pair_name)}
        self._lock = threading.Lock()
        self._reconnected: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._retired: list[Remote] = []
        self._finished = False
        self.injector = FaultInjector(
            self.profile, self.pair_name, self.fault, self.remotes, self.hypervisor
        )

    # -- helpers --------------------------------------------------------------

    def _priority(self, name: str) -> int:
        role = self.nodes[name].role
        return self.pair.priority.primary if role == "primary" else self.pair.priority.standby

    def _poller(self, executor: Executor) -> Poller:
        vips = self.pair.vip
        timeout = self.probe_timeout

        def probe_for(name: str) -> Callable[[], bool]:
            def probe() -> bool:
                remote = self.remotes[name]
                try:
                    holds = probe_holds(remote, vips, timeout)
                except GuestUnreachable:
                    self._reconnect(name, remote)
                    raise
                self._failures[name] = 0
                return holds

            return probe

        return Poller(
            {name: probe_for(name) for name in self.nodes},
            self.clock,
            executor,
            interval=self.poll_interval,
            stale_after=self.stale_after,
        )

    def _recover(self, faulted: str, peer: str) -> None:
        """Undo the fault; a connection lost meanwhile is reopened and recovery tried again,
        because a fault left in place (keepalived stopped, a check failing) outlives the drill.
        """
        try:
            self.injector.recover(faulted, peer)
        except GuestUnreachable:
            if self.reconnect is None:
                raise
            for name in (faulted, peer):
                fresh = self.reconnect(name)
                with self._lock:
                    self._retired.append(self.remotes[name])
                    self.remotes[name] = fresh
            self._say(f"{faulted}: connection lost while recovering; reconnected, trying again")
            self.injector.recover(faulted, peer)

    def _reconnect(self, name: str, broken: Remote) -> None:
        """Replace a connection that is lost: it failed at once several times in a row.

        A slow or frozen node times out instead and is left alone. The old connection is not
        closed here (a fault command may still be using it); run() closes it at the end.
        """
        if self.reconnect is None:
            return
        with self._lock:
            self._failures[name] = self._failures.get(name, 0) + 1
            now = self.clock()
            if (
                self._finished
                or self._failures[name] < RECONNECT_AFTER
                or self.remotes[name] is not broken
                or now - self._reconnected.get(name, -1e9) < 1
            ):
                return
            self._reconnected[name] = now
        try:
            fresh = self.reconnect(name)
        except UNREACHABLE_ERRORS:
            return
        with self._lock:
            self.remotes[name] = fresh
            self._retired.append(broken)
            self._failures[name] = 0
        self._say(f"{name}: SSH connection lost; reconnected")

    def _wait(self, poller: Poller, done: Callable[[], bool], seconds: float) -> bool:
        """Poll until done() or the deadline; True when done."""
        deadline = self.clock() + seconds
        while True:
            poller.tick()
            if done():
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(self.tick)

    def _holders(self, poller: Poller) -> tuple[list[str], bool]:
        """Nodes whose latest sample holds, and whether every node's latest sample answered."""
        latest = [poller.latest(n) for n in self.nodes]
        reachable = all(s is not None and s.holds is not None for s in latest)
        return [s.node for s in latest if s is not None and s.holds], reachable

    def _settled(self, poller: Poller, want: str | None, since: list[float | None]) -> bool:
        """Exactly one holder (``want`` if given), unchanged for one advert interval."""
        holders, reachable = self._holders(poller)
        good = reachable and len(holders) == 1 and (want is None or holders[0] == want)
        now = self.clock()
        if not good:
            since[0] = None
            return False
        start = since[0]
        if start is None:
            since[0] = start = now
        return now - start >= self.pair.advert_int

    def _await(self, future: Future[Any], poller: Poller) -> None:
        while not future.done():
            poller.tick()
            self.sleep(self.tick)
        future.result()

    # -- one trial -----------------------------------------------------------

    def trial(self, index: int, executor: Executor) -> Trial:
        poller = self._poller(executor)
        since: list[float | None] = [None]
        if not self._wait(poller, lambda: self._settled(poller, None, since), self.settle_deadline):
            holders, reachable = self._holders(poller)
            raise _NotSettled(holders, reachable)
        faulted = self._holders(poller)[0][0]
        peer = next(n for n in self.nodes if n != faulted)
        expected, _kind = theory(self.pair, self.fault, taker_priority=self._priority(peer))

        def taken() -> bool:
            latest = poller.latest(peer)
            return latest is not None and latest.holds is True

        problems: list[str] = []
        synced = False
        if self.fault in HARD_FAULTS:
            wait = executor.submit(self.injector.wait_for_advert, faulted)
            self._await(wait, poller)
            synced = wait.result()
        self._say(f"trial {index}: VIP on {faulted}; injecting {self.fault} there")
        t0 = self.clock()
        try:
            try:
                self._await(executor.submit(self.injector.inject, faulted, peer), poller)
            except LabctlError as exc:
                problems.append(f"injecting the fault failed: {exc.message}")
            else:
                if not self._wait(poller, taken, expected + self.takeover_slack):
                    problems.append(
                        f"{peer} did not take the VIP within {expected + self.takeover_slack:.1f} s"
                    )
                else:
                    self._say(f"trial {index}: {peer} holds the VIP; recovering {faulted} soon")
                    # watch the old holder a little longer: does it let go?
                    self._wait(poller, lambda: False, self.pair.advert_int + 0.5)
        finally:
            recover_start = self.clock()
            try:
                self._await(executor.submit(self._recover, faulted, peer), poller)
            except LabctlError as exc:
                problems.append(f"recovering from the fault failed: {exc.message}")
        recovered_at = recover_start - t0
        failback: float | None = None
        settled_on: str | None = None
        # with preempt the pair settles on its highest priority node, the primary
        want = self.profile.nodes(self.pair_name)[0].name if self.pair.preempt else None
        since = [None]
        if self._wait(poller, lambda: self._settled(poller, want, since), self.failback_deadline):
            assert since[0] is not None
            failback = since[0] - recover_start
            settled_on = self._holders(poller)[0][0]
        else:
            holders, _ = self._holders(poller)
            problems.append(
                f"did not settle within {self.failback_deadline:.0f} s after recovery "
                f"(holders now: {', '.join(holders) or 'none'})"
            )
        end = self.clock() - t0
        samples = tuple(Sample(s.t - t0, s.node, s.holds, s.error) for s in poller.samples)
        timeline = analyse(samples, faulted, peer, recovered_at=recovered_at, end=end)
        return Trial(
            index=index,
            faulted=faulted,
            peer=peer,
            timeline=timeline,
            recovered_at=recovered_at,
            failback=failback,
            settled_on=settled_on,
            theory=expected,
            samples=samples,
            problems=tuple(problems),
            synced=synced,
        )

    # -- the drill -----------------------------------------------------------

    def run(self, trials: int = 1) -> DrillReport:
        own = self.executor is None
        # probes of both nodes plus one fault command, with room for probes stuck on a frozen node
        workers = 2 * MAX_INFLIGHT + 2
        executor = self.executor or ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="drill"
        )
        primary, standby = self.profile.nodes(self.pair_name)
        taker = standby.name
        expected, kind = theory(self.pair, self.fault, taker_priority=self._priority(taker))
        done: list[Trial] = []
        problems: list[str] = []
        try:
            self.injector.preflight(primary.name, standby.name)
            for index in range(1, trials + 1):
                try:
                    done.append(self.trial(index, executor))
                except _NotSettled as exc:
                    problems.append(f"before trial {index}: {exc}")
                    break
                if not done[-1].ok:
                    break
            holders, reachable = self._final(executor)
        finally:
            self._finished = True
            if own:
                executor.shutdown(wait=False, cancel_futures=True)
            for remote in self._retired:
                with contextlib.suppress(*UNREACHABLE_ERRORS):
                    remote.close()
        return DrillReport(
            pair=self.pair_name,
            fault=self.fault,
            theory=expected,
            theory_kind=kind,
            poll_interval=self.poll_interval,
            trials=tuple(done),
            final_holders=tuple(holders),
            final_reachable=reachable,
            problems=tuple(problems),
        )

    def _final(self, executor: Executor) -> tuple[list[str], bool]:
        poller = self._poller(executor)
        since: list[float | None] = [None]
        self._wait(poller, lambda: self._settled(poller, None, since), self.settle_deadline)
        return self._holders(poller)


class _NotSettled(Exception):
    def __init__(self, holders: Sequence[str], reachable: bool) -> None:
        where = ", ".join(holders) or "no node"
        extra = "" if reachable else "; a node did not answer"
        super().__init__(
            f"the pair never settled with the VIP on exactly one node (on {where}{extra})"
        )
