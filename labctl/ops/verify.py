"""`labctl verify`: is each pair's virtual IP on exactly one machine, and does it answer there?

For every pair, both nodes are probed concurrently over SSH with one command each: the IPv4
addresses (``ip -o -4 addr show``), whether the keepalived service is active, keepalived's own
view of its VRRP instance (its JSON state dump: ``kill -s $(keepalived --signum=JSON)`` writes
``/tmp/keepalived.json``; Debian 12's 2.2.7 is built with ``--enable-json``; the password in it
is blanked on the machine before it is sent) and the machine's SSH host public keys. At the
same time the control host opens a TCP connection to each VIP on port 22 and reads the SSH host
key that answers (no authentication): the machine whose host key it is, is the one the network
actually delivers the VIP to (this catches a stale ARP entry).

Verdicts (per pair):

* ``OK``: exactly one node holds every VIP, keepalived there reports MASTER (the other does
  not), and each VIP answers with that node's host key.
* ``NO_HOLDER``: both nodes answered and neither holds any VIP.
* ``SPLIT_BRAIN``: both nodes hold a VIP and neither or both are keepalived's MASTER (a
  partition, or nodes that disagree on VRID/authentication).
* ``MISMATCH``: the addresses disagree with keepalived: a holder that is not MASTER (e.g. a VIP
  added by hand to the BACKUP, so both hold it but only one is MASTER, or one left behind by a
  killed keepalived), MASTER on a node without the VIP, VIPs split or partly missing, or the
  VIP answering as another machine.
* ``UNKNOWN``: a node could not be reached; what the other node showed is still reported, but a
  node that did not answer is never reported as "not holding". The hypervisor is asked first:
  a node that is absent, stopped, paused or has its cable out is reported so at once (with the
  command that fixes it), without an SSH attempt, and its pair's data path is not probed.

Exit codes (chosen by the CLI): 0 when every pair is OK, 5 when a node could not be reached,
6 otherwise.

JSON shape (``labctl verify --json``), stable; keys are never removed, only added::

    {
      "ok": true,                      # every pair OK
      "exit_code": 0,                  # 0 | 5 | 6, as above
      "attempts": 1,                   # probes made (more than one with --wait)
      "elapsed": 0.21,                 # seconds, whole command
      "pairs": [
        {
          "pair": "back",
          "verdict": "OK",             # OK | NO_HOLDER | SPLIT_BRAIN | MISMATCH | UNKNOWN
          "holder": "prod-back",       # the one node holding the VIPs, else null
          "reasons": [],               # why the verdict is not OK, one sentence each
          "vips": [
            {"vip": "10.249.90.100/24",
             "holders": ["prod-back"],          # nodes seen holding it (reachable ones only)
             "answered_by": "prod-back",        # machine whose host key VIP:22 presented,
                                                #  "unknown SHA256:..." or null (no answer)
             "data_path_error": null}           # why nothing answered, else null
          ],
          "nodes": [
            {"name": "prod-back", "role": "primary", "address": "10.249.90.10",
             "reachable": true, "error": null,  # error: why it could not be reached
             "machine_state": "running",        # the hypervisor's answer, asked first:
                                                #  running | absent | stopped | paused |
                                                #  link down | null (backend unusable)
             "service": "active",               # systemctl is-active keepalived, null if unknown
             "vrrp_state": "MASTER",            # MASTER | BACKUP | FAULT | INIT | null
             "priority": 103,                   # keepalived's effective priority, or null
             "holds": ["10.249.90.100/24"]}     # the pair's VIPs this node carries
          ]
        }
      ]
    }
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import paramiko
import tenacity

from labctl import keepalived as ka
from labctl.errors import EXIT_CHECKS, EXIT_OK, EXIT_UNREACHABLE, LabctlError
from labctl.hypervisor import Hypervisor
from labctl.ops.machines import Condition, MachineCondition, survey
from labctl.profile import Node, Profile
from labctl.remote import Remote

log = logging.getLogger(__name__)

LOGIN_TIMEOUT = 3.0
PROBE_TIMEOUT = 5.0
DATA_PATH_TIMEOUT = 2.0


@dataclass(frozen=True)
class CheckDeadlines:
    """How long one verify attempt gives a node: to log in, to run the state probe, and the
    VIP to show its SSH host key. Short by default (a node that does not answer is UNKNOWN and
    --wait retries); ``timeouts.check`` in the profile sets all three for slow guests."""

    login: float = LOGIN_TIMEOUT
    probe: float = PROBE_TIMEOUT
    host_key: float = DATA_PATH_TIMEOUT

    @classmethod
    def of(cls, profile: Profile) -> CheckDeadlines:
        seconds = profile.timeouts.check
        return cls() if seconds is None else cls(seconds, seconds, seconds)


WAIT_INTERVAL = 0.5

# Errors that mean "this machine did not answer" rather than a bug in labctl.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    LabctlError,
    OSError,
    EOFError,
    paramiko.SSHException,
)

_VRRP_STATES = {0: "INIT", 1: "BACKUP", 2: "MASTER", 3: "FAULT"}

# keepalived's JSON dump (shell). The dump is written by keepalived's VRRP process shortly after
# the signal, so wait (bounded) for a complete file; the password is blanked before it leaves.
KEEPALIVED_JSON_DUMP = r"""
pid=$(cat /run/keepalived.pid 2>/dev/null)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  f=/tmp/keepalived.json
  rm -f "$f"
  kill -s "$(keepalived --signum=JSON)" "$pid" 2>/dev/null
  i=0
  while [ $i -lt 100 ] && ! grep -q ']$' "$f" 2>/dev/null; do sleep 0.01; i=$((i+1)); done
  sed 's/"auth_data":"[^"]*"/"auth_data":""/g' "$f" 2>/dev/null
