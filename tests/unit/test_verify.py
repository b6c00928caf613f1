"""labctl verify against in-memory machines: every verdict, exit codes, --wait, JSON shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from labctl.errors import GuestUnreachable
from labctl.ops import verify as verify_op
from labctl.ops.verify import HostKey, Verdict
from labctl.profile import Node, Profile
from labctl.profile_load import parse
from labctl.remote import Remote
from tests.unit.checks_fakes import (
    HOST_KEYS,
    PAIR_PROFILE,
    STRANGER_KEY,
    FakeClock,
    FakeMachine,
    FakeRemote,
)

PROFILE = PAIR_PROFILE

VIP = "10.249.90.100/24"


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    return parse(PROFILE, path=tmp_path / "lab.toml")


class Lab:
    """Two machines and what the network answers on the VIP."""

    def __init__(self) -> None:
        self.primary = FakeMachine("prod-back", "10.249.90.10/24")
        self.standby = FakeMachine("prod-back-standby", "10.249.90.20/24")
        self.answers: str | None = None  # machine whose SSH answers on the VIP
        self.connects: list[str] = []
        self.refuse: set[str] = set()

    @property
    def machines(self) -> dict[str, FakeMachine]:
        return {m.name: m for m in (self.primary, self.standby)}

    def master(self, m: FakeMachine) -> None:
        """m holds the VIP as keepalived's MASTER; the other is BACKUP without it."""
        for other in self.machines.values():
            other.vips, other.vrrp_state = [], "BACKUP"
        m.vips, m.vrrp_state = [VIP], "MASTER"
        self.answers = m.name

    def connect(self, node: Node) -> Remote:
        self.connects.append(node.name)
        if node.name in self.refuse:
            raise GuestUnreachable(f"{node.name} did not answer SSH within 3 s")
        return FakeRemote(self.machines[node.name])

    def host_key(self, ip: str, port: int, timeout: float) -> HostKey:
        assert ip == "10.249.90.100" and port == 22
        if self.answers is None:
            raise OSError(113, "No route to host")
        if self.answers not in HOST_KEYS:
            return HostKey(*STRANGER_KEY)
        return HostKey(*HOST_KEYS[self.answers])


@pytest.fixture
def lab() -> Lab:
    return Lab()


def run_verify(profile: Profile, lab: Lab, **kwargs: object) -> verify_op.VerifyReport:
    return verify_op.verify(
        profile,
        [],
        lab.connect,
        host_key_reader=lab.host_key,
        **kwargs,  # type: ignore[arg-type]
    )


def test_ok_when_primary_holds_is_master_and_answers(profile: Profile, lab: Lab) -> None:
    lab.master(lab.primary)
    report = run_verify(profile, lab)
    (pair,) = report.pairs
    assert pair.verdict is Verdict.OK
    assert pair.holder == "prod-back"
    assert pair.reasons == ()
    assert report.exit_code == 0
    assert pair.vips[0].answered_by == "prod-back"


def test_ok_after_failover_to_standby(profile: Profile, lab: Lab) -> None:
    lab.master(lab.standby)
    (pair,) = run_verify(profile, lab).pairs
    assert (pair.verdict, pair.holder) == (Verdict.OK, "prod-back-standby")


def test_no_holder_when_keepalived_stopped_on_both(profile: Profile, lab: Lab) -> None:
    for m in lab.machines.values():
        m.service, m.vrrp_state, m.vips = "inactive", None, []
    report = run_verify(profile, lab)
    (pair,) = report.pairs
    assert pair.verdict is Verdict.NO_HOLDER
    assert report.exit_code == 6
    assert pair.vips[0].answered_by is None
    assert "No route to host" in (pair.vips[0].data_path_error or "")


def test_split_brain_when_both_hold_as_master(profile: Profile, lab: Lab) -> None:
    lab.master(lab.primary)
    lab.standby.vips, lab.standby.vrrp_state = [VIP], "MASTER"
    report = run_verify(profile, lab)
    (pair,) = report.pairs
    assert pair.verdict is Verdict.SPLIT_BRAIN
    assert pair.vips[0].holders == ("prod-back", "prod-back-standby")
    assert report.exit_code == 6


def test_mismatch_when_vip_added_by_hand_to_the_backup(profile: Profile, lab: Lab) -> None:
    lab.master(lab.primary)
    lab.standby.vips = [VIP]  # `ip addr add` on the BACKUP: two holders, one MASTER
    (pair,) = run_verify(profile, lab).pairs
    assert pair.verdict is Verdict.MISMATCH
    assert pair.reasons == (
        f"{VIP} is on both nodes",
        "prod-back-standby holds it but keepalived there is BACKUP (service active)",
    )


