"""``labctl clone PRODUCTION``: create a pair's standby with its own identity.

The standby gets hostname, machine-id, SSH host keys (trusted for its address), address and
MAC of its own before its link touches the lab network, so nothing but production ever answers
on production's address. Production is never stopped or modified. A clone that fails halfway
is removed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tenacity import (
    RetryError,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from labctl.errors import GuestControlUnusable, GuestUnreachable, LabctlError, OperationFailed
from labctl.hypervisor import Hypervisor, MachineState, require, require_startable
from labctl.ops.lab import (
    Probe,
    Progress,
    Sleep,
    apply_identity,
    ensure_lab_key,
    forget_host_keys,
    ssh_banner,
    wait_for_ssh,
)
from labctl.profile import Profile, host_ip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloneResult:
    """What ``clone`` did: created (or recreated with force) the standby, or nothing."""

    pair: str
    production: str
    standby: str
    address: str
    linked: bool
    created: bool
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "pair": self.pair,
            "production": self.production,
            "standby": self.standby,
            "address": self.address,
            "linked": self.linked,
            "created": self.created,
            "message": self.message,
        }


def pair_of(profile: Profile, production: str) -> str:
    """The name of the pair whose primary is ``production``."""
    return profile.pair_of_primary(production)


def _answers(address: str, port: int, probe: Probe) -> bool:
    try:
        probe(str(host_ip(address)), port, 2.0)
    except OSError:
        return False
    return True


def clone(
    profile: Profile,
    hv: Hypervisor,
    production: str,
    *,
    linked: bool = False,
    force: bool = False,
    probe: Probe | None = None,
    sleep: Sleep = time.sleep,
) -> CloneResult:
    """Create the standby of ``production``'s pair and boot it with its own identity."""
    probe = probe or ssh_banner  # looked up late so tests can replace it
    pair_name = pair_of(profile, production)
    pair = profile.pairs[pair_name]
    standby, address = pair.standby, pair.standby_address
    require(hv, "clone")
    hv.check()
    require_startable(hv)  # the standby must boot: refuse before anything is made

    def result(created: bool, message: str) -> CloneResult:
        return CloneResult(pair_name, production, standby, address, linked, created, message)

    if hv.inspect(production).state is MachineState.ABSENT:
        raise OperationFailed(
            f"cannot clone {production}: no such machine in lab {profile.lab.name}",
            hint=f"create it first: labctl up {production}",
        )
    existing = hv.inspect(standby)
    if existing.state is not MachineState.ABSENT:
        healthy = existing.state is MachineState.RUNNING and _answers(
            address, profile.ssh.port, probe
        )
        if not force:
            if healthy:
                return result(
                    False, f"standby {standby} already exists and answers SSH; nothing to do"
                )
            raise OperationFailed(
                f"standby {standby} already exists but is {existing.state.value}"
                + (
                    "" if existing.state is not MachineState.RUNNING else " and does not answer SSH"
                ),
                hint=f"labctl clone {production} --force recreates it",
            )
        hv.destroy(standby)
        forget_host_keys(profile.lab.name, address)

    ensure_lab_key(profile.lab.name)  # the standby trusts it: fail before anything is made
    hv.clone(production, standby, linked=linked)
    try:
        hv.set_link(standby, False)
        if getattr(hv, "edits_stopped_disks", False):
            apply_identity(hv, profile, standby, address)
            hv.set_link(standby, True)
            hv.start(standby)
        else:
            hv.start(standby)
            _wait_side_channel(hv, standby, deadline=profile.timeouts.boot, sleep=sleep)
            live = profile.lab.virtualbox.identity_restart == "services"
            apply_identity(hv, profile, standby, address, live=live)
            if not live:
                # reboot so every service starts with the new identity; it is synced to disk,
                # so a guest that ignores the power button (no acpid, or logind not watching
                # it) is powered off after timeouts.stop
                _restart_stop(hv, standby, deadline=profile.timeouts.stop, sleep=sleep)
            hv.set_link(standby, True)  # then plug the cable in
            hv.start(standby)
        wait_for_ssh(
            standby,
            address,
            port=profile.ssh.port,
            deadline=profile.timeouts.boot,
            connect_timeout=profile.timeouts.connect,
            probe=probe,
            sleep=sleep,
            alive=lambda: hv.inspect(standby).state is MachineState.RUNNING,
        )
    except BaseException as failure:
        _remove_half_made(hv, profile, standby, address, failure)
        raise
    kind = "linked" if linked else "full"
    return result(True, f"standby {standby} created ({kind} clone of {production}) at {address}")