fi
"""
# One round trip per node.
PROBE_SCRIPT = (
    r"""
echo @@addr; ip -o -4 addr show
echo @@service; systemctl is-active keepalived 2>/dev/null
echo @@hostkeys; cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null
echo @@json"""
    + KEEPALIVED_JSON_DUMP
    + "echo @@end\n"
)


class Verdict(enum.StrEnum):
    OK = "OK"
    NO_HOLDER = "NO_HOLDER"
    SPLIT_BRAIN = "SPLIT_BRAIN"
    MISMATCH = "MISMATCH"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class HostKey:
    """An SSH host public key: type (``ssh-ed25519``) and base64 blob."""

    kind: str
    blob: str

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class NodeView:
    """What one node showed (or why it showed nothing)."""

    node: Node
    reachable: bool
    error: str | None = None
    addresses: tuple[ka.IfAddr, ...] = ()
    service: str | None = None
    vrrp_state: str | None = None
    priority: int | None = None
    host_keys: frozenset[HostKey] = frozenset()
    machine_state: str | None = None  # the hypervisor's condition; None when not asked

    def holds(self, vip: str) -> bool:
        return self.reachable and ka.holds(self.addresses, vip)

    def to_json(self, vips: Sequence[str]) -> dict[str, Any]:
        return {
            "name": self.node.name,
            "role": self.node.role,
            "address": self.node.ip,
            "reachable": self.reachable,
            "error": self.error,
            "machine_state": self.machine_state,
            "service": self.service,
            "vrrp_state": self.vrrp_state,
            "priority": self.priority,
            "holds": [v for v in vips if self.holds(v)],
        }


@dataclass(frozen=True)
class DataPath:
    """Who answered on VIP:22 from the control host."""

    vip: str
    key: HostKey | None
    error: str | None = None


@dataclass(frozen=True)
class VipStatus:
    vip: str
    holders: tuple[str, ...]
    answered_by: str | None
    data_path_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "vip": self.vip,
            "holders": list(self.holders),
            "answered_by": self.answered_by,
            "data_path_error": self.data_path_error,
        }


@dataclass(frozen=True)
class PairReport:
    pair: str
    verdict: Verdict
    holder: str | None
    reasons: tuple[str, ...]
    vips: tuple[VipStatus, ...]
    nodes: tuple[NodeView, NodeView]

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def to_json(self) -> dict[str, Any]:
        vips = [v.vip for v in self.vips]
        return {
            "pair": self.pair,
            "verdict": str(self.verdict),
            "holder": self.holder,
            "reasons": list(self.reasons),
            "vips": [v.to_json() for v in self.vips],
            "nodes": [n.to_json(vips) for n in self.nodes],
        }


@dataclass(frozen=True)
class VerifyReport:
    pairs: tuple[PairReport, ...]
    attempts: int = 1
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pairs)

    @property
    def unreachable(self) -> bool:
        return any(p.verdict is Verdict.UNKNOWN for p in self.pairs)

    @property
    def exit_code(self) -> int:
        if self.ok:
            return EXIT_OK
        return EXIT_UNREACHABLE if self.unreachable else EXIT_CHECKS

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "attempts": self.attempts,
            "elapsed": round(self.elapsed, 3),
            "pairs": [p.to_json() for p in self.pairs],
        }


# ---------------------------------------------------------------------------
# Reading one node


def split_sections(stdout: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        if line.startswith("@@"):
            current = found.setdefault(line[2:].strip(), [])
        elif current is not None:
            current.append(line)
    return {k: "\n".join(v) for k, v in found.items()}


def parse_host_keys(text: str) -> frozenset[HostKey]:
    """Host keys from ``*.pub`` lines (``type base64 [comment]``)."""
    keys = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            keys.add(HostKey(parts[0], parts[1]))
    return frozenset(keys)


def parse_vrrp_json(text: str, instance: str) -> tuple[str | None, int | None]:
    """(state, effective priority) of one VRRP instance from keepalived's JSON dump."""
    text = text.strip()
    if not text:
        return None, None
    try:
        data = json.loads(text)
    except ValueError:
        return None, None
    for entry in data if isinstance(data, list) else []:
        info = entry.get("data", {}) if isinstance(entry, dict) else {}
        if info.get("iname") == instance:
            code = info.get("state")
            state = _VRRP_STATES.get(code, str(code)) if isinstance(code, int) else None
            prio = info.get("effective_priority")
            return state, prio if isinstance(prio, int) else None
    return None, None


