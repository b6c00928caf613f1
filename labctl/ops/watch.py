"""`labctl watch`: every pair's holder and each node's VRRP state, live, with a transitions log.

What people do by hand with ``watch ip a`` in two terminals. Each node is probed over its open
SSH connection by the drill's :class:`~labctl.ops.drill.poller.Poller` (one probe in flight per
node, a new one every ``interval`` seconds, never blocking on a silent node): one probe reads
the node's IPv4 addresses and keepalived's state from its JSON dump (``STOPPED`` when no
keepalived runs). A node that does not answer is ``reachable: false``, never "not holding".

Events (``labctl watch --json``: one JSON object per line, in the order seen)::

    {"time": "2026-12-02T01:50:00.123+00:00",   # UTC, when the sample was taken
     "pair": "back", "node": "prod-back",
     "state": "MASTER",        # MASTER | BACKUP | FAULT | INIT | STOPPED | null (unknown)
     "holds": true,            # carries the pair's VIP (null: unreachable)
     "reachable": true,
     "holder": "prod-back",    # the pair's one holder after this change; null: none or several
     "holders": ["prod-back"],
     "error": null}            # why the node did not answer

The first sample of each node is an event too; afterwards only changes of state, holds or
reachability are.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from labctl import keepalived as ka
from labctl.errors import GuestUnreachable
from labctl.ops.drill.poller import Poller
from labctl.ops.verify import UNREACHABLE_ERRORS, parse_vrrp_json, split_sections
from labctl.profile import Node, Profile
from labctl.remote import Remote

INTERVAL = 0.1
TICK = 0.01
# a node is shown unreachable after this long without an answer: a keepalived that is shutting
# down never writes its dump, and a loaded host can stretch one probe well past 0.5 s
STALE_AFTER = 2.0
RECONNECT_EVERY = 2.0
PROBE_TIMEOUT = 10.0

# $1: keepalived's JSON signal number (asked once per connection). The dump is complete when
# it ends with "]"; one probe per node is in flight, so the file is ours meanwhile.
PROBE = r"""
ip -o -4 addr show
echo @@state
pid=$(cat /run/keepalived.pid 2>/dev/null)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  f=/tmp/keepalived.json
  rm -f "$f"
  kill -s "$1" "$pid" 2>/dev/null
  i=0
  while [ $i -lt 20 ] && ! grep -q ']$' "$f" 2>/dev/null; do sleep 0.01; i=$((i+1)); done
  sed 's/"auth_data":"[^"]*"/"auth_data":""/g' "$f" 2>/dev/null
else
  echo STOPPED
fi
echo @@end
"""


@dataclass(frozen=True)
class NodeState:
    """What one node showed at one time."""

    pair: str
    node: str
    at: float  # wall-clock seconds
    reachable: bool
    holds: bool | None
    state: str | None
    error: str | None = None


@dataclass(frozen=True)
class Event:
    node: NodeState
    holders: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        n = self.node
        return {
            "time": dt.datetime.fromtimestamp(n.at, dt.UTC).isoformat(timespec="milliseconds"),
            "pair": n.pair,
            "node": n.node,
            "state": n.state,
            "holds": n.holds,
            "reachable": n.reachable,
            "holder": self.holders[0] if len(self.holders) == 1 else None,
            "holders": list(self.holders),
            "error": n.error,
        }


@dataclass(frozen=True)
class Snapshot:
    """Every watched node's latest state, by pair (for the live view)."""

    pairs: Mapping[str, tuple[NodeState | None, ...]]

    def holders(self, pair: str) -> tuple[str, ...]:
        return tuple(n.node for n in self.pairs[pair] if n is not None and n.holds)


def read_state(
    remote: Remote, signum: str, vips: Sequence[str], instance: str
) -> tuple[bool, str | None]:
    """(holds a VIP, keepalived's state) of one node; raises when it does not answer."""
    result = remote.run(["sh", "-c", PROBE, "watch", signum], check=True, timeout=PROBE_TIMEOUT)
    parts = split_sections(result.stdout)
    if "end" not in parts:
        raise GuestUnreachable(f"{remote.name}: the probe did not complete")
    addrs = ka.parse_ip_addr(result.stdout.split("@@state", 1)[0])
    holds = any(ka.holds(addrs, v) for v in vips)
    raw = parts.get("state", "").strip()
    state = "STOPPED" if raw == "STOPPED" else parse_vrrp_json(raw, instance)[0]
    return holds, state


