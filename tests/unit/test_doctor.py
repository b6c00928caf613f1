"""labctl doctor against in-memory machines: each check's OK/WARN/FAIL and its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl import keepalived as ka
from labctl.errors import GuestUnreachable
from labctl.hypervisor import Hypervisor, MachineState, Nic
from labctl.ops import doctor as doctor_op
from labctl.ops.doctor import DoctorReport, Status
from labctl.profile import Node, Profile
from labctl.profile_load import parse
from labctl.remote import Remote
from tests.unit.checks_fakes import (
    PAIR_PROFILE_WITH_CHECK,
    FakeHypervisor,
    FakeMachine,
    FakeRemote,
    FakeVirtualBox,
)

PROFILE = PAIR_PROFILE_WITH_CHECK

VIP = "10.249.90.100/24"
SCRIPT = "/etc/keepalived/check_heartbeat.sh"
SAFE = {"/etc": ("root", "755"), "/etc/keepalived": ("root", "755"), SCRIPT: ("root", "755")}


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    return parse(PROFILE, path=tmp_path / "lab.toml")


class Lab:
    """A provisioned, healthy pair: the primary holds the VIP."""

    def __init__(self, profile: Profile) -> None:
        confs = {
            role: ka.render_node(profile, "back", role, mask_secrets=False).conf.encode()
            for role in ("primary", "standby")
        }
        self.primary = FakeMachine(
            "prod-back",
            "10.249.90.10/24",
            vips=[VIP],
            mac="02:00:00:00:00:0a",
            files={ka.CONF_PATH: confs["primary"]},
            stats=dict(SAFE),
            adverts=[("10.249.90.10", 51, 103)],
        )
        self.standby = FakeMachine(
            "prod-back-standby",
            "10.249.90.20/24",
            mac="02:00:00:00:00:14",
            files={ka.CONF_PATH: confs["standby"]},
            stats=dict(SAFE),
        )
        self.standby.neigh["10.249.90.100"] = self.primary.mac
        self.hypervisor: FakeHypervisor = FakeHypervisor()
        self.down: set[str] = set()

    def connect(self, node: Node) -> Remote:
        if node.name in self.down:
            raise GuestUnreachable(f"{node.name} did not answer SSH within 10 s")
        machine = {m.name: m for m in (self.primary, self.standby)}[node.name]
        return FakeRemote(machine)

    def doctor(self, profile: Profile) -> DoctorReport:
        def backend() -> Hypervisor:
            return self.hypervisor

        return doctor_op.doctor(profile, self.connect, backend, listen_seconds=3)

    def stop_pair(self) -> None:
        for m in (self.primary, self.standby):
            m.service, m.vips, m.adverts = "inactive", [], []
        self.standby.neigh.clear()


@pytest.fixture
def lab(profile: Profile) -> Lab:
    return Lab(profile)


def find(report: DoctorReport, subject: str, check: str) -> list[doctor_op.Check]:
    found = [c for c in report.checks if c.subject == subject and c.check == check]
    assert found, f"no {check!r} check for {subject}: {report.checks}"
    return found


def statuses(report: DoctorReport) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for c in report.checks:
        out.setdefault((c.subject, c.check), set()).add(str(c.status))
    return out


def test_healthy_pair_passes_with_a_warning_about_keepalived_2_2_7(
    profile: Profile, lab: Lab
) -> None:
    report = lab.doctor(profile)
    assert report.ok and report.exit_code == 0
    warns = [c for c in report.checks if c.status is Status.WARN]
    assert {(c.subject, c.check) for c in warns} == {
        ("prod-back", "keepalived"),
        ("prod-back-standby", "keepalived"),
    }
    assert "config test" in warns[0].detail
    got = statuses(report)
    for key in [
        ("lab", "backend"),
        ("lab", "profile"),
        ("prod-back", "ssh"),
        ("prod-back", "script user"),
        ("prod-back", "interface"),
        ("pairs.back", "script permissions"),
        ("pairs.back", "vip subnet"),
        ("pairs.back", "vip answered"),
        ("pairs.back", "vrid"),
        ("pairs.back", "configs agree"),
        ("pairs.back", "matches profile"),
    ]:
        assert got[key] == {"OK"}, key


PRIMARY_IP, STANDBY_IP = "10.249.90.10", "10.249.90.20"


def test_a_backup_that_hears_the_masters_adverts_is_ok(profile: Profile, lab: Lab) -> None:
    lab.primary.tap = [(PRIMARY_IP, "224.0.0.18", 3)]  # it sends; a BACKUP sends nothing
    lab.standby.tap = [(PRIMARY_IP, "224.0.0.18", 3)]
    report = lab.doctor(profile)
    (check,) = find(report, "pairs.back", "adverts")
    assert check.status is Status.OK and report.ok
    assert check.detail == "prod-back-standby hears prod-back's adverts (3 in 3 s)"


def test_adverts_sent_but_never_heard_say_so_and_suggest_unicast(
    profile: Profile, lab: Lab
) -> None:
    # multicast dropped between the nodes: both became MASTER, each hears only itself
    lab.primary.tap = [(PRIMARY_IP, "224.0.0.18", 3)]
    lab.standby.tap = [(STANDBY_IP, "224.0.0.18", 3)]
    report = lab.doctor(profile)
    checks = find(report, "pairs.back", "adverts")
    assert [c.status for c in checks] == [Status.FAIL, Status.FAIL]
    assert not report.ok and report.exit_code == 6
    assert checks[0].detail.startswith(
        "prod-back heard no VRRP adverts from prod-back-standby in 3 s although "
        "prod-back-standby sent 3 (multicast to 224.0.0.18)"
    )
    assert checks[0].fix is not None and "pairs.back.unicast = true" in checks[0].fix


def test_a_unicast_pair_that_hears_nothing_is_not_told_to_use_unicast(tmp_path: Path) -> None:
    from labctl.ops import doctor_adverts

    (tmp_path / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    prof = parse(
        PROFILE.replace("advert_int = 1", "advert_int = 1\nunicast = true"),
        path=tmp_path / "l.toml",
    )
    nodes = prof.nodes("back")
    taps = {"prod-back": {(PRIMARY_IP, STANDBY_IP): 2}, "prod-back-standby": {}}
    (finding,) = doctor_adverts.judge("back", prof.pair("back"), nodes, taps, 3)
    assert not finding.ok and "(unicast)" in finding.detail
    assert finding.fix is not None and "unicast = true" not in finding.fix
    assert doctor_adverts.parse_tap("1.2.3.4 5.6.7.8 2\n1.2.3.4 5.6.7.8 1\n") is None
    assert doctor_adverts.parse_tap("1.2.3.4 5.6.7.8 2\ndone\n") == {("1.2.3.4", "5.6.7.8"): 2}


def test_missing_script_user_on_a_configured_node_fails(profile: Profile, lab: Lab) -> None:
    lab.standby.script_user = False
    report = lab.doctor(profile)
    (check,) = find(report, "prod-back-standby", "script user")
    assert check.status is Status.FAIL
    assert "silently drops the check" in check.detail
    assert check.fix == "labctl provision pair back"
    assert report.exit_code == 6


def test_missing_script_user_before_provisioning_is_only_a_warning(
    profile: Profile, lab: Lab
) -> None:
    lab.standby.script_user = False
    del lab.standby.files[ka.CONF_PATH]
    (check,) = find(lab.doctor(profile), "prod-back-standby", "script user")
    assert check.status is Status.WARN


def test_vrid_used_by_another_router_on_the_segment_fails(profile: Profile, lab: Lab) -> None:
    lab.primary.adverts.append(("10.249.90.77", 51, 150))
    lab.primary.adverts.append(("10.249.90.78", 52, 100))  # another VRID: no problem
    report = lab.doctor(profile)
    (check,) = find(report, "pairs.back", "vrid")
    assert check.status is Status.FAIL
    assert "VRID 51 is already used on the segment by 10.249.90.77" in check.detail
    assert "10.249.90.78" not in check.detail
    assert report.exit_code == 6


def test_vip_already_answered_before_the_pair_is_up_fails(profile: Profile, lab: Lab) -> None:
    lab.stop_pair()
    for m in (lab.primary, lab.standby):  # whichever node probes, a stranger answers ARP
        m.neigh["10.249.90.100"] = "0a:0b:0c:0d:0e:0f"
    (check,) = find(lab.doctor(profile), "pairs.back", "vip answered")
    assert check.status is Status.FAIL
    assert "already answered by 0a:0b:0c:0d:0e:0f" in check.detail


def test_free_vip_before_the_pair_is_up_is_ok(profile: Profile, lab: Lab) -> None:
    lab.stop_pair()
    (check,) = find(lab.doctor(profile), "pairs.back", "vip answered")
    assert check.status is Status.OK and "nothing answers" in check.detail


def test_vip_answered_by_someone_other_than_its_holder_fails(profile: Profile, lab: Lab) -> None:
    lab.standby.neigh["10.249.90.100"] = "0a:0b:0c:0d:0e:0f"
    (check,) = find(lab.doctor(profile), "pairs.back", "vip answered")
    assert check.status is Status.FAIL and "another machine claims it" in check.detail


def test_mismatched_auth_pass_between_nodes_fails_without_showing_it(
    profile: Profile, lab: Lab
) -> None:
    conf = lab.standby.files[ka.CONF_PATH].decode().replace("s3cret!", "other12")
    lab.standby.files[ka.CONF_PATH] = conf.encode()
    report = lab.doctor(profile)
    (check,) = find(report, "pairs.back", "configs agree")
    assert check.status is Status.FAIL
    assert "differ in auth_pass" in check.detail
    drift = find(report, "pairs.back", "matches profile")
    assert [c.detail for c in drift] == [
        "prod-back-standby's installed config differs from the profile in auth_pass"
    ]
    text = json.dumps(report.to_json())
    assert "s3cret!" not in text and "other12" not in text


def test_unsafe_script_directory_fails(profile: Profile, lab: Lab) -> None:
    lab.primary.stats["/etc/keepalived"] = ("root", "777")
    checks = find(lab.doctor(profile), "pairs.back", "script permissions")
    bad = [c for c in checks if c.status is Status.FAIL]
    assert len(bad) == 1 and "/etc/keepalived (root 777)" in bad[0].detail


def test_non_executable_script_fails(profile: Profile, lab: Lab) -> None:
    lab.standby.stats[SCRIPT] = ("root", "644")
    checks = find(lab.doctor(profile), "pairs.back", "script permissions")
    assert [c.status for c in checks].count(Status.FAIL) == 1


def test_missing_interface_fails_with_the_interfaces_it_has(profile: Profile, lab: Lab) -> None:
    lab.primary.interface = "eth0"
    (check,) = find(lab.doctor(profile), "prod-back", "interface")
    assert check.status is Status.FAIL
    assert "host0 does not exist (has: eth0, lo)" in check.detail


def test_vip_outside_the_interface_subnet_fails(profile: Profile, lab: Lab) -> None:
    lab.standby.address = "10.249.90.20/28"  # the machine is on a /28 without the VIP
    checks = find(lab.doctor(profile), "pairs.back", "vip subnet")
    bad = [c for c in checks if c.status is Status.FAIL]
    assert len(bad) == 1 and "outside 10.249.90.16/28 of prod-back-standby" in bad[0].detail


def test_unusable_backend_fails_but_machines_are_still_checked(profile: Profile, lab: Lab) -> None:
    lab.hypervisor = FakeHypervisor(unavailable="systemd-nspawn not found")
    report = lab.doctor(profile)
    (check,) = find(report, "lab", "backend")
    assert (check.status, check.detail, check.fix) == (
        Status.FAIL,
        "systemd-nspawn not found",
        "install it",
    )
    assert find(report, "prod-back", "ssh")[0].status is Status.OK


def test_unreachable_machine_fails_and_the_other_node_is_still_checked(
    profile: Profile, lab: Lab
) -> None:
    lab.down.add("prod-back")
    report = lab.doctor(profile)
    (check,) = find(report, "prod-back", "ssh")
    assert check.status is Status.FAIL and "did not answer SSH" in check.detail
    assert find(report, "prod-back-standby", "interface")[0].status is Status.OK
    assert find(report, "pairs.back", "vrid")[0].status is Status.OK


def test_virtualbox_nat_attachment_fails_and_missing_additions_warn(
    profile: Profile, lab: Lab
) -> None:
    lab.hypervisor = FakeVirtualBox(
        attachments={"prod-back": "nat"}, additions={"prod-back-standby": None}
    )
    report = lab.doctor(profile)
    (nat,) = find(report, "prod-back", "nic attachment")
    assert nat.status is Status.FAIL and "VRRP (IP protocol 112) does not cross it" in nat.detail
    assert find(report, "prod-back-standby", "nic attachment")[0].status is Status.OK
    (ga,) = find(report, "prod-back-standby", "guest additions")
    assert ga.status is Status.WARN


def test_virtualbox_generic_attachment_is_ok_and_names_its_driver(
    profile: Profile, lab: Lab
) -> None:
    lab.hypervisor = FakeVirtualBox(
        attachments={"prod-back": "generic"},
        nics={"prod-back": (Nic(1, "generic", "080027000001", True, driver="VDE"),)},
    )
    (check,) = find(lab.doctor(profile), "prod-back", "nic attachment")
    assert (check.status, check.detail) == (Status.OK, "generic (VDE)")


def test_not_provisioned_yet_warns(profile: Profile, lab: Lab) -> None:
    for m in (lab.primary, lab.standby):
        m.files.clear()
        m.version = None
        m.stats.pop(SCRIPT)
    report = lab.doctor(profile)
    assert report.ok
    assert find(report, "pairs.back", "configs agree")[0].status is Status.WARN
    assert find(report, "prod-back", "keepalived")[0].detail == "not installed"


def test_json_shape(profile: Profile, lab: Lab) -> None:
    lab.standby.script_user = False
    document = lab.doctor(profile).to_json()
    assert set(document) == {"ok", "exit_code", "counts", "checks"}
    assert document["ok"] is False and document["exit_code"] == 6
    assert set(document["counts"]) == {"OK", "WARN", "FAIL"}
    assert document["counts"]["FAIL"] == 1
    for check in document["checks"]:
        assert set(check) == {"subject", "check", "status", "detail", "fix"}


def test_conf_facts_reads_what_must_agree() -> None:
    conf = """
    vrrp_instance VI_back {
      virtual_router_id 51   # the pair's id
      advert_int 1
      authentication {
        auth_type PASS
        auth_pass abc
      }
      virtual_ipaddress {
        10.0.0.9/24 dev eth0
        10.0.0.8/24
      }
    }
    """
    facts = doctor_op.conf_facts(conf)
    assert (facts.vrid, facts.advert_int, facts.version) == ("51", "1", "2")
    assert facts.vips == ("10.0.0.8", "10.0.0.9")
    other = doctor_op.conf_facts(conf.replace("51", "52").replace("abc", "abd"))
    assert facts.differences(other) == ["vrid", "auth_pass"]


def test_parse_listener_and_neighbour_output() -> None:
    adverts = doctor_op.parse_adverts("10.249.90.10 51 103\n10.249.90.77 51 150\ndone\n")
    assert [(a.source, a.vrid, a.priority) for a in adverts] == [
        ("10.249.90.10", 51, 103),
        ("10.249.90.77", 51, 150),
    ]
    assert doctor_op.parse_neigh("10.249.90.1 lladdr 66:05:bc:99:52:3b REACHABLE \n") == (
        "66:05:bc:99:52:3b"
    )
    assert doctor_op.parse_neigh("10.249.90.77 INCOMPLETE \n") is None
    assert doctor_op.parse_neigh("10.249.90.77 lladdr 66:05:bc:99:52:3b FAILED\n") is None


def test_the_password_is_not_kept_in_what_doctor_reads(profile: Profile, lab: Lab) -> None:
    conf = lab.primary.files[ka.CONF_PATH].decode()
    facts = doctor_op.conf_facts(conf)
    assert "s3cret!" in conf and "s3cret!" not in repr(facts)
    machine = doctor_op.parse_facts("prod-back", "@@end\n", conf)
    assert "s3cret!" not in repr(machine)


@pytest.mark.parametrize(
    ("state", "link", "detail", "fix"),
    [
        (
            MachineState.ABSENT,
            True,
            "not created: run `labctl clone prod-back`",
            "labctl clone prod-back",
        ),
        (MachineState.STOPPED, True, "stopped: run `labctl up`", "labctl up"),
        (MachineState.PAUSED, True, "paused: run `labctl up` (resumes it)", "labctl up"),
        (
            MachineState.RUNNING,
            False,
            "link down (cable out): run `labctl up` (reconnects it)",
            "labctl up",
        ),
    ],
)
def test_the_hypervisor_is_asked_before_ssh(
    profile: Profile, lab: Lab, state: MachineState, link: bool, detail: str, fix: str
) -> None:
    lab.hypervisor.states["prod-back-standby"] = state
    lab.hypervisor.links["prod-back-standby"] = link
    tried: list[str] = []
    connect = lab.connect

    def recording(node: Node) -> Remote:
        tried.append(node.name)
        return connect(node)

    lab.connect = recording  # type: ignore[method-assign]
    report = lab.doctor(profile)
    (check,) = find(report, "prod-back-standby", "machine")
    assert (check.status, check.detail, check.fix) == (Status.FAIL, detail, fix)
    assert tried == ["prod-back"]
    assert not [c for c in report.checks if c.subject == "prod-back-standby" and c.check == "ssh"]
    (running,) = find(report, "prod-back", "machine")
    assert running.status is Status.OK
    assert report.exit_code == 6
