"""The lab's record of a drill fault that is in place, so that a killed drill heals.

``labctl failover`` writes the fault it is about to inject here *before* injecting it and
clears it once the fault is undone. A labctl killed in between leaves the record behind: every
later command says so in one line, and ``labctl up`` and the next ``labctl failover`` undo it
(resume the machine, reconnect the cable, remove the partition rules, restore the check script,
start keepalived again) and say what they did.

The record is ``faults.json`` in the lab's directory, written atomically under the lab lock:
``{"PAIR": {"pair", "fault", "faulted", "peer", "since"}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from labctl import keepalived as ka
from labctl import paths
from labctl.errors import LabctlError
from labctl.hypervisor import Hypervisor, MachineState, VrrpPartitioner
from labctl.profile import Node, Profile
from labctl.remote import Remote
from labctl.state import atomic_write, lab_lock

# the in-guest partition rules' table (drills fall back to it without a VrrpPartitioner)
NFT_TABLE = "labctl_drill"


@dataclass(frozen=True)
class PendingFault:
    """A fault a drill injected (or was about to) and has not undone yet."""

    pair: str
    fault: str  # stop | crash | freeze | link | partition | health
    faulted: str
    peer: str
    since: float  # epoch seconds

    def describe(self) -> str:
        return f"`failover {self.pair} --fault {self.fault}` on {self.faulted}"


@dataclass(frozen=True)
class FaultJournal:
    """Reads and writes one lab's fault record."""

    lab: str

    @property
    def path(self) -> Path:
        return paths.lab_dir(self.lab) / "faults.json"

    def _load(self) -> dict[str, PendingFault]:
        try:
            data = json.loads(self.path.read_text())
            return {k: PendingFault(**v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError):
            return {}

    def _save(self, faults: dict[str, PendingFault]) -> None:
        if not faults:
            self.path.unlink(missing_ok=True)
            return
        atomic_write(self.path, json.dumps({k: asdict(v) for k, v in faults.items()}, indent=2))

    def pending(self) -> list[PendingFault]:
        return list(self._load().values())

    def record(self, fault: PendingFault) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with lab_lock(self.path.parent):
            faults = self._load()
            faults[fault.pair] = fault
            self._save(faults)

    def clear(self, pair: str) -> None:
        if not self.path.exists():
            return
        with lab_lock(self.path.parent):
            faults = self._load()
            if faults.pop(pair, None) is not None:
                self._save(faults)


def journal_for(profile: Profile) -> FaultJournal:
    return FaultJournal(profile.lab.name)


def notice(profile: Profile) -> str | None:
    """One line naming every unrecovered fault, or None."""
    pending = journal_for(profile).pending()
    if not pending:
        return None
    what = "; ".join(p.describe() for p in pending)
    return (
        f"warning: a drill was interrupted before it recovered its fault ({what}): "
        "`labctl up` or the next `labctl failover` undoes it"
    )


def new_record(pair: str, fault: str, faulted: str, peer: str) -> PendingFault:
    return PendingFault(pair, fault, faulted, peer, time.time())


def recover(
    profile: Profile,
    hv: Hypervisor | None,
    fault: PendingFault,
    connect: Callable[[Node], Remote],
    *,
    timeout: float = 60.0,
) -> str:
    """Undo one recorded fault, clear its record and say what was done.

    Raises LabctlError when the fault cannot be undone (the record is then kept).
    """
    nodes = {n.name: n for n in profile.nodes(fault.pair)}
    faulted = nodes[fault.faulted]

    def run(node: Node, argv: list[str]) -> None:
        remote = connect(node)
        try:
            remote.run(argv, timeout=timeout)
        finally:
            remote.close()

    kind = fault.fault
    if kind in ("freeze", "link"):
        if hv is None:
            raise LabctlError(f"{fault.describe()}: undoing it needs the lab's hypervisor")
        machine = hv.inspect(fault.faulted)
        if kind == "freeze" and machine.state is MachineState.PAUSED:
            hv.resume(fault.faulted)
        if kind == "link" and machine.link_up is not True:
            hv.set_link(fault.faulted, True)
        done = "resumed it" if kind == "freeze" else "reconnected its cable"
    elif kind in ("stop", "crash"):
        run(faulted, ["systemctl", "start", "keepalived"])
        done = "started keepalived again"
    elif kind == "partition":
        if isinstance(hv, VrrpPartitioner):
            hv.unblock_vrrp(fault.faulted, fault.peer)
        else:
            for node in nodes.values():
                run(node, ["sh", "-c", f"nft delete table inet {NFT_TABLE} 2>/dev/null; true"])
        done = "removed the VRRP partition rules"
    elif kind == "health":
        script = profile.check_script_path(fault.pair)
        check = profile.pair(fault.pair).check
        if script is None or check is None:
            raise LabctlError(f"{fault.describe()}: the profile has no check script to restore")
        remote = connect(faulted)
        try:
            remote.put(script.read_bytes(), f"{ka.KEEPALIVED_DIR}/{check.script}", mode=0o755)
        finally:
            remote.close()
        done = "restored its check script"
    else:
        raise LabctlError(f"unknown fault {kind!r} in {journal_for(profile).path}")
    journal_for(profile).clear(fault.pair)
    return f"{fault.faulted}: undid the interrupted {fault.describe()}: {done}"


def recover_all(
    profile: Profile,
    hv: Hypervisor | None,
    connect: Callable[[Node], Remote],
    *,
    pairs: list[str] | None = None,
) -> list[str]:
    """Undo every recorded fault (of the named pairs); one line per fault undone."""
    done = []
    for fault in journal_for(profile).pending():
        if pairs is not None and fault.pair not in pairs:
            continue
        if fault.pair not in profile.pairs:
            journal_for(profile).clear(fault.pair)
            continue
        done.append(recover(profile, hv, fault, connect))
    return done