@dataclass
class Watch:
    """Polls the nodes of ``pairs`` until ``stop()``; nothing here prints.

    Args:
        connect: opens a connection to a node (raises when it cannot); called at start, and
            again every ``RECONNECT_EVERY`` seconds for a node whose connection is lost.
        on_event: called with every change (and each node's first sample), in order.
        on_refresh: called with a Snapshot at most every ``interval`` seconds.
        stop: polled between ticks; the watch ends when it returns True.
    """

    profile: Profile
    pairs: Sequence[str]
    connect: Callable[[Node], Remote]
    interval: float = INTERVAL
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    tick: float = TICK
    executor: Executor | None = None  # a thread pool by default
    _remotes: dict[str, Remote] = field(default_factory=dict)
    _signums: dict[str, str] = field(default_factory=dict)
    _states: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    _tried: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _nodes(self) -> dict[str, tuple[str, Node]]:
        return {n.name: (p, n) for p in self.pairs for n in self.profile.nodes(p)}

    def _remote(self, node: Node) -> Remote:
        with self._lock:
            remote = self._remotes.get(node.name)
            if remote is not None:
                return remote
            now = self.clock()
            if now - self._tried.get(node.name, -1e9) < RECONNECT_EVERY:
                raise GuestUnreachable(f"{node.name}: not connected")
            self._tried[node.name] = now
        remote = self.connect(node)
        signum = remote.run(["keepalived", "--signum=JSON"], check=True, timeout=PROBE_TIMEOUT)
        with self._lock:
            self._remotes[node.name] = remote
            self._signums[node.name] = signum.stdout.strip() or "36"
        return remote

    def _drop(self, name: str, remote: Remote) -> None:
        with self._lock:
            if self._remotes.get(name) is remote:
                del self._remotes[name]
        with contextlib.suppress(*UNREACHABLE_ERRORS):
            remote.close()

    def _probe_for(self, pair: str, node: Node) -> Callable[[], bool]:
        spec = self.profile.pair(pair)
        instance = ka.instance_name(pair)

        def probe() -> bool:
            remote = self._remote(node)
            try:
                holds, state = read_state(remote, self._signums[node.name], spec.vip, instance)
            except GuestUnreachable:
                self._drop(node.name, remote)
                raise
            with self._lock:
                self._states[node.name] = (self.wall(), state)
            return holds

        return probe

    def run(
        self,
        on_event: Callable[[Event], None],
        on_refresh: Callable[[Snapshot], None],
        stop: Callable[[], bool],
    ) -> None:
        nodes = self._nodes()
        own = self.executor is None
        executor = self.executor or ThreadPoolExecutor(
            max_workers=2 * len(nodes) + 1, thread_name_prefix="watch"
        )
        poller = Poller(
            {name: self._probe_for(pair, node) for name, (pair, node) in nodes.items()},
            self.clock,
            executor,
            interval=self.interval,
            stale_after=max(STALE_AFTER, 3 * self.interval),
            max_inflight=1,
        )
        last: dict[str, tuple[bool, bool | None, str | None]] = {}
        shown: dict[str, NodeState] = {}  # what the events said so far, node by node
        refreshed = -1e9
        offset = self.wall() - self.clock()
        try:
            while not stop():
                poller.tick()
                latest = self._latest(poller, nodes, offset)
                fresh = list(poller.samples)
                poller.samples.clear()  # only the latest per node is kept (poller.latest)
                for sample in sorted(fresh, key=lambda s: s.t):
                    pair, _node = nodes[sample.node]
                    with self._lock:
                        state = self._states.get(sample.node, (0.0, None))[1]
                    reachable = sample.holds is not None
                    now = NodeState(
                        pair,
                        sample.node,
                        sample.t + offset,
                        reachable,
                        sample.holds,
                        state if reachable else None,
                        sample.error,
                    )
                    key = (reachable, now.holds, now.state)
                    if reachable and now.state is None and sample.node in last:
                        continue  # a dump that could not be read says nothing new
                    if last.get(sample.node) != key:
                        last[sample.node] = key
                        shown[sample.node] = now
                        on_event(Event(now, self._holders(pair, shown, nodes)))
                if self.clock() - refreshed >= self.interval:
                    refreshed = self.clock()
                    on_refresh(self._snapshot({**latest, **shown}, nodes))
                self.sleep(self.tick)
        finally:
            if own:
                executor.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                remotes = list(self._remotes.values())
                self._remotes.clear()
            for remote in remotes:
                with contextlib.suppress(*UNREACHABLE_ERRORS):
                    remote.close()

    def _latest(
        self, poller: Poller, nodes: Mapping[str, tuple[str, Node]], offset: float
    ) -> dict[str, NodeState]:
        out = {}
        for name, (pair, _node) in nodes.items():
            s = poller.latest(name)
            if s is None:
                continue
            with self._lock:
                state = self._states.get(name, (0.0, None))[1]
            reachable = s.holds is not None
            out[name] = NodeState(
                pair, name, s.t + offset, reachable, s.holds, state if reachable else None, s.error
            )
        return out

    def _holders(
        self, pair: str, latest: Mapping[str, NodeState], nodes: Mapping[str, tuple[str, Node]]
    ) -> tuple[str, ...]:
        return tuple(
            name
            for name, (p, _n) in nodes.items()
            if p == pair and latest.get(name) and latest[name].holds
        )

    def _snapshot(
        self, latest: Mapping[str, NodeState], nodes: Mapping[str, tuple[str, Node]]
    ) -> Snapshot:
        return Snapshot(
            {
                pair: tuple(latest.get(n.name) for n in self.profile.nodes(pair))
                for pair in self.pairs
            }
        )
