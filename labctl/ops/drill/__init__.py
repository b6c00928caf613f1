"""`labctl failover`: break the VIP's holder on purpose and time how the standby takes over.

One trial: wait until the pair is settled (exactly one holder), inject the fault on the holder
(hard faults right after the holder sent a VRRP advert, seen on the holder itself, so that the
peer's master-down timer starts at injection and measured compares with theory), poll both
nodes' addresses over their already-open connections (a probe is started on each node every
``poll_interval`` seconds, up to ``max_inflight`` overlapping per node, one to a slow node;
each sample stamped with the middle of its round trip), wait for the other node to take the
VIP, watch the old holder for an advert interval and a half from its first sample after that
(a slow guest's silence shows only after its stale time), recover the fault and wait for the
pair to settle again where VRRP says it should (``settle_target``: back on the primary when
the pair preempts; with ``preempt = false`` on the node that took over after stop, crash and
health, on the primary after freeze, link and partition).

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

A node whose probe fails or has not answered within its stale time (``stale_after`` seconds,
or three of its own median round trips when that is longer: an interpreted VirtualBox guest
answers in seconds) is recorded as unreachable in the timeline, never as "not holding".

Theory beside measured: a hard fault (crash, freeze, link, partition) takes the backup's
master-down interval, ``3 × advert_int + skew``; a graceful stop its skew time alone (priority
of the node taking over). As keepalived computes it (``VRRP_TIMER_SKEW``): VRRPv2 ``skew =
(256 − priority)/256`` s; VRRPv3 ``skew = ((256 − priority) × advert_int)/256`` (RFC 5798), so
a v3 pair at ``advert_int = 0.1`` with priority 100 takes 0.3609 s. For ``health`` the figure
is an upper bound, ``check.interval × check.fall`` plus the master-down interval.

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
         "released": 0.02,     # s after t = 0: faulted node first seen without the VIP
                               #   before recovery (null: never, e.g. unreachable or holding)
         "takeover": 3.6,      # s after t = 0: peer first seen holding (time to new holder)
         "gap": 0.0,           # s with neither node holding (both seen) until recovery
         "overlap": 3.1,       # s with both holding until recovery
         "unreachable": {"prod-back": 0.0},      # s each node was unreachable until recovery
         "recovered_at": 4.7,  # s after t = 0 the fault was undone
         "failback": 1.2,      # s from recovery until settled again (null: never settled)
         "failback_gap": 0.0, "failback_overlap": 0.05,
         "settled_on": "prod-back",
         "error": -0.01,       # takeover - theory
         "resolution": 0.04,   # largest interval between two samples of the peer
         "synced": true,       # hard faults: injected right after the holder's own advert
         "injected": 0.03,     # s after t = 0 the fault command started: t = 0 is the start
                               #   of injection, or (synced) the holder's advert it followed,
                               #   estimated as the advert watcher's answer minus half the
                               #   node's median SSH round trip (the peer's timer starts there)
         "problems": [],
         "events": [{"t": 0.0, "node": "prod-back", "holds": true, "error": null}, ...]}
      ]
    }

``events`` lists only changes of what a node showed (and the first sample of each node).
"""

from __future__ import annotations

from labctl.ops.drill.faults import (
    FAILING_CHECK,
    HARD_FAULTS,
    NFT_TABLE,
    WAIT_FOR_OWN_ADVERT,
    Fault,
    FaultInjector,
    settle_target,
    theory,
)
from labctl.ops.drill.poller import (
    MAX_INFLIGHT,
    POLL_INTERVAL,
    STALE_AFTER,
    Poller,
    ProbeOutcome,
    poll_plan,
    probe_holds,
)
from labctl.ops.drill.run import (
    FAILBACK_DEADLINE,
    PROBE_TIMEOUT,
    RECONNECT_AFTER,
    SETTLE_DEADLINE,
    TAKEOVER_SLACK,
    TICK,
    Drill,
)
from labctl.ops.drill.timeline import DrillReport, Sample, Stat, Timeline, Trial, analyse, changes

__all__ = [
    "FAILBACK_DEADLINE",
    "FAILING_CHECK",
    "HARD_FAULTS",
    "MAX_INFLIGHT",
    "NFT_TABLE",
    "POLL_INTERVAL",
    "PROBE_TIMEOUT",
    "RECONNECT_AFTER",
    "SETTLE_DEADLINE",
    "STALE_AFTER",
    "TAKEOVER_SLACK",
    "TICK",
    "WAIT_FOR_OWN_ADVERT",
    "Drill",
    "DrillReport",
    "Fault",
    "FaultInjector",
    "Poller",
    "ProbeOutcome",
    "Sample",
    "Stat",
    "Timeline",
    "Trial",
    "analyse",
    "changes",
    "poll_plan",
    "probe_holds",
    "settle_target",
    "theory",
]