def read_node(remote: Remote, node: Node, instance: str, *, timeout: float) -> NodeView:
    """Probe one node; any failure to get an answer makes it unreachable (never 'absent')."""
    try:
        result = remote.run(["sh", "-c", PROBE_SCRIPT], check=False, timeout=timeout)
    except UNREACHABLE_ERRORS as exc:
        return NodeView(node, reachable=False, error=describe_error(exc))
    parts = split_sections(result.stdout)
    if "end" not in parts:
        return NodeView(
            node, reachable=False, error=f"probe did not complete (exit {result.exit_code})"
        )
    state, prio = parse_vrrp_json(parts.get("json", ""), ka.instance_name(node.pair))
    service = parts.get("service", "").strip() or None
    return NodeView(
        node,
        reachable=True,
        addresses=tuple(ka.parse_ip_addr(parts.get("addr", ""))),
        service=service,
        vrrp_state=state,
        priority=prio,
        host_keys=parse_host_keys(parts.get("hostkeys", "")),
    )


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, LabctlError):
        return exc.message
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, OSError) else text


# ---------------------------------------------------------------------------
# The data path


def ssh_host_key(host: str, port: int = 22, timeout: float = DATA_PATH_TIMEOUT) -> HostKey:
    """The host key presented by whatever answers SSH at host:port (key exchange, no login)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return HostKey(key.get_name(), key.get_base64())
    finally:
        transport.close()
        sock.close()


HostKeyReader = Callable[[str, int, float], HostKey]


def read_data_path(vip: str, port: int, reader: HostKeyReader, timeout: float) -> DataPath:
    ip = str(ipaddress.IPv4Interface(vip).ip)
    try:
        return DataPath(vip, reader(ip, port, timeout))
    except (OSError, EOFError, paramiko.SSHException) as exc:
        return DataPath(vip, None, describe_error(exc))


# ---------------------------------------------------------------------------
# Judging a pair (pure)


def judge(
    pair: str, views: tuple[NodeView, NodeView], vips: Sequence[str], paths: Mapping[str, DataPath]
) -> PairReport:
    """The verdict for one pair from what its nodes and the data path showed."""
    statuses = []
    for vip in vips:
        path = paths.get(vip)
        statuses.append(
            VipStatus(
                vip=vip,
                holders=tuple(v.node.name for v in views if v.holds(vip)),
                answered_by=_who(path.key, views) if path and path.key else None,
                data_path_error=path.error if path else None,
            )
        )
    verdict, holder, reasons = _verdict(views, statuses)
    return PairReport(pair, verdict, holder, tuple(reasons), tuple(statuses), views)


def _who(key: HostKey, views: Sequence[NodeView]) -> str:
    for view in views:
        if key in view.host_keys:
            return view.node.name
    return f"unknown {key.fingerprint}"


def _verdict(
    views: tuple[NodeView, NodeView], statuses: Sequence[VipStatus]
) -> tuple[Verdict, str | None, list[str]]:
    down = [v for v in views if not v.reachable]
    if down:
        reasons = [
            f"{v.node.name} {v.error}"
            if v.machine_state not in (None, "running")
            else f"{v.node.name} unreachable: {v.error}"
            for v in down
        ]
        reasons += [f"{s.vip} seen on {', '.join(s.holders)}" for s in statuses if s.holders]
        return Verdict.UNKNOWN, None, reasons
    both = [s for s in statuses if len(s.holders) == 2]
    if both:
        reasons = [f"{s.vip} is on both nodes" for s in both]
        not_master = [v for v in views if v.vrrp_state != "MASTER"]
        if len(not_master) == 1:
            # one of the two holders is not keepalived's MASTER: an address keepalived does
            # not own (added by hand, or left behind by a keepalived that was killed)
            v = not_master[0]
            reasons.append(
                f"{v.node.name} holds it but keepalived there is "
                f"{v.vrrp_state or 'not reporting'} (service {v.service or 'unknown'})"
            )
            return Verdict.MISMATCH, None, reasons
        return Verdict.SPLIT_BRAIN, None, reasons
    holders = {h for s in statuses for h in s.holders}
    if not holders:
        return Verdict.NO_HOLDER, None, [f"{s.vip} is on neither node" for s in statuses]
    reasons = []
    if len(holders) > 1:
        reasons.append("the VIPs are split between the nodes")
    missing = [s.vip for s in statuses if not s.holders]
    if missing:
        reasons.append(f"{', '.join(missing)} on neither node")
    holder = sorted(holders)[0] if len(holders) == 1 else None
    for view in views:
        name = view.node.name
        if name == holder and view.vrrp_state != "MASTER":
            reasons.append(
                f"{name} holds the VIP but keepalived there is "
                f"{view.vrrp_state or 'not reporting'} (service {view.service or 'unknown'})"
            )
        if name != holder and view.vrrp_state == "MASTER":
            reasons.append(f"{name} reports MASTER but does not hold the VIP")
    for s in statuses:
        if holder is None or not s.holders:
            continue
        if s.answered_by is None:
            reasons.append(f"{s.vip}:22 did not answer ({s.data_path_error or 'no answer'})")
        elif s.answered_by != holder:
            reasons.append(f"{s.vip}:22 answered as {s.answered_by}, not {holder}")
    if reasons:
        return Verdict.MISMATCH, holder, reasons
    return Verdict.OK, holder, []


# ---------------------------------------------------------------------------
# The operation


def stop_at(clock: Callable[[], float], deadline: float) -> tenacity.stop.stop_base:
    """A tenacity stop: give up when the next sleep would end past ``deadline`` on ``clock``.

    Used together with ``stop_before_delay`` so that an injected clock (unit tests) ends the
    wait as surely as the real one.
    """

    class _StopAt(tenacity.stop.stop_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            return clock() + (retry_state.upcoming_sleep or 0.0) >= deadline

    return _StopAt()


Connect = Callable[[Node], Remote]
_RUNNING = MachineCondition("", Condition.RUNNING)


@dataclass
class Verifier:
    """Verifies pairs, keeping one connection per node across --wait attempts.

    Args:
        profile: the lab profile.
        pairs: names of the pairs to check.
        connect: opens (or raises for) a connection to a node; called at most once per node
            while it succeeds, again on a later attempt after it failed.
        host_key_reader: reads the SSH host key at (ip, port, timeout); paramiko by default.
    """

    profile: Profile
    pairs: Sequence[str]
    connect: Connect
    host_key_reader: HostKeyReader = ssh_host_key
    deadlines: CheckDeadlines = CheckDeadlines()
    conditions: Callable[[Sequence[str]], Mapping[str, MachineCondition]] | None = None
    remotes: dict[str, Remote] = field(default_factory=dict)

    def _view(self, node: Node, cond: MachineCondition | None) -> NodeView:
        state = None if cond is None or cond.condition is Condition.UNKNOWN else str(cond.condition)
        if cond is not None and cond.blocked:
            # the hypervisor already said it cannot answer: no SSH attempt, no timeout
            stale = self.remotes.pop(node.name, None)
            if stale is not None:
                _close_quietly(stale)
            return NodeView(node, reachable=False, error=cond.reason, machine_state=state)
        view = self._ssh_view(node)
        return dataclasses.replace(view, machine_state=state)

    def _ssh_view(self, node: Node) -> NodeView:
        remote = self.remotes.get(node.name)
        if remote is None:
            try:
                remote = self.connect(node)
            except UNREACHABLE_ERRORS as exc:
                return NodeView(node, reachable=False, error=describe_error(exc))
            self.remotes[node.name] = remote
        view = read_node(remote, node, ka.instance_name(node.pair), timeout=self.deadlines.probe)
        if not view.reachable:
            # a dead connection is reopened on the next attempt
            self.remotes.pop(node.name, None)
            _close_quietly(remote)
        return view

    def once(self) -> tuple[PairReport, ...]:
        nodes = [n for p in self.pairs for n in self.profile.nodes(p)]
        conds = self.conditions([n.name for n in nodes]) if self.conditions else {}
        blocked = {
            p
            for p in self.pairs
            if any(conds.get(n.name, _RUNNING).blocked for n in self.profile.nodes(p))
        }
        vips = [(p, v) for p in self.pairs if p not in blocked for v in self.profile.pair(p).vip]
        port = self.profile.ssh.port
        workers = max(1, len(nodes) + len(vips))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            view_futures = {n.name: pool.submit(self._view, n, conds.get(n.name)) for n in nodes}
            path_futures = {
                (p, v): pool.submit(
                    read_data_path, v, port, self.host_key_reader, self.deadlines.host_key
                )
                for p, v in vips
            }
            reports = []
            for pair in self.pairs:
                primary, standby = self.profile.nodes(pair)
                views = (view_futures[primary.name].result(), view_futures[standby.name].result())
                pair_vips = self.profile.pair(pair).vip
                paths = {
                    v: path_futures[(pair, v)].result()
                    if pair not in blocked
                    else DataPath(v, None, "not probed: a node of the pair cannot answer")
                    for v in pair_vips
                }
                reports.append(judge(pair, views, pair_vips, paths))
        return tuple(reports)

    def close(self) -> None:
        for remote in self.remotes.values():
            _close_quietly(remote)
        self.remotes.clear()


def _close_quietly(remote: Remote) -> None:
    try:
        remote.close()
    except UNREACHABLE_ERRORS:
        log.debug("closing %s failed", remote.name, exc_info=True)


def _log_waiting(state: tenacity.RetryCallState) -> None:
    """What --wait is waiting for, in one line (the report itself is for the CLI)."""
    reports = state.outcome.result() if state.outcome and not state.outcome.failed else ()
    pending = ", ".join(f"{r.pair} {r.verdict}" for r in reports if not r.ok)
    log.info(
        "verify: waiting for %s to converge; next check in %.1f s",
        pending or "the pairs",
        state.upcoming_sleep,
    )


def verify(
    profile: Profile,
    pairs: Sequence[str],
    connect: Connect,
    *,
    wait: float = 0.0,
    interval: float = WAIT_INTERVAL,
    host_key_reader: HostKeyReader = ssh_host_key,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    deadlines: CheckDeadlines | None = None,
    hypervisor: Hypervisor | None = None,
) -> VerifyReport:
    """Verify the named pairs (every pair when empty); with ``wait`` > 0, retry until all OK.

    With a (usable) ``hypervisor``, each attempt asks it about every node first.

    Raises UnknownName for an unknown pair name. Never raises for a lab that is unhealthy or
    unreachable: that is the report's verdict.
    """
    names = list(pairs) or list(profile.pairs)
    for name in names:
        profile.pair(name)
    start = clock()
    conditions = None
    if hypervisor is not None:

        def conditions(machines: Sequence[str]) -> Mapping[str, MachineCondition]:
            return survey(profile, hypervisor, machines)

    verifier = Verifier(
        profile,
        names,
        connect,
        host_key_reader=host_key_reader,
        deadlines=deadlines or CheckDeadlines.of(profile),
        conditions=conditions,
    )
    attempts = 0

    def attempt() -> tuple[PairReport, ...]:
        nonlocal attempts
        attempts += 1
        return verifier.once()

    try:
        if wait <= 0:
            reports = attempt()
        else:
            retrying = tenacity.Retrying(
                stop=tenacity.stop_before_delay(wait) | stop_at(clock, start + wait),
                wait=tenacity.wait_fixed(interval),
                retry=tenacity.retry_if_result(lambda rs: not all(r.ok for r in rs)),
                retry_error_callback=lambda state: state.outcome.result() if state.outcome else (),
                before_sleep=_log_waiting,
                sleep=sleep,
                reraise=True,
            )
            reports = retrying(attempt)
    finally:
        verifier.close()
    return VerifyReport(tuple(reports), attempts=attempts, elapsed=clock() - start)
