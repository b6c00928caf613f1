"""Profile validation: each rule fed a bad profile, asserting the exact message and exit code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from labctl import profile as profile_mod
from labctl.errors import EXIT_PROFILE, ProfileError
from tests.unit.conftest import BASE_PROFILE, CliResult

DB_PAIR = """
[machines.prod-db]
address = "192.168.68.82/24"

[pairs.db]
primary = "prod-db"
standby = "prod-db-standby"
standby_address = "192.168.68.92/24"
vrid = 52
vip = ["192.168.68.87/24"]
priority = { primary = 101, standby = 100 }
auth_pass = "njit490"
"""


def test_base_profile_is_valid(
    write_profile: Callable[[str], Path], cli: Callable[..., CliResult]
) -> None:
    path = write_profile(BASE_PROFILE)
    result = cli("-p", str(path), "profile", "check")
    assert result.code == 0, result.err
    assert result.out.startswith(f"profile OK: {path} (lab it490, backend virtualbox")


def test_shipped_profiles_are_valid(cli: Callable[..., CliResult]) -> None:
    for name in ("it490", "local-lab"):
        result = cli("profile", "check", "-p", name)
        assert result.code == 0, result.err


# (case id, old text, new text, exact error lines after "error: ")
CASES: list[tuple[str, str, str, list[str]]] = [
    (
        "unknown key with suggestion",
        "vrid = 51",
        "vrid = 51\nvird = 51",
        ["pairs.back.vird: unknown key (did you mean 'vrid'?)"],
    ),
    (
        "unknown top-level table",
        "[lab]",
        "[labs]\nname = 'x'\n\n[lab]",
        ["labs: unknown key (did you mean 'lab'?)"],
    ),
    ("wrong type", "vrid = 51", 'vrid = "51"', ["pairs.back.vrid: must be an integer, got string"]),
    (
        "missing required key",
        'primary = "prod-back"\n',
        "",
        ["pairs.back.primary: required key is missing"],
    ),
    (
        "machine name not a hostname",
        "[machines.prod-back]",
        "[machines.prod_back]",
        [
            "machines.prod_back: 'prod_back' is not a valid hostname "
            "(letters, digits and '-', at most 63 characters)",
            "pairs.back.primary: 'prod-back' is not a key of [machines] (known: prod_back)",
        ],
    ),
    (
        "standby name not a hostname",
        'standby = "prod-back-standby"',
        'standby = "prod back"',
        [
            "pairs.back.standby: 'prod back' is not a valid hostname "
            "(letters, digits and '-', at most 63 characters)"
        ],
    ),
    ("vrid zero", "vrid = 51", "vrid = 0", ["pairs.back.vrid: must be 1..255"]),
    ("vrid too high", "vrid = 51", "vrid = 256", ["pairs.back.vrid: must be 1..255"]),
    (
        "priority out of range",
        "primary = 101, standby = 100",
        "primary = 255, standby = 0",
        [
            "pairs.back.priority.primary: must be 1..254",
            "pairs.back.priority.standby: must be 1..254",
        ],
    ),
    (
        "primary not above standby",
        "primary = 101, standby = 100",
        "primary = 100, standby = 100",
        ["pairs.back.priority: primary (100) must be higher than standby (100)"],
    ),
    (
        "auth_pass longer than 8",
        'auth_pass = "njit490"',
        'auth_pass = "njit490-long"',
        [
            "pairs.back.auth_pass: 12 characters is too long: keepalived silently truncates "
            "it to 8; use at most 8"
        ],
    ),
    (
        "auth_pass not printable ascii",
        'auth_pass = "njit490"',
        'auth_pass = "nj t490"',
        ["pairs.back.auth_pass: must be 1..8 printable ASCII characters without spaces"],
    ),
    (
        "neither auth_pass nor auth_pass_env",
        'auth_pass = "njit490"\n',
        "",
        ["pairs.back: set auth_pass or auth_pass_env"],
    ),
    (
        "both auth_pass and auth_pass_env",
        'auth_pass = "njit490"',
        'auth_pass = "njit490"\nauth_pass_env = "LAB_PASS"',
        ["pairs.back: set auth_pass or auth_pass_env, not both"],
    ),
    (
        "vip without prefix",
        'vip = ["192.168.68.89/24"]',
        'vip = ["192.168.68.89"]',
        ["pairs.back.vip: '192.168.68.89' needs a prefix length, like 192.168.68.89/24"],
    ),
    (
        "vip not an address",
        'vip = ["192.168.68.89/24"]',
        'vip = ["fe80::1/64"]',
        ["pairs.back.vip: 'fe80::1/64' is not an IPv4 address with prefix"],
    ),
    (
        "vip equals a machine address",
        'vip = ["192.168.68.89/24"]',
        'vip = ["192.168.68.80/24"]',
        [
            "pairs.back.vip[0]: 192.168.68.80 is the address of machines.prod-back.address; "
            "a virtual IP must be unused"
        ],
    ),
    (
        "vip equals the standby address",
        'vip = ["192.168.68.89/24"]',
        'vip = ["192.168.68.90/24"]',
        [
            "pairs.back.vip[0]: 192.168.68.90 is the address of pairs.back.standby_address; "
            "a virtual IP must be unused"
        ],
    ),
    (
        "vip outside the machines' subnet",
        'vip = ["192.168.68.89/24"]',
        'vip = ["10.1.2.3/24"]',
        ["pairs.back.vip[0]: 10.1.2.3 lies outside the machines' subnet 192.168.68.0/24"],
    ),
    (
        "primary not in machines",
        'primary = "prod-back"',
        'primary = "prod-bak"',
        ["pairs.back.primary: 'prod-bak' is not a key of [machines] (known: prod-back)"],
    ),
    (
        "standby named like a machine",
        'standby = "prod-back-standby"',
        'standby = "prod-back"',
        ["pairs.back.standby: 'prod-back' is a production machine; name the standby apart"],
    ),
    (
        "duplicate address",
        'standby_address = "192.168.68.90/24"',
        'standby_address = "192.168.68.80/24"',
        ["pairs.back.standby_address: 192.168.68.80 is already used by machines.prod-back.address"],
    ),
    (
        "check interval out of range",
        "interval = 2",
        "interval = 0",
        ["pairs.back.check.interval: must be 1..3600"],
    ),
    (
        "check weight out of range",
        "weight = 2",
        "weight = 300",
        ["pairs.back.check.weight: must be -253..253"],
    ),
    (
        "v2 advert_int not whole seconds",
        "advert_int = 1",
        "advert_int = 0.5",
        [
            "pairs.back.advert_int: 0.5 s is not whole seconds; VRRPv2 adverts are whole seconds "
            "(keepalived would round it to 1); set vrrp_version = 3 for sub-second adverts"
        ],
    ),
    (
        "v3 advert_int finer than centiseconds",
        "advert_int = 1",
        "advert_int = 0.105\nvrrp_version = 3",
        [
            "pairs.back.advert_int: 0.105 s is not a multiple of 0.01 s; VRRPv3 counts "
            "centiseconds (keepalived would round it to 0.11)"
        ],
    ),
    (
        "v3 advert_int above its 12-bit field",
        "advert_int = 1",
        "advert_int = 41\nvrrp_version = 3",
        [
            "pairs.back.advert_int: 41 s is more than VRRPv3 allows (40.95 s; "
            "keepalived would set 40.95)"
        ],
    ),
    (
        "advert_int below keepalived's range",
        "advert_int = 1",
        "advert_int = 0.001\nvrrp_version = 3",
        ["pairs.back.advert_int: must be 0.01..255 seconds"],
    ),
    (
        "check deadline not positive",
        'backend = "virtualbox"\n',
        'backend = "virtualbox"\n[timeouts]\ncheck = 0\n',
        ["timeouts.check: must be a number of seconds, 0 < s <= 86400"],
    ),
    (
        "backend unknown",
        'backend = "virtualbox"',
        'backend = "vmware"',
        ["lab.backend: must be one of 'virtualbox', 'nspawn' or 'ssh', got 'vmware'"],
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_profile_exact_message(
    old: str,
    new: str,
    expected: list[str],
    write_profile: Callable[[str], Path],
    cli: Callable[..., CliResult],
) -> None:
    assert old in BASE_PROFILE
    path = write_profile(BASE_PROFILE.replace(old, new, 1))
    result = cli("-p", str(path), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert result.out == ""
    assert result.err.splitlines() == [f"error: {line}" for line in expected]
    assert "Traceback" not in result.err


def test_secret_never_in_messages(
    write_profile: Callable[[str], Path], cli: Callable[..., CliResult]
) -> None:
    path = write_profile(BASE_PROFILE.replace('"njit490"', '"Sup3rSecretPass"'))
    result = cli("-p", str(path), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert "Sup3rSecretPass" not in result.err + result.out


def test_every_error_at_once(
    write_profile: Callable[[str], Path], cli: Callable[..., CliResult]
) -> None:
    text = BASE_PROFILE.replace("vrid = 51", "vrid = 300").replace("weight = 2", "weight = 999")
    text = text.replace('backend = "virtualbox"', 'backend = "virtualbox"\ncolour = "blue"')
    result = cli("-p", str(write_profile(text)), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert result.err.splitlines() == [
        "error: lab.colour: unknown key",
        "error: pairs.back.vrid: must be 1..255",
        "error: pairs.back.check.weight: must be -253..253",
    ]


def test_two_pairs_same_vrid_and_vip(
    write_profile: Callable[[str], Path], cli: Callable[..., CliResult]
) -> None:
    text = BASE_PROFILE + DB_PAIR.replace("vrid = 52", "vrid = 51").replace(
        "192.168.68.87/24", "192.168.68.89/24"
    )
    result = cli("-p", str(write_profile(text)), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert result.err.splitlines() == [
        "error: pairs.db.vrid: 51 is already used by pairs.back; VRIDs must be unique on a segment",
        "error: pairs.db.vip[0]: 192.168.68.89 is already a virtual IP of pairs.back",
    ]


def test_missing_check_script(
    write_profile: Callable[[str], Path], cli: Callable[..., CliResult]
) -> None:
    path = write_profile(BASE_PROFILE.replace("check_heartbeat.sh", "nope.sh"))
    result = cli("-p", str(path), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert result.err == f"error: pairs.back.check.script: file not found: {path.parent}/nope.sh\n"


def test_toml_syntax_error_names_line(
    write_profile: Callable[[str], Path], cli: Callable[..., CliResult]
) -> None:
    path = write_profile('[lab]\nname "it490"\n')
    result = cli("-p", str(path), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert result.err.startswith(f"error: {path}: invalid TOML: ")
    assert "(at line 2, column 6)" in result.err
    assert len(result.err.splitlines()) == 1


def test_empty_profile(write_profile: Callable[[str], Path], cli: Callable[..., CliResult]) -> None:
    path = write_profile("\n  \n")
    result = cli("-p", str(path), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert (
        result.err == f"error: {path}: the profile is empty\nhint: start from profiles/it490.toml\n"
    )


def test_profile_not_found(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    result = cli("-p", str(tmp_path / "missing.toml"), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert result.err.splitlines()[0] == f"error: profile not found: {tmp_path}/missing.toml"
    assert result.err.splitlines()[1].startswith("hint: pass -p NAME")


def test_auth_pass_env_unset_and_set(
    write_profile: Callable[[str], Path],
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_profile(
        BASE_PROFILE.replace('auth_pass = "njit490"', 'auth_pass_env = "LABCTL_TEST_PASS"')
    )
    monkeypatch.delenv("LABCTL_TEST_PASS", raising=False)
    result = cli("-p", str(path), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert result.err.splitlines()[0] == (
        "error: pairs.back.auth_pass_env: environment variable LABCTL_TEST_PASS is not set"
    )
    monkeypatch.setenv("LABCTL_TEST_PASS", "toolongpassword")
    result = cli("-p", str(path), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert "toolongpassword" not in result.err
    assert result.err.startswith(
        "error: pairs.back.auth_pass_env: value of LABCTL_TEST_PASS: 15 characters is too long"
    )
    monkeypatch.setenv("LABCTL_TEST_PASS", "s3cret")
    assert cli("-p", str(path), "profile", "check").code == 0
    assert profile_mod.load(str(path)).auth_pass("back") == "s3cret"


def test_nspawn_addresses_must_be_in_lab_subnet(
    write_profile: Callable[[str], Path], cli: Callable[..., CliResult]
) -> None:
    text = (
        BASE_PROFILE.replace('backend = "virtualbox"', 'backend = "nspawn"')
        .replace("192.168.68.80/24", "10.249.90.10")
        .replace("192.168.68.90/24", "10.249.90.20")
        .replace("192.168.68.89/24", "10.249.91.100/24")
    )
    result = cli("-p", str(write_profile(text)), "profile", "check")
    assert result.code == EXIT_PROFILE
    assert result.err.splitlines() == [
        "error: pairs.back.vip[0]: 10.249.91.100 lies outside the machines' subnet 10.249.90.0/24"
    ]


def test_profile_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mylab.toml").write_text("")
    assert profile_mod.resolve_path("mylab", tmp_path) == tmp_path / "profiles" / "mylab.toml"
    assert profile_mod.resolve_path("x/lab.toml", tmp_path) == tmp_path / "x" / "lab.toml"
    monkeypatch.delenv("LABCTL_PROFILE", raising=False)
    assert profile_mod.resolve_path(None, tmp_path) == tmp_path / "labctl.toml"
    monkeypatch.setenv("LABCTL_PROFILE", "other.toml")
    assert profile_mod.resolve_path(None, tmp_path) == tmp_path / "other.toml"


def test_parse_raises_profile_error_with_all_problems() -> None:
    with pytest.raises(ProfileError) as info:
        profile_mod.parse(
            BASE_PROFILE.replace("vrid = 51", "vrid = -1").replace("interval = 2", "interval = 0")
        )
    assert info.value.problems == [
        "pairs.back.vrid: must be 1..255",
        "pairs.back.check.interval: must be 1..3600",
    ]
    assert info.value.exit_code == EXIT_PROFILE


def test_v3_accepts_centisecond_adverts(write_profile: Callable[[str], Path]) -> None:
    from labctl import profile as profile_mod

    for text, seconds in (("0.1", 0.1), ("0.01", 0.01), ("40.95", 40.95), ("2", 2.0)):
        path = write_profile(
            BASE_PROFILE.replace("advert_int = 1", f"advert_int = {text}\nvrrp_version = 3")
        )
        assert profile_mod.load(str(path)).pair("back").advert_int == seconds
