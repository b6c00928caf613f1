"""Failover drills against a simulated pair on a fake clock: every fault, timelines, summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from labctl.errors import GuestUnreachable, OperationFailed
from labctl.ops import drill as drill_op
from labctl.ops.drill import Fault, Sample, analyse, theory
from labctl.profile import Profile
from labctl.profile_load import parse
from labctl.remote import Remote, Result
from tests.unit.checks_fakes import (
    PAIR_PROFILE_WITH_CHECK,
    FakeClock,
    FakeHypervisor,
    FakeMachine,
    FakePartitioner,
    FakeRemote,
    SyncExecutor,
)

PROFILE = PAIR_PROFILE_WITH_CHECK

VIP = "10.249.90.100/24"
CHECK = "/etc/keepalived/check_heartbeat.sh"
HARD = 3 * 1 + (256 - 100) / 256
SKEW = (256 - 100) / 256


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    return parse(PROFILE, path=tmp_path / "lab.toml")


class World:
    """A keepalived pair in simulated time: what each node shows after a fault and recovery.

    ``takeover``: seconds after the fault until the standby holds; ``release``: until the
    faulted primary lets go (None: it keeps the VIP, e.g. a crash); ``unreachable``: the
    primary answers nothing during the fault. After recovery the primary takes the VIP back
    after ``failback`` seconds and the standby lets go ``handover`` seconds later.
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        takeover: float | None,
        release: float | None = None,
        unreachable: bool = False,
        failback: float = 0.3,
        handover: float = 0.05,
        standby_keeps: bool = False,
        primary_returns: bool = True,
    ) -> None:
        self.clock = clock
        self.primary = FakeMachine("prod-back", "10.249.90.10/24", files={CHECK: b"original"})
        self.standby = FakeMachine("prod-back-standby", "10.249.90.20/24")
        self.primary.vips = [VIP]
        self.takeover, self.release, self.unreachable = takeover, release, unreachable
        self.failback, self.handover, self.standby_keeps = failback, handover, standby_keeps
        self.primary_returns = primary_returns  # False: nopreempt, the standby keeps the VIP
        self.fault_at: float | None = None
        self.recover_at: float | None = None
        for m in (self.primary, self.standby):
            m.on_command = self.on_command
        self.hypervisor = FakePartitioner(on_call=self.on_call)

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)
        self.update()

    def machine(self, name: str) -> FakeMachine:
        return self.primary if name == "prod-back" else self.standby

    def remotes(self) -> dict[str, Remote]:
        return {m.name: FakeRemote(m) for m in (self.primary, self.standby)}

    def on_command(self, cmd: tuple[str, ...]) -> None:
        if cmd in {
            ("systemctl", "stop", "keepalived"),
            ("sh", "-c", "kill -KILL $(pidof keepalived)"),
        }:
            self.fault_at = self.clock()
        elif cmd == ("systemctl", "start", "keepalived"):
            self.recover_at = self.clock()
        elif cmd == ("put", CHECK):
            failing = self.primary.files[CHECK] == drill_op.FAILING_CHECK
            if failing:
                self.fault_at = self.clock()
            else:
                self.recover_at = self.clock()
        self.update()

    def on_call(self, call: tuple[str, ...]) -> None:
        if call[0] in {"pause", "block_vrrp"} or call == ("set_link", "prod-back", "down"):
            self.fault_at = self.clock()
        else:
            self.recover_at = self.clock()
        self.update()

    def update(self) -> None:
        now = self.clock()
        primary, standby = [VIP], []
        reachable = True
        if self.fault_at is not None:
            since = now - self.fault_at
            if self.release is not None and since >= self.release:
                primary = []
            if self.takeover is not None and since >= self.takeover:
                standby = [VIP]
            reachable = not self.unreachable
        if self.recover_at is not None:
            since = now - self.recover_at
            reachable = True
            if not self.primary_returns:
                primary, standby = [], standby
            else:
                primary = [VIP] if since >= self.failback else primary
                if since >= self.failback + self.handover and not self.standby_keeps:
                    standby = []
            if self.release is not None and since < self.failback:
                primary = []
        self.primary.vips, self.standby.vips = primary, standby
        self.primary.reachable = reachable


