"""The drill's orchestration: settle, inject, watch the takeover, recover, settle again."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from labctl.errors import GuestUnreachable, LabctlError
from labctl.hypervisor import Hypervisor
from labctl.ops.drill.faults import HARD_FAULTS, Fault, FaultInjector, settle_target, theory
from labctl.ops.drill.poller import MAX_INFLIGHT, POLL_INTERVAL, STALE_AFTER, Poller, probe_holds
from labctl.ops.drill.timeline import DrillReport, Sample, Trial, analyse
from labctl.ops.faults import FaultJournal
from labctl.ops.verify import UNREACHABLE_ERRORS
from labctl.profile import Node, Profile
from labctl.remote import Remote

log = logging.getLogger(__name__)

RECONNECT_AFTER = 3  # consecutive immediate failures before a connection counts as lost
PROBE_TIMEOUT = 30.0  # long: a probe abandoned early leaks an SSH session on a thawed node
TICK = 0.005
SETTLE_DEADLINE = 30.0
SETTLE_MIN = 1.0
TAKEOVER_SLACK = 10.0
FAILBACK_DEADLINE = 30.0


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
    max_inflight: int = MAX_INFLIGHT
    stale_after: float = STALE_AFTER
    probe_timeout: float = PROBE_TIMEOUT
    settle_deadline: float = SETTLE_DEADLINE
    takeover_slack: float = TAKEOVER_SLACK
    failback_deadline: float = FAILBACK_DEADLINE
    tick: float = TICK
    progress: Callable[[str], None] | None = None
    reconnect: Callable[[str], Remote] | None = None
    journal: FaultJournal | None = None

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
            self.profile, self.pair_name, self.fault, self.remotes, self.hypervisor,
            journal=self.journal,
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
            max_inflight=self.max_inflight,
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
        """Exactly one holder (``want`` if given), unchanged for one advert interval (at least
        SETTLE_MIN: a 0.1 s VRRPv3 pair "settles" before systemd has finished starting the
        keepalived just recovered, and a crash injected then also breaks its next start)."""
        holders, reachable = self._holders(poller)
        good = reachable and len(holders) == 1 and (want is None or holders[0] == want)
        now = self.clock()
        if not good:
            since[0] = None
            return False
        start = since[0]
        if start is None:
            since[0] = start = now
        return now - start >= max(self.pair.advert_int, SETTLE_MIN)

    def _await(self, future: Future[Any], poller: Poller) -> None:
        while not future.done():
            poller.tick()
            self.sleep(self.tick)
        future.result()

    def _watch_old_holder(self, poller: Poller, faulted: str) -> None:
        """After the takeover, watch the old holder a little longer (does it let go, is it
        silent?): for an advert interval and a half from its first sample after the takeover.
        A slow guest's silence is sampled only after its stale time (three of its round trips:
        seconds for an interpreted VM); a fault undone before that would leave the report
        without a sample of the old holder during the fault, saying it was never unreachable.
        """
        since = self.clock()
        watch = self.pair.advert_int + 0.5
        sighted: list[float] = []

        def watched() -> bool:
            latest = poller.latest(faulted)
            if not sighted and latest is not None and latest.t > since:
                sighted.append(self.clock())
            return bool(sighted) and self.clock() - sighted[0] >= watch

        self._wait(poller, watched, watch + 2 * poller.stale_time(faulted))

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
        t0: float | None = None
        if self.fault in HARD_FAULTS:

            def wait_for_advert() -> tuple[bool, float]:
                return self.injector.wait_for_advert(faulted), self.clock()

            wait = executor.submit(wait_for_advert)
            self._await(wait, poller)
            synced, seen_at = wait.result()
            if synced:
                # t = 0 is the advert the peer's master-down timer starts from: it happened
                # about one SSH return trip (half a round trip) before the watcher's answer
                rtt = poller.round_trip(faulted)
                t0 = seen_at - (rtt / 2 if rtt is not None else 0.0)
        self._say(f"trial {index}: VIP on {faulted}; injecting {self.fault} there")
        injected_at = self.clock()
        t0 = injected_at if t0 is None else t0
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
                    self._watch_old_holder(poller, faulted)
        finally:
            recover_start = self.clock()
            try:
                self._await(executor.submit(self._recover, faulted, peer), poller)
            except LabctlError as exc:
                problems.append(f"recovering from the fault failed: {exc.message}")
        recovered_at = recover_start - t0
        failback: float | None = None
        settled_on: str | None = None
        want = settle_target(
            self.pair, self.fault, faulted, peer, primary=self.profile.nodes(self.pair_name)[0].name
        )
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
            injected=injected_at - t0,
        )

    # -- the drill -----------------------------------------------------------

    def run(self, trials: int = 1) -> DrillReport:
        own = self.executor is None
        # probes of both nodes plus one fault command, with room for probes stuck on a frozen node
        workers = 2 * self.max_inflight + 2
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
