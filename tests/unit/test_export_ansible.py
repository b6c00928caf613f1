"""`labctl export ansible`: files, secrets, and the template shared with labctl byte for byte.

That Ansible really writes labctl's bytes is proven on real guests in
tests/lab/test_export_ansible.py; here: what is written, what is not, and that the role
hands the template every variable it uses.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Callable
from pathlib import Path

import jinja2
import jinja2.meta

from labctl import keepalived as ka
from labctl import profile as profile_mod
from labctl.ops.export_ansible import to_yaml
from tests.unit.conftest import BASE_PROFILE, CliResult

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "labctl" / "templates" / "keepalived.conf.j2"


def test_export_ships_labctl_template_and_no_secret(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    out = tmp_path / "export"
    result = cli("-p", "it490", "export", "ansible", str(out), "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["group"] == "lab_it490" and doc["secrets_written"] is False
    assert {p["pair"]: p["env_var"] for p in doc["passwords"]} == {
        "front": "LABCTL_AUTH_PASS_FRONT",
        "back": "LABCTL_AUTH_PASS_BACK",
        "db": "LABCTL_AUTH_PASS_DB",
    }
    role = out / "roles" / "labctl_keepalived"
    assert (role / "templates" / "keepalived.conf.j2").read_bytes() == TEMPLATE.read_bytes()
    assert (role / "files" / "check_heartbeat.sh").read_bytes() == (
        REPO / "profiles" / "check_heartbeat.sh"
    ).read_bytes()
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == doc["files"]
    assert not (out / "group_vars").exists()
    for path in out.rglob("*"):
        assert not path.is_file() or b"njit490" not in path.read_bytes(), path
    inventory = (out / "inventory.yml").read_text()
    assert "pair_back:\n" in inventory and 'labctl_role: "standby"' in inventory
    assert "vault_labctl_auth_pass_back | default(lookup('ansible.builtin.env', " in inventory
    assert "hosts: lab_it490\n" in (out / "playbook.yml").read_text()


def test_show_secrets_writes_them_to_a_private_vault_file(
    cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    out = tmp_path / "export"
    result = cli("-p", "it490", "export", "ansible", str(out), "back", "--show-secrets")
    assert result.code == 0, result.err
    vault = out / "group_vars" / "lab_it490" / "vault.yml"
    assert 'vault_labctl_auth_pass_back: "njit490"' in vault.read_text()
    assert stat.S_IMODE(vault.stat().st_mode) == 0o600
    inventory = (out / "inventory.yml").read_text()
    assert "pair_back:" in inventory and "pair_front" not in inventory  # only the named pair
    assert "njit490" not in inventory and "njit490" not in result.out + result.err


def test_the_role_passes_every_variable_the_template_uses(tmp_path: Path) -> None:
    source = TEMPLATE.read_text()
    used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source))
    tasks = (REPO / "labctl" / "templates" / "ansible" / "tasks.yml").read_text()
    block = tasks.split("\n  vars:\n", 1)[1].split("\n  notify:", 1)[0]
    passed = set(re.findall(r"^    (\w+): ", block, re.MULTILINE))
    prof = profile_mod.load(str(REPO / "profiles" / "it490.toml"))
    context = set(ka.template_context(prof, "back", "primary"))
    assert used == passed == context | set(ka.RUNTIME_VARIABLES)
    # what ships is what labctl renders from
    assert ka.template_source() == TEMPLATE.read_bytes()


def test_env_var_of_the_profile_is_the_one_the_playbook_reads(
    cli: Callable[..., CliResult], write_profile: Callable[[str], Path], tmp_path: Path
) -> None:
    text = BASE_PROFILE.replace('auth_pass = "njit490"', 'auth_pass_env = "BACK_VRRP_PASS"')
    result = cli("-p", str(write_profile(text)), "export", "ansible", str(tmp_path / "x"), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["passwords"][0]["env_var"] == "BACK_VRRP_PASS"
    assert "'BACK_VRRP_PASS'" in (tmp_path / "x" / "inventory.yml").read_text()


def test_bad_input_is_one_line_and_writes_nothing(
    cli: Callable[..., CliResult], write_profile: Callable[[str], Path], tmp_path: Path
) -> None:
    unknown = cli("-p", "it490", "export", "ansible", str(tmp_path / "a"), "bak")
    assert unknown.code == 2 and "PAIR: 'bak' is not a pair" in unknown.err
    shared = BASE_PROFILE + (
        '\n[pairs.other]\nprimary = "prod-back"\nstandby = "prod-back-two"\n'
        'standby_address = "192.168.68.91/24"\nvrid = 52\nvip = ["192.168.68.88/24"]\n'
        'priority = { primary = 101, standby = 100 }\nauth_pass = "x"\n'
    )
    both = cli("-p", str(write_profile(shared)), "export", "ansible", str(tmp_path / "b"))
    assert both.code == 1 and "prod-back is in pairs back and other" in both.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_to_yaml_block_style() -> None:
    data = {"a": {"b": [1, "x"], "c": None, "d": {"e": True}}, "f-g": "{{ v }}"}
    assert to_yaml(data) == (
        'a:\n  b:\n    - 1\n    - "x"\n  c: null\n  d:\n    e: true\nf-g: "{{ v }}"\n'
    )