def test_mismatch_when_the_only_holder_is_not_master(profile: Profile, lab: Lab) -> None:
    lab.primary.service, lab.primary.vrrp_state = "inactive", None
    lab.standby.vips, lab.standby.vrrp_state = [VIP], "BACKUP"
    lab.answers = "prod-back-standby"
    (pair,) = run_verify(profile, lab).pairs
    assert (pair.verdict, pair.holder) == (Verdict.MISMATCH, "prod-back-standby")
    assert any("keepalived there is BACKUP" in r for r in pair.reasons)


def test_killed_keepalived_leaving_its_vip_behind_is_a_mismatch(profile: Profile, lab: Lab) -> None:
    lab.master(lab.standby)
    lab.primary.vips, lab.primary.service, lab.primary.vrrp_state = [VIP], "failed", None
    (pair,) = run_verify(profile, lab).pairs
    assert pair.verdict is Verdict.MISMATCH
    assert "prod-back holds it but keepalived there is not reporting (service failed)" in (
        pair.reasons
    )


def test_mismatch_when_master_does_not_hold(profile: Profile, lab: Lab) -> None:
    lab.master(lab.primary)
    lab.standby.vrrp_state = "MASTER"
    (pair,) = run_verify(profile, lab).pairs
    assert pair.verdict is Verdict.MISMATCH
    assert pair.reasons == ("prod-back-standby reports MASTER but does not hold the VIP",)


def test_mismatch_when_the_vip_answers_as_the_other_machine(profile: Profile, lab: Lab) -> None:
    # a stale ARP entry: the network still delivers the VIP to the old holder
    lab.master(lab.standby)
    lab.answers = "prod-back"
    (pair,) = run_verify(profile, lab).pairs
    assert pair.verdict is Verdict.MISMATCH
    assert pair.vips[0].answered_by == "prod-back"
    assert "answered as prod-back, not prod-back-standby" in pair.reasons[0]


def test_mismatch_when_an_unknown_machine_answers(profile: Profile, lab: Lab) -> None:
    lab.master(lab.primary)
    lab.answers = "intruder"
    (pair,) = run_verify(profile, lab).pairs
    assert pair.verdict is Verdict.MISMATCH
    assert (pair.vips[0].answered_by or "").startswith("unknown SHA256:")


def test_mismatch_when_the_vip_does_not_answer(profile: Profile, lab: Lab) -> None:
    lab.master(lab.primary)
    lab.answers = None
    (pair,) = run_verify(profile, lab).pairs
    assert pair.verdict is Verdict.MISMATCH
    assert "did not answer" in pair.reasons[0]


def test_unknown_node_is_never_reported_absent(profile: Profile, lab: Lab) -> None:
    lab.master(lab.standby)
    lab.refuse.add("prod-back")
    report = run_verify(profile, lab)
    (pair,) = report.pairs
    assert pair.verdict is Verdict.UNKNOWN
    assert report.exit_code == 5
    primary = pair.nodes[0]
    assert not primary.reachable and "did not answer SSH" in (primary.error or "")
    # the standby is seen holding, and that is said
    assert pair.vips[0].holders == ("prod-back-standby",)
    assert any("seen on prod-back-standby" in r for r in pair.reasons)
    node_json = pair.to_json()["nodes"][0]
    assert node_json["reachable"] is False and node_json["holds"] == []


def test_unknown_when_a_connected_node_stops_answering(profile: Profile, lab: Lab) -> None:
    lab.master(lab.primary)
    lab.primary.reachable = False  # e.g. frozen: the probe times out
    (pair,) = run_verify(profile, lab).pairs
    assert pair.verdict is Verdict.UNKNOWN


def test_unknown_profile_pair_is_a_usage_error(profile: Profile, lab: Lab) -> None:
    from labctl.errors import UnknownName

    with pytest.raises(UnknownName, match=r"PAIR: 'nope' is not a pair"):
        verify_op.verify(profile, ["nope"], lab.connect, host_key_reader=lab.host_key)


def test_wait_retries_until_converged_without_real_sleep(profile: Profile, lab: Lab) -> None:
    clock = FakeClock()
    attempts = []

    def sleep(seconds: float) -> None:
        attempts.append(seconds)
        clock.sleep(seconds)
        if len(attempts) == 3:
            lab.master(lab.primary)  # keepalived finished starting

    lab.primary.service = lab.standby.service = "active"
    report = run_verify(profile, lab, wait=30.0, sleep=sleep, clock=clock)
    assert report.ok
    assert report.attempts == 4
    assert report.elapsed == pytest.approx(sum(attempts))


def test_wait_gives_up_at_the_deadline_with_the_last_verdict(profile: Profile, lab: Lab) -> None:
    clock = FakeClock()
    report = run_verify(profile, lab, wait=5.0, interval=0.5, sleep=clock.sleep, clock=clock)
    assert report.pairs[0].verdict is Verdict.NO_HOLDER
    assert report.attempts == 10
    assert report.elapsed <= 5.0