def drill(
    profile: Profile, world: World, fault: Fault, *, hypervisor: object = "world"
) -> drill_op.Drill:
    hv = world.hypervisor if hypervisor == "world" else hypervisor
    return drill_op.Drill(
        profile,
        "back",
        fault,
        world.remotes(),
        hv,  # type: ignore[arg-type]
        clock=world.clock,
        sleep=world.sleep,
        executor=SyncExecutor(),
    )


def resolution(d: drill_op.Drill) -> float:
    return d.poll_interval + d.tick


# ---------------------------------------------------------------------------
# theory and timeline arithmetic


def test_theory_hard_graceful_and_health_bound(profile: Profile) -> None:
    pair = profile.pair("back")
    assert theory(pair, Fault.CRASH, taker_priority=100) == (3.609375, "hard")
    assert theory(pair, Fault.PARTITION, taker_priority=100) == (3.609375, "hard")
    assert theory(pair, Fault.STOP, taker_priority=100) == (0.609375, "graceful")
    assert theory(pair, Fault.STOP, taker_priority=200) == (0.21875, "graceful")
    assert theory(pair, Fault.HEALTH, taker_priority=100) == (2 * 1 + 3.609375, "bound")


def test_theory_v3_scales_the_skew_with_advert_int(tmp_path: Path) -> None:
    # keepalived's VRRP_TIMER_SKEW for v3 and RFC 5798: ((256 - priority) * advert_int) / 256
    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    text = PROFILE.replace("advert_int = 1", "advert_int = 0.1\nvrrp_version = 3")
    pair = parse(text, path=tmp_path / "lab.toml").pair("back")
    hard, kind = theory(pair, Fault.CRASH, taker_priority=100)
    assert kind == "hard" and hard == pytest.approx(0.3 + 156 * 0.1 / 256)
    assert theory(pair, Fault.STOP, taker_priority=100)[0] == pytest.approx(156 * 0.1 / 256)


def test_analyse_gap_overlap_and_unreachable_from_samples() -> None:
    a, b = "old", "new"
    samples = [
        Sample(-0.1, a, True),
        Sample(-0.1, b, False),
        Sample(0.5, a, False),
        Sample(0.5, b, False),  # no holder from 0.5
        Sample(1.0, b, True),  # new holder at 1.0: gap 0.5
        Sample(2.0, a, None, "no answer"),  # old unreachable 2.0..3.0
        Sample(3.0, a, True),  # both hold 3.0..4.0 (recovered 3.5)
        Sample(4.0, b, False),
    ]
    tl = analyse(samples, a, b, recovered_at=3.5, end=5.0)
    assert tl.released == 0.5
    assert tl.takeover == 1.0
    assert tl.gap == pytest.approx(0.5)
    assert tl.overlap == pytest.approx(0.5)  # 3.0 .. 3.5 during the fault
    assert tl.failback_overlap == pytest.approx(0.5)  # 3.5 .. 4.0 after recovery
    assert tl.unreachable == {a: pytest.approx(1.0), b: 0.0}
    assert tl.resolution == pytest.approx(0.5)  # peer samples at 0.5 and 1.0


def test_unreachable_holder_is_never_counted_as_released() -> None:
    samples = [
        Sample(-0.1, "old", True),
        Sample(-0.1, "new", False),
        Sample(0.2, "old", None, "no answer"),
        Sample(1.0, "new", True),
    ]
    tl = analyse(samples, "old", "new", recovered_at=2.0, end=2.0)
    assert tl.released is None
    assert tl.gap == 0.0  # unknown, not "no holder"
    assert tl.unreachable["old"] == pytest.approx(1.8)


# ---------------------------------------------------------------------------
# every fault against the simulated pair


