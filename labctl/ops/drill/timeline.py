"""Samples of what each node showed, and the pure analysis of a trial and of a drill."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from labctl.errors import EXIT_CHECKS, EXIT_OK
from labctl.ops.drill.faults import Fault


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
    injected: float = 0.0  # s after t = 0 the fault command started

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
            "injected": r(self.injected),
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
