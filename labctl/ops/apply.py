"""``labctl apply [PAIR...]``: make the lab match the profile in one command.

up (production machines and existing standbys) -> clone the missing standbys -> provision
every pair -> verify, waiting until each pair is OK. Each step is idempotent, so a second run
touches nothing; the report says per pair what changed and what verify found.

JSON shape (``labctl apply --json``), stable; keys are only ever added::

    {"ok": true, "exit_code": 0, "changed": false, "elapsed": 3.1,
     "pairs": [{"pair": "back", "standby": "prod-back-standby",
                "standby_created": false,           # created by this run
                "keepalived": "unchanged",          # installed | changed | unchanged | failed
                "verdict": "OK", "holder": "prod-back"}],
     "up": {"created": [], "started": [], "resumed": [], "reconnected": []},
     "provision": {...},                             # labctl provision pair --json
     "verify": {...}}                                # labctl verify --json
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from labctl.errors import EXIT_OK
from labctl.hypervisor import Hypervisor, PartialBackend
from labctl.ops import clone as clone_ops
from labctl.ops import lab as lab_ops
from labctl.ops import provision as provision_ops
from labctl.ops import verify as verify_ops
from labctl.ops.machines import usable_hypervisor
from labctl.profile import Node, Profile
from labctl.remote import Remote

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PairSummary:
    pair: str
    standby: str
    standby_created: bool
    keepalived: str
    verdict: str
    holder: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "standby": self.standby,
            "standby_created": self.standby_created,
            "keepalived": self.keepalived,
            "verdict": self.verdict,
            "holder": self.holder,
        }


@dataclass(frozen=True)
class ApplyReport:
    up: lab_ops.UpResult
    clones: list[clone_ops.CloneResult]
    provision: provision_ops.ProvisionReport
    verify: verify_ops.VerifyReport
    elapsed: float

    @property
    def pairs(self) -> list[PairSummary]:
        created = {c.pair for c in self.clones if c.created}
        verdicts = {p.pair: p for p in self.verify.pairs}
        out = []
        for pair in self.provision.pairs:
            v = verdicts.get(pair.pair)
            out.append(
                PairSummary(
                    pair.pair,
                    pair.nodes[1].node if len(pair.nodes) > 1 else "",
                    pair.pair in created,
                    keepalived_change(pair),
                    str(v.verdict) if v else "-",
                    v.holder if v else None,
                )
            )
        return out

    @property
    def changed(self) -> bool:
        return (
            self.up.changed
            or any(c.created for c in self.clones)
            or any(p.keepalived != "unchanged" for p in self.pairs)
        )

    @property
    def exit_code(self) -> int:
        """verify's exit code; provision's when verify is OK but provisioning failed."""
        if self.verify.exit_code != EXIT_OK:
            return self.verify.exit_code
        return self.provision.exit_code

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "changed": self.changed,
            "elapsed": round(self.elapsed, 3),
            "pairs": [p.to_json() for p in self.pairs],
            "up": {
                "created": self.up.created,
                "started": self.up.started,
                "resumed": self.up.resumed,
                "reconnected": self.up.reconnected,
            },
            "provision": self.provision.to_json(),
            "verify": self.verify.to_json(),
        }


def keepalived_change(pair: provision_ops.PairReport) -> str:
    """installed | changed | unchanged | failed, for both nodes of a provisioned pair."""
    if not pair.ok:
        return "failed"
    if any(n.installed for n in pair.nodes):
        return "installed"
    if any(
        n.user_created or n.script_changed or n.config_changed or n.started or n.reloaded
        or n.enabled
        for n in pair.nodes
    ):
        return "changed"
    return "unchanged"


def apply(
    profile: Profile,
    hv: Hypervisor,
    pairs: Sequence[str],
    *,
    connect: Callable[[Node], Remote],
    host_key_reader: verify_ops.HostKeyReader = verify_ops.ssh_host_key,
    wait: float = 60.0,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ApplyReport:
    """Bring the named pairs (all when none) to the profile, then verify them (waiting)."""
    start = clock()
    say = progress or (lambda _line: None)
    names = list(dict.fromkeys(pairs)) or list(profile.pairs)
    profile.check_pairs(names)
    hv.check()
    primaries = list(dict.fromkeys(profile.pairs[n].primary for n in names))
    standbys = [profile.pairs[n].standby for n in names]
    if isinstance(hv, PartialBackend) and hv.unsupported("up") is not None:
        # machines labctl cannot start or create (ssh backend): provision and verify them
        up = lab_ops.UpResult([], [], [])
        clones = [
            clone_ops.CloneResult(n, profile.pairs[n].primary, profile.pairs[n].standby,
                                  profile.pairs[n].standby_address, False, False,
                                  "existing machine")
            for n in names
        ]
    else:
        existing = [s for s in standbys if hv.inspect(s).state.value != "absent"]
        say("apply: up")
        up = lab_ops.up(profile, hv, [*primaries, *existing], progress=say)
        say("apply: clone missing standbys")
        clones = clone_ops.clone_missing(profile, hv, names, progress=say)
    say("apply: provision")
    seen = usable_hypervisor(hv)
    provisioned = provision_ops.provision(profile, names, hypervisor=seen)
    say("apply: verify")
    verified = verify_ops.verify(
        profile, names, connect, wait=wait, host_key_reader=host_key_reader, hypervisor=seen
    )
    return ApplyReport(up, clones, provisioned, verified, clock() - start)