def test_crash_kills_keepalived_and_standby_takes_over_after_master_down(
    profile: Profile,
) -> None:
    world = World(FakeClock(), takeover=HARD)  # the crashed node keeps its VIP
    d = drill(profile, world, Fault.CRASH)
    report = d.run(1)
    assert report.ok, report.all_problems()
    (trial,) = report.trials
    assert (trial.faulted, trial.peer) == ("prod-back", "prod-back-standby")
    # injected right after the holder's own advert, then recovered
    perl = next(i for i, c in enumerate(world.primary.commands) if c[0] == "perl")
    kill = world.primary.commands.index(("sh", "-c", "kill -KILL $(pidof keepalived)"))
    assert perl < kill and world.primary.commands[perl][3:] == ("10.249.90.10", "2")
    assert trial.synced
    assert ("systemctl", "start", "keepalived") in world.primary.commands
    tl = trial.timeline
    assert HARD <= (tl.takeover or 0) <= HARD + resolution(d)
    assert tl.released is None  # SIGKILL leaves the address in place
    assert tl.overlap > 0 and tl.gap == 0
    assert trial.error is not None and 0 <= trial.error <= resolution(d)
    assert trial.settled_on == "prod-back" and trial.failback is not None
    assert report.final_holders == ("prod-back",) and report.exit_code == 0


class SlowRemote(FakeRemote):
    """Every command takes ``rtt`` seconds of the world's clock."""

    def __init__(self, remote: FakeRemote, world: World, rtt: float) -> None:
        super().__init__(remote.machine)
        self.world, self.rtt = world, rtt

    def run(self, argv: Sequence[str], **kwargs: Any) -> Result:
        self.world.clock.sleep(self.rtt)
        return super().run(argv, **kwargs)


def test_synced_hard_fault_counts_from_the_advert_half_a_round_trip_before_its_answer(
    profile: Profile,
) -> None:
    world = World(FakeClock(), takeover=HARD)
    d = drill(profile, world, Fault.CRASH)
    for name, remote in list(d.remotes.items()):
        assert isinstance(remote, FakeRemote)
        d.remotes[name] = SlowRemote(remote, world, 0.02)
    report = d.run(1)
    assert report.ok, report.all_problems()
    (trial,) = report.trials
    assert trial.synced and trial.injected == pytest.approx(0.01)
    assert trial.to_json()["injected"] == 0.01


def test_hard_fault_still_runs_when_the_advert_cannot_be_seen(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD, unreachable=True)
    world.primary.commands_failing = {"perl"}
    report = drill(profile, world, Fault.FREEZE).run(1)
    assert report.ok, report.all_problems()
    assert report.trials[0].synced is False


def test_graceful_stop_releases_at_once_and_takeover_takes_the_skew(profile: Profile) -> None:
    world = World(FakeClock(), takeover=SKEW, release=0.0)
    d = drill(profile, world, Fault.STOP)
    report = d.run(1)
    (trial,) = report.trials
    assert report.ok, report.all_problems()
    assert report.theory_kind == "graceful"
    assert not trial.synced and not any(c[0] == "perl" for c in world.primary.commands)
    tl = trial.timeline
    assert (tl.released or 1) <= resolution(d)
    assert SKEW <= (tl.takeover or 0) <= SKEW + resolution(d)
    assert tl.gap == pytest.approx((tl.takeover or 0) - (tl.released or 0), abs=resolution(d))


def test_freeze_uses_the_hypervisor_and_reports_the_node_unreachable(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD, unreachable=True)
    d = drill(profile, world, Fault.FREEZE)
    report = d.run(1)
    assert report.ok, report.all_problems()
    assert world.hypervisor.calls == [("pause", "prod-back"), ("resume", "prod-back")]
    (trial,) = report.trials
    during = [
        s for s in trial.samples if s.node == "prod-back" and 0 < s.t < (trial.recovered_at or 0)
    ]
    assert during and all(s.holds is None for s in during)  # never "not holding"
    assert trial.timeline.released is None
    assert trial.timeline.unreachable["prod-back"] > HARD


