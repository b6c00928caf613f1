"""Rendering: golden files pin both nodes' configs; the seed's pair renders equivalently."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labctl import keepalived as ka
from labctl import profile as profile_mod
from tests.unit.conftest import CliResult

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[2]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LABCTL_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs (LABCTL_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("profile_name", ["it490", "local-lab"])
@pytest.mark.parametrize("role", ["primary", "standby"])
def test_golden_configs(profile_name: str, role: profile_mod.Role) -> None:
    prof = profile_mod.load(str(REPO / "profiles" / f"{profile_name}.toml"))
    rendered = ka.render_node(prof, "back", role, mask_secrets=False)
    _golden(f"{profile_name}-back-{role}.conf", rendered.conf)


def parse_conf(text: str) -> dict[str, Any]:
    """keepalived.conf -> nested dict; `key value...` lines map key -> [values], `name {` opens
    a block, a bare value line (a VIP) maps value -> []. Comments (# and !) are dropped."""
    root: dict[str, Any] = {}
    stack = [root]
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split("!", 1)[0].strip()
        if not line:
            continue
        if line == "}":
            stack.pop()
        elif line.endswith("{"):
            block: dict[str, Any] = {}
            stack[-1][line[:-1].strip()] = block
            stack.append(block)
        else:
            key, *values = line.split()
            stack[-1][key] = values
    assert stack == [root], "unbalanced braces"
    return root


def _instance(conf: dict[str, Any]) -> dict[str, Any]:
    (name,) = [k for k in conf if k.startswith("vrrp_instance")]
    instance: dict[str, Any] = conf[name]
    return instance


def test_seed_pair_renders_equivalent_to_the_seed_config() -> None:
    seed = parse_conf((GOLDEN / "seed-prod-back-standby.conf").read_text())
    prof = profile_mod.load(str(REPO / "profiles" / "it490.toml"))
    ours = parse_conf(ka.render_node(prof, "back", "standby", mask_secrets=False).conf)

    assert "enable_script_security" in ours["global_defs"]
    assert "enable_script_security" in seed["global_defs"]
    assert ours["global_defs"]["router_id"] == ["prod_back_standby"]  # ours derives from node
    (seed_script,) = [k for k in seed if k.startswith("vrrp_script")]
    assert seed_script in ours, "same vrrp_script name as the seed"
    for key in ("script", "interval", "weight"):
        assert ours[seed_script][key] == seed[seed_script][key]

    seed_vi, our_vi = _instance(seed), _instance(ours)
    for key in ("state", "interface", "virtual_router_id", "priority", "advert_int"):
        assert our_vi[key] == seed_vi[key], key
    assert our_vi["authentication"] == seed_vi["authentication"]
    assert our_vi["track_script"] == seed_vi["track_script"]
    seed_vips = [ipaddress.IPv4Interface(v).ip for v in seed_vi["virtual_ipaddress"]]
    our_vips = [ipaddress.IPv4Interface(v).ip for v in our_vi["virtual_ipaddress"]]
    assert our_vips == seed_vips


def test_both_nodes_agree_by_construction() -> None:
    prof = profile_mod.load(str(REPO / "profiles" / "it490.toml"))
    for pair in prof.pairs:
        primary = _instance(
            parse_conf(ka.render_node(prof, pair, "primary", mask_secrets=False).conf)
        )
        standby = _instance(
            parse_conf(ka.render_node(prof, pair, "standby", mask_secrets=False).conf)
        )
        for key in ("virtual_router_id", "advert_int", "authentication", "virtual_ipaddress"):
            assert primary[key] == standby[key], (pair, key)
        assert primary["state"] == ["MASTER"] and standby["state"] == ["BACKUP"]
        assert int(primary["priority"][0]) > int(standby["priority"][0])


def test_nopreempt_and_unicast_render(write_profile: Callable[[str], Path]) -> None:
    from tests.unit.conftest import BASE_PROFILE

    path = write_profile(
        BASE_PROFILE.replace("advert_int = 1", "advert_int = 1\npreempt = false\nunicast = true")
    )
    prof = profile_mod.load(str(path))
    primary = ka.render_node(prof, "back", "primary").conf
    assert "state BACKUP" in primary and "nopreempt" in primary
    assert "unicast_src_ip 192.168.68.80" in primary
    assert "unicast_peer {\n    192.168.68.90\n  }" in primary


def test_render_masks_secret_unless_asked(cli: Callable[..., CliResult]) -> None:
    masked = cli("-p", "it490", "render", "back")
    assert masked.code == 0
    assert "njit490" not in masked.out and "auth_pass ********" in masked.out
    assert masked.out.count("vrrp_instance VI_back") == 2
    shown = cli("-p", "it490", "render", "back", "--node", "standby", "--show-secrets")
    assert shown.code == 0
    assert "auth_pass njit490" in shown.out and "state MASTER" not in shown.out


def test_render_unknown_pair(cli: Callable[..., CliResult]) -> None:
    result = cli("-p", "it490", "render", "bak")
    assert result.code == 2
    assert result.err == "error: PAIR: 'bak' is not a pair of lab it490 (known: front, back, db)\n"


def test_parse_ip_addr_and_holds() -> None:
    out = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        "2: host0@if7    inet 10.249.90.10/24 brd 10.249.90.255 scope global host0\\ ...\n"
        "2: host0@if7    inet 10.249.90.100/24 scope global secondary host0\\ ...\n"
        "2: host0@if7    inet6 fe80::1/64 scope link \\ ...\n"
    )
    addrs = ka.parse_ip_addr(out)
    assert [(a.ifname, str(a.interface)) for a in addrs] == [
        ("lo", "127.0.0.1/8"),
        ("host0", "10.249.90.10/24"),
        ("host0", "10.249.90.100/24"),
    ]
    assert ka.holds(addrs, "10.249.90.100/24")
    assert not ka.holds(addrs, "10.249.90.101/24")
    assert ka.interface_for(addrs, "10.249.90.10/24") == "host0"
    assert ka.interface_for(addrs, "10.249.90.11") is None


def test_mask_longest_first() -> None:
    assert ka.mask("pass passwd", ["pass", "passwd"]) == f"{ka.MASK} {ka.MASK}"


def test_vrrp_v3_renders_centisecond_adverts_without_auth(
    write_profile: Callable[[str], Path],
) -> None:
    from tests.unit.conftest import BASE_PROFILE

    path = write_profile(
        BASE_PROFILE.replace("advert_int = 1", "advert_int = 0.1\nvrrp_version = 3")
    )
    conf = ka.render_node(profile_mod.load(str(path)), "back", "standby").conf
    assert "  advert_int 0.1\n" in conf and "  version 3\n" in conf
    assert "authentication" not in conf and "auth_pass" not in conf
    # whole seconds stay integers, as before
    assert "  advert_int 1\n" in ka.render_node(profile_mod.load("it490"), "back", "primary").conf