def _remove_half_made(
    hv: Hypervisor, profile: Profile, standby: str, address: str, failure: BaseException
) -> None:
    """Remove the standby a failed clone made; a removal that fails too is added to the
    clone's own error (which it must never hide)."""
    try:
        hv.destroy(standby)
    except LabctlError as cleanup:
        log.error("removing the half-made %s failed: %s", standby, cleanup.message)
        if isinstance(failure, LabctlError):
            failure.message += (
                f" (and removing the half-made {standby} failed: {cleanup.message})"
            )
    forget_host_keys(profile.lab.name, address)


class _NotYet(Exception):
    pass


def _retrying(deadline: float, sleep: Sleep) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(_NotYet),
        stop=stop_before_delay(deadline),
        wait=wait_exponential(multiplier=0.1, max=1.0),
        before_sleep=before_sleep_log(log, logging.DEBUG),
        sleep=sleep,
    )


def _wait_side_channel(hv: Hypervisor, name: str, *, deadline: float, sleep: Sleep) -> None:
    try:
        for attempt in _retrying(deadline, sleep):
            with attempt:
                try:
                    if hv.exec_in_guest(name, ["true"], timeout=10).exit_code != 0:
                        raise _NotYet(name)
                except GuestControlUnusable:
                    raise
                except OperationFailed as exc:
                    raise _NotYet(name) from exc
    except RetryError as exc:
        raise GuestUnreachable(
            f"{name}: its side channel did not answer within {deadline:g}s"
        ) from exc


def _restart_stop(hv: Hypervisor, name: str, *, deadline: float, sleep: Sleep) -> None:
    hv.stop(name)
    try:
        _wait_state(hv, name, MachineState.STOPPED, deadline=deadline, sleep=sleep)
    except OperationFailed:
        log.info("%s did not shut down within %gs; powering it off", name, deadline)
        hv.stop(name, hard=True)
        _wait_state(hv, name, MachineState.STOPPED, deadline=deadline, sleep=sleep)


def _wait_state(
    hv: Hypervisor, name: str, state: MachineState, *, deadline: float, sleep: Sleep
) -> None:
    try:
        for attempt in _retrying(deadline, sleep):
            with attempt:
                if hv.inspect(name).state is not state:
                    raise _NotYet(name)
    except RetryError as exc:
        raise OperationFailed(f"{name} did not become {state.value} within {deadline:g}s") from exc


def clone_missing(
    profile: Profile,
    hv: Hypervisor,
    pairs: Sequence[str] = (),
    *,
    linked: bool = False,
    progress: Progress | None = None,
    probe: Probe | None = None,
    sleep: Sleep = time.sleep,
) -> list[CloneResult]:
    """Create the standby of every named pair (all pairs when none) that does not exist yet,
    concurrently; the others are kept as they are. Results in the profile's pair order."""
    say = progress or (lambda _line: None)
    names = list(dict.fromkeys(pairs)) or list(profile.pairs)
    profile.check_pairs(names)
    hv.check()
    results: dict[str, CloneResult] = {}
    missing = []
    for name in names:
        pair = profile.pairs[name]
        if hv.inspect(pair.standby).state is MachineState.ABSENT:
            missing.append(name)
            continue
        results[name] = CloneResult(
            name, pair.primary, pair.standby, pair.standby_address, linked, False,
            f"standby {pair.standby} exists; kept",
        )

    def one(name: str) -> CloneResult:
        production = profile.pairs[name].primary
        say(f"{profile.pairs[name].standby}: cloning {production}")
        done = clone(profile, hv, production, linked=linked, probe=probe, sleep=sleep)
        say(done.message)
        return done

    with ThreadPoolExecutor(max_workers=max(1, len(missing)), thread_name_prefix="clone") as pool:
        futures = {name: pool.submit(one, name) for name in missing}
        errors = [f.exception() for f in futures.values()]
    for error in errors:
        if error is not None:
            raise error
    results.update({name: f.result() for name, f in futures.items()})
    return [results[name] for name in names]