def test_link_down_and_up_through_the_hypervisor(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD, unreachable=True)
    report = drill(profile, world, Fault.LINK).run(1)
    assert report.ok, report.all_problems()
    assert world.hypervisor.calls == [
        ("set_link", "prod-back", "down"),
        ("set_link", "prod-back", "up"),
    ]


def test_partition_uses_the_backends_partitioner(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD)
    report = drill(profile, world, Fault.PARTITION).run(1)
    assert report.ok, report.all_problems()
    assert world.hypervisor.calls == [
        ("block_vrrp", "prod-back", "prod-back-standby"),
        ("unblock_vrrp", "prod-back", "prod-back-standby"),
    ]
    assert report.trials[0].timeline.overlap > 0  # both hold during a partition


def test_partition_falls_back_to_nft_inside_the_guests(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD)
    plain = FakeHypervisor()  # no VrrpPartitioner
    for m in (world.primary, world.standby):
        m.has_nft = True
    d = drill(profile, world, Fault.PARTITION, hypervisor=plain)

    def block(cmd: tuple[str, ...]) -> None:
        if "nft -f -" in " ".join(cmd):
            world.fault_at = world.fault_at or world.clock()
        if cmd[:3] == ("nft", "delete", "table"):
            world.recover_at = world.clock()
        world.update()

    world.primary.on_command = world.standby.on_command = block
    report = d.run(1)
    assert report.ok, report.all_problems()
    for m in (world.primary, world.standby):
        nft = [c for c in m.commands if "nft" in " ".join(c) and "command -v" not in " ".join(c)]
        assert "10.249.90." in nft[0][2] and "ip protocol vrrp drop" in nft[0][2]
        assert nft[-1] == ("nft", "delete", "table", "inet", drill_op.NFT_TABLE)


def test_partition_without_any_way_to_cut_vrrp_refuses_before_breaking_anything(
    profile: Profile,
) -> None:
    world = World(FakeClock(), takeover=HARD)
    with pytest.raises(OperationFailed, match="no nft"):
        drill(profile, world, Fault.PARTITION, hypervisor=FakeHypervisor()).run(1)
    assert not any("kill" in " ".join(c) for c in world.primary.commands)


def test_health_swaps_in_a_failing_check_and_puts_the_original_back(profile: Profile) -> None:
    world = World(FakeClock(), takeover=2.5, release=2.6)
    report = drill(profile, world, Fault.HEALTH).run(1)
    assert report.ok, report.all_problems()
    assert world.primary.files[CHECK] == b"original"
    assert [c for c in world.primary.commands if c[0] == "put"] == [("put", CHECK)] * 2
    assert report.theory_kind == "bound"


def test_freeze_without_a_hypervisor_is_refused(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD)
    with pytest.raises(OperationFailed, match="needs the lab's hypervisor"):
        drill(profile, world, Fault.FREEZE, hypervisor=None).run(1)


def test_no_takeover_is_a_failed_trial_and_the_fault_is_still_recovered(
    profile: Profile,
) -> None:
    world = World(FakeClock(), takeover=None)
    report = drill(profile, world, Fault.CRASH).run(3)
    assert not report.ok and report.exit_code == 6
    assert len(report.trials) == 1  # stops after a failed trial
    assert any("did not take the VIP" in p for p in report.all_problems())
    assert ("systemctl", "start", "keepalived") in world.primary.commands


def test_a_pair_that_ends_on_two_nodes_is_reported_loudly(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD, standby_keeps=True)
    d = drill(profile, world, Fault.CRASH)
    d.failback_deadline = d.settle_deadline = 5.0
    report = d.run(1)
    assert not report.ended_ok and report.exit_code == 6
    assert report.final_holders == ("prod-back", "prod-back-standby")
    assert any("did NOT end with the VIP on exactly one node" in p for p in report.all_problems())


def nopreempt(tmp_path: Path) -> Profile:
    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    text = PROFILE.replace("advert_int = 1", "advert_int = 1\npreempt = false")
    return parse(text, path=tmp_path / "lab.toml")


