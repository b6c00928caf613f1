"""Polling both nodes' addresses over open connections without blocking on a silent one."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

from labctl import keepalived as ka
from labctl.ops.drill.timeline import Sample
from labctl.ops.verify import UNREACHABLE_ERRORS
from labctl.remote import Remote

POLL_INTERVAL = 0.025
MAX_INFLIGHT = 2
STALE_AFTER = 0.5
FAST_POLL_INTERVAL = 0.0125  # for sub-second adverts (VRRPv3)
PROBE_ROUND_TRIP = 0.05  # about what one SSH exec of `ip -o addr` takes to a lab guest
# a node is silent after this many of its own usual round trips (never sooner than STALE_AFTER):
# an interpreted VirtualBox guest answers a probe in ~0.6 s, a guest on this host in ~0.05 s
STALE_ROUND_TRIPS = 3


def poll_plan(advert_int: float) -> tuple[float, int]:
    """(poll interval, probes in flight per node) that resolve a takeover of this pair.

    Whole-second adverts: every 25 ms, two probes in flight. Sub-second (VRRPv3) adverts: every
    12.5 ms, with enough probes overlapping to cover one SSH round trip, so the samples of a
    node stay about 10 ms apart although each takes ~50 ms.
    """
    if advert_int >= 1:
        return POLL_INTERVAL, MAX_INFLIGHT
    inflight = max(MAX_INFLIGHT, math.ceil(PROBE_ROUND_TRIP / FAST_POLL_INTERVAL))
    return FAST_POLL_INTERVAL, inflight


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
    round trip. An answer that took longer than the node's stale time is stamped with its end
    instead: it may have waited out a freeze, and what it shows is the state after it. A node
    that has not answered for its stale time while a probe is outstanding is sampled as
    unreachable. The stale time is ``stale_after``, or STALE_ROUND_TRIPS of the node's median
    round trip when that is longer (a slow guest is slow, not silent); a slow node gets one
    probe at a time.
    """

    probes: Mapping[str, Callable[[], bool]]
    clock: Callable[[], float]
    executor: Executor
    interval: float = POLL_INTERVAL
    stale_after: float = STALE_AFTER
    max_inflight: int = MAX_INFLIGHT
    samples: list[Sample] = field(default_factory=list)
    round_trips: dict[str, list[float]] = field(default_factory=dict)  # answered probes, by node
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
                slow = end - start > self.stale_time(ch.name)
                ch.last_answer = max(ch.last_answer, end)
                if holds is not None:
                    self.round_trips.setdefault(ch.name, []).append(end - start)
                self._add(Sample(end if slow else (start + end) / 2, ch.name, holds, error))
            oldest = min((started for started, _ in ch.inflight), default=now)
            stale = self.stale_time(ch.name)
            if (
                now - oldest >= stale
                and now - ch.last_answer >= stale
                and now - ch.stale_reported >= self.interval
            ):
                waited = now - oldest
                self._add(Sample(now, ch.name, None, f"no answer for {waited:.2f} s"))
                ch.stale_reported = now
            if len(ch.inflight) < self.inflight_limit(ch.name) and now >= ch.next_due:
                ch.next_due = now + self.interval
                ch.inflight.append((now, self.executor.submit(self._run, ch.probe)))

    def inflight_limit(self, name: str) -> int:
        """Probes of the node allowed in flight at once: ``max_inflight``, but one for a slow
        node (median round trip over ``stale_after``). Overlapping probes of a slow guest come
        back together, so they add no resolution, only load: an interpreted guest answering
        two at once takes twice as long, and its silences are noticed later."""
        rtt = self.round_trip(name)
        return 1 if rtt is not None and rtt > self.stale_after else self.max_inflight

    def stale_time(self, name: str) -> float:
        """How long the node may take to answer before it counts as not answering."""
        rtt = self.round_trip(name)
        return self.stale_after if rtt is None else max(self.stale_after, STALE_ROUND_TRIPS * rtt)

    def round_trip(self, name: str) -> float | None:
        """Median round trip of the node's recent answered probes (None before any answer; an
        answer that waited out a freeze is one long outlier among them)."""
        recent = self.round_trips.get(name, [])[-20:]
        return statistics.median(recent) if recent else None

    def latest(self, name: str) -> Sample | None:
        return self._latest.get(name)