def test_wait_reconnects_a_node_that_was_unreachable(profile: Profile, lab: Lab) -> None:
    clock = FakeClock()
    lab.master(lab.primary)
    lab.refuse.add("prod-back")

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        lab.refuse.clear()  # it finished booting

    report = run_verify(profile, lab, wait=10.0, sleep=sleep, clock=clock)
    assert report.ok
    assert lab.connects.count("prod-back") == 2
    assert lab.connects.count("prod-back-standby") == 1  # one connection per host, reused


def test_json_shape_is_stable_and_secret_free(profile: Profile, lab: Lab) -> None:
    lab.master(lab.primary)
    lab.primary.json_dump = lambda: (  # type: ignore[method-assign]
        '[{"data":{"iname":"VI_back","state":2,"effective_priority":103,"auth_data":"s3cret!"}}]\n'
    )
    document = run_verify(profile, lab).to_json()
    text = json.dumps(document)
    assert "s3cret!" not in text
    assert set(document) == {"ok", "exit_code", "attempts", "elapsed", "pairs"}
    (pair,) = document["pairs"]
    assert set(pair) == {"pair", "verdict", "holder", "reasons", "vips", "nodes"}
    assert pair["vips"] == [
        {"vip": VIP, "holders": ["prod-back"], "answered_by": "prod-back", "data_path_error": None}
    ]
    assert pair["nodes"][0] == {
        "name": "prod-back",
        "role": "primary",
        "address": "10.249.90.10",
        "reachable": True,
        "error": None,
        "machine_state": None,
        "service": "active",
        "vrrp_state": "MASTER",
        "priority": 103,
        "holds": [VIP],
    }


def test_parse_vrrp_json_from_a_real_keepalived_2_2_7_dump() -> None:
    dump = (
        '[{"data":{"iname":"VI_back","dont_track_primary":0,"vrid":51,"base_priority":101,'
        '"effective_priority":103,"vipset":true,"state":2,"wantstate":2,"version":2,'
        '"vips":["10.249.97.100\\/24 dev host0 scope global set"],"auth_type":1,'
        '"auth_data":""},"stats":{"advert_rcvd":0,"advert_sent":1,"become_master":1}}]'
    )
    assert verify_op.parse_vrrp_json(dump, "VI_back") == ("MASTER", 103)
    assert verify_op.parse_vrrp_json(dump, "VI_front") == (None, None)
    assert verify_op.parse_vrrp_json('[{"data":{"iname":"VI_back"', "VI_back") == (None, None)


def test_probe_script_blanks_the_password_before_it_leaves_the_machine() -> None:
    assert 's/"auth_data":"[^"]*"/"auth_data":""/g' in verify_op.PROBE_SCRIPT


def test_host_key_fingerprint_is_what_ssh_keygen_prints() -> None:
    blob = "AAAAC3NzaC1lZDI1NTE5AAAAINYueTiW9YG6rkSRSPLyxrAbO9Ygev+W5rSgi8QJNf9s"
    # ssh-keygen -lf of that key: 256 SHA256:fGLmaWPquZTQTu6MigF3c2OeI2+k0rce8SNVzRcxX5U (ED25519)
    assert HostKey("ssh-ed25519", blob).fingerprint == (
        "SHA256:fGLmaWPquZTQTu6MigF3c2OeI2+k0rce8SNVzRcxX5U"
    )


@pytest.mark.parametrize("count", [1, 8])
def test_many_pairs_are_probed_concurrently_once_per_node(
    tmp_path: Path, count: int, write_profile: Callable[[str], Path]
) -> None:
    text = '[lab]\nname = "many"\nbackend = "nspawn"\n'
    for i in range(count):
        text += f'[machines.p{i}]\naddress = "10.249.90.{10 + i}/24"\n'
    for i in range(count):
        text += (
            f'[pairs.x{i}]\nprimary = "p{i}"\nstandby = "s{i}"\n'
            f'standby_address = "10.249.90.{50 + i}/24"\nvrid = {60 + i}\n'
            f'vip = ["10.249.90.{150 + i}/24"]\npriority = {{ primary = 101, standby = 100 }}\n'
            'auth_pass = "x"\n'
        )
    prof = parse(text, path=tmp_path / "many.toml")
    opened: list[str] = []

    def connect(node: Node) -> Remote:
        opened.append(node.name)
        m = FakeMachine(node.name, node.address)
        return FakeRemote(m)

    def no_answer(ip: str, port: int, timeout: float) -> HostKey:
        raise OSError("timed out")

    report = verify_op.verify(prof, [], connect, host_key_reader=no_answer)
    assert sorted(opened) == sorted({n for p in prof.pairs for n in (f"p{p[1:]}", f"s{p[1:]}")})
    assert [p.pair for p in report.pairs] == [f"x{i}" for i in range(count)]
    assert all(p.verdict is Verdict.NO_HOLDER for p in report.pairs)