def test_nopreempt_pair_settles_on_the_node_that_took_over(tmp_path: Path) -> None:
    world = World(FakeClock(), takeover=SKEW, release=0.01, primary_returns=False)
    report = drill(nopreempt(tmp_path), world, Fault.STOP).run(1)
    assert report.ok, report.all_problems()
    (trial,) = report.trials
    assert trial.settled_on == "prod-back-standby"
    assert report.final_holders == ("prod-back-standby",)


def test_nopreempt_pair_that_fails_back_after_a_restart_is_a_problem(tmp_path: Path) -> None:
    world = World(FakeClock(), takeover=SKEW, release=0.01)  # the primary takes it back
    d = drill(nopreempt(tmp_path), world, Fault.STOP)
    d.failback_deadline = 5.0
    report = d.run(1)
    assert not report.ok
    assert any("did not settle within 5 s" in p for p in report.all_problems())


def test_settle_target_follows_nopreempt_only_for_faults_that_restart_keepalived(
    profile: Profile, tmp_path: Path
) -> None:
    pair, off = profile.pair("back"), nopreempt(tmp_path).pair("back")
    for fault in Fault:
        assert drill_op.settle_target(pair, fault, "a", "b", primary="a") == "a"
        want = "b" if fault in (Fault.STOP, Fault.CRASH, Fault.HEALTH) else "a"
        assert drill_op.settle_target(off, fault, "a", "b", primary="a") == want


def test_several_trials_give_min_median_max(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD)

    def reset_world(cmd: tuple[str, ...]) -> None:
        if cmd == ("sh", "-c", "kill -KILL $(pidof keepalived)"):
            world.recover_at = None
        World.on_command(world, cmd)

    world.primary.on_command = reset_world
    report = drill(profile, world, Fault.CRASH).run(3)
    assert report.ok, report.all_problems()
    assert [t.index for t in report.trials] == [1, 2, 3]
    assert all(t.faulted == "prod-back" for t in report.trials)
    stat = report.summary()["takeover"]
    assert stat is not None and stat.n == 3
    assert stat.min <= stat.median <= stat.max


def test_json_shape(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD)
    document = drill(profile, world, Fault.CRASH).run(1).to_json()
    assert set(document) == {
        "pair",
        "fault",
        "ok",
        "exit_code",
        "theory",
        "theory_kind",
        "poll_interval",
        "ended_ok",
        "final_holders",
        "problems",
        "summary",
        "trials",
    }
    assert set(document["summary"]) == {"takeover", "gap", "overlap", "failback", "error"}
    (trial,) = document["trials"]
    assert set(trial) == {
        "trial",
        "faulted",
        "peer",
        "released",
        "takeover",
        "gap",
        "overlap",
        "unreachable",
        "recovered_at",
        "failback",
        "failback_gap",
        "failback_overlap",
        "settled_on",
        "error",
        "resolution",
        "synced",
        "injected",
        "problems",
        "events",
    }
    # events are the changes only: first sample of each node, then each change
    changes = [(e["node"], e["holds"]) for e in trial["events"]]
    assert changes[:2] == [("prod-back", True), ("prod-back-standby", False)]
    assert ("prod-back-standby", True) in changes
    assert "s3cret" not in json.dumps(document)


class Deferred(SyncExecutor):
    """Probes finish only when the test says so, like a slow SSH round trip: each submitted
    probe is appended to ``pending`` as (its future, the time it started)."""

    def __init__(
        self, clock: FakeClock, pending: list[tuple[Future[drill_op.ProbeOutcome], float]]
    ) -> None:
        self.clock, self.pending = clock, pending

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        future: Future[drill_op.ProbeOutcome] = Future()
        self.pending.append((future, self.clock()))
        return future


def test_poller_overlaps_probes_and_stamps_one_that_spanned_a_freeze_at_its_end() -> None:
    clock = FakeClock()
    pending: list[tuple[Future[drill_op.ProbeOutcome], float]] = []
    executor = Deferred(clock, pending)

    poller = drill_op.Poller({"a": lambda: True}, clock, executor, interval=0.02)
    for _ in range(5):
        poller.tick()
        clock.sleep(0.02)
    assert len(pending) == drill_op.MAX_INFLIGHT  # overlapping, but bounded
    first, started = pending.pop(0)
    first.set_result((started, started + 0.04, True, None))  # a normal 40 ms round trip
    clock.sleep(1.0)
    poller.tick()  # the silence is sampled: unreachable
    late, started = pending.pop(0)
    late.set_result((started, clock(), True, None))  # answered only after a second
    poller.tick()
    samples = [(round(s.t - 1000, 3), s.holds) for s in poller.samples]
    assert samples[0] == (0.02, True)  # middle of a normal round trip
    assert samples[1][1] is None and samples[1][0] > 0.5
    assert samples[2] == (round(clock() - 1000, 3), True)  # what it saw is after the freeze


class LostConnection(FakeRemote):
    """A connection whose transport died: every command fails at once."""

    def run(self, argv: object, **kwargs: object) -> Result:
        raise GuestUnreachable(f"{self.name}: the SSH connection is closed")


def test_a_lost_connection_is_reopened_and_the_drill_goes_on(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD)
    remotes = world.remotes()
    broken = LostConnection(world.standby)
    remotes["prod-back-standby"] = broken
    opened: list[str] = []

    def reconnect(name: str) -> FakeRemote:
        opened.append(name)
        return FakeRemote(world.standby)

    d = drill_op.Drill(
        profile,
        "back",
        Fault.CRASH,
        remotes,
        world.hypervisor,
        clock=world.clock,
        sleep=world.sleep,
        executor=SyncExecutor(),
        reconnect=reconnect,
    )
    report = d.run(1)
    assert report.ok, report.all_problems()
    assert opened == ["prod-back-standby"]
    assert remotes["prod-back-standby"] is not broken and broken.closed


class DiesBeforeRecovery(FakeRemote):
    """The connection breaks just when the fault is to be undone."""

    def run(self, argv: object, **kwargs: object) -> Result:
        if tuple(argv) == ("systemctl", "start", "keepalived"):  # type: ignore[arg-type]
            raise GuestUnreachable(f"{self.name}: the SSH connection is closed")
        return super().run(argv, **kwargs)  # type: ignore[arg-type]


def test_recovery_reconnects_rather_than_leave_the_fault_in_place(profile: Profile) -> None:
    world = World(FakeClock(), takeover=HARD)
    remotes = world.remotes()
    remotes["prod-back"] = DiesBeforeRecovery(world.primary)
    d = drill_op.Drill(
        profile,
        "back",
        Fault.CRASH,
        remotes,
        world.hypervisor,
        clock=world.clock,
        sleep=world.sleep,
        executor=SyncExecutor(),
        reconnect=lambda name: FakeRemote(world.machine(name)),
    )
    report = d.run(1)
    assert report.ok, report.all_problems()
    assert ("systemctl", "start", "keepalived") in world.primary.commands


def test_poller_gives_a_slow_guest_three_of_its_round_trips_before_calling_it_silent() -> None:
    """An interpreted VirtualBox guest answers a probe in ~0.6 s: slow, not silent. Only a
    silence of three of its own round trips is sampled as unreachable."""
    clock = FakeClock()
    pending: list[tuple[Future[drill_op.ProbeOutcome], float]] = []
    executor = Deferred(clock, pending)

    poller = drill_op.Poller({"a": lambda: True}, clock, executor, interval=0.02, max_inflight=1)
    assert poller.stale_time("a") == drill_op.STALE_AFTER  # nothing known yet
    for _ in range(20):  # twenty answers, 0.6 s each
        poller.tick()
        future, started = pending.pop()
        clock.sleep(0.6)
        future.set_result((started, clock(), True, None))
    poller.tick()
    assert poller.stale_time("a") == pytest.approx(1.8)
    assert all(s.holds is True for s in poller.samples)  # never sampled as silent
    # the first answer, before its pace was known, is stamped at its end; later ones mid-way
    assert [round(s.t, 3) for s in poller.samples[:2]] == [1000.6, 1000.9]
    clock.sleep(1.7)  # a probe outstanding, no answer for 1.7 s: still only slow
    poller.tick()
    assert poller.latest("a").holds is True  # type: ignore[union-attr]
    clock.sleep(0.2)
    poller.tick()
    latest = poller.latest("a")
    assert latest is not None and latest.holds is None and "no answer" in str(latest.error)


def test_poller_keeps_one_probe_in_flight_to_a_slow_guest() -> None:
    """Two overlapping probes of a guest answering in 0.6 s come back together: no finer
    samples, only twice the load. Once its pace is known, it gets one probe at a time."""
    clock = FakeClock()
    pending: list[tuple[Future[drill_op.ProbeOutcome], float]] = []
    executor = Deferred(clock, pending)

    poller = drill_op.Poller({"a": lambda: True}, clock, executor, interval=0.02)
    poller.tick()
    clock.sleep(0.02)
    poller.tick()
    assert len(pending) == drill_op.MAX_INFLIGHT  # its pace is not known yet
    clock.sleep(0.6)
    for future, started in pending:
        future.set_result((started, clock(), True, None))
    pending.clear()
    for _ in range(10):
        poller.tick()
        clock.sleep(0.02)
    assert poller.inflight_limit("a") == 1 and len(pending) == 1
    fast = drill_op.Poller({"b": lambda: True}, clock, executor, interval=0.02)
    fast.round_trips["b"] = [0.04]  # a guest on this host
    assert fast.inflight_limit("b") == drill_op.MAX_INFLIGHT


class SlowGuests(SyncExecutor):
    """Interpreted VMs: every probe takes ``rtt`` of the world's clock, and a probe of a frozen
    (unreachable) guest waits in it until it is resumed. Other tasks run at once. ``sleep``
    is the drill's sleep: it moves the world on and delivers the probes that are due."""

    def __init__(self, world: World, rtt: float) -> None:
        self.world, self.rtt = world, rtt
        self.pending: list[tuple[Future[drill_op.ProbeOutcome], float, Any]] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        if getattr(fn, "__name__", "") != "_run":  # the fault and the advert watch
            return super().submit(fn, *args, **kwargs)
        future: Future[drill_op.ProbeOutcome] = Future()
        self.pending.append((future, self.world.clock(), args[0]))
        return future

    def sleep(self, seconds: float) -> None:
        self.world.sleep(seconds)
        now = self.world.clock()
        for item in [p for p in self.pending if now - p[1] >= self.rtt]:
            future, started, probe = item
            try:
                holds = probe()
            except GuestUnreachable:
                continue  # frozen: the request is answered once the guest runs again
            self.pending.remove(item)
            future.set_result((started, now, holds, None))


def test_a_slow_frozen_guest_stays_frozen_until_its_silence_is_sampled(profile: Profile) -> None:
    """A guest answering a probe in 6 s is called silent only after three of its round trips,
    later than the standby takes over. The fault stays in place until that silence is sampled:
    the report shows the frozen primary unreachable during the fault (real VMs: it showed no
    sample of it at all, and 0 s unreachable)."""
    world = World(FakeClock(), takeover=HARD, unreachable=True)
    slow = SlowGuests(world, rtt=6.0)
    d = drill_op.Drill(
        profile, "back", Fault.FREEZE, world.remotes(), world.hypervisor,
        clock=world.clock, sleep=slow.sleep, executor=slow,
    )  # fmt: skip
    report = d.run(1)
    assert report.ok, report.all_problems()
    (trial,) = report.trials
    recovered_at = trial.recovered_at or 0
    during = [s for s in trial.samples
              if s.node == "prod-back" and trial.injected < s.t < recovered_at]  # fmt: skip
    assert during and all(s.holds is None for s in during)
    assert trial.timeline.unreachable["prod-back"] > 0
    assert trial.settled_on == "prod-back"
