"""`labctl export ansible DIR [PAIR...]`: the lab's pairs as an Ansible inventory and role.

For fleets managed with Ansible: the export does what `labctl provision pair` does (package
without recommends, script user, check script, keepalived.conf validated with keepalived -t
read the way labctl reads 2.2.7, a reload handler, primary started before standby), and
renders keepalived.conf from labctl's own template file with labctl's Jinja2 options and the
same values (``keepalived.template_context``), so both tools write identical bytes.

Written into DIR (files labctl writes are replaced, others left alone)::

    inventory.yml                  group lab_<lab> > one group pair_<pair> per pair; host
                                   vars labctl_role, labctl_priority, labctl_address, ...
    playbook.yml                   hosts: lab_<lab>; role labctl_keepalived
    roles/labctl_keepalived/       tasks, handlers, templates/keepalived.conf.j2, files/
    group_vars/lab_<lab>/vault.yml only with show_secrets: the passwords, to ansible-vault
    README.md                      how to run it and where the password comes from

The VRRP password is never written unless ``show_secrets``: each pair's ``labctl_auth_pass``
reads the vault-able variable ``vault_labctl_auth_pass_<pair>``, else the environment
variable (the profile's ``auth_pass_env``, else ``LABCTL_AUTH_PASS_<PAIR>``).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from labctl import keepalived as ka
from labctl import paths
from labctl.errors import OperationFailed
from labctl.ops.provision_node import CONFIG_TEST_PROBLEM
from labctl.profile import Profile, Role

ROLE = "labctl_keepalived"


@dataclass(frozen=True)
class PasswordSource:
    """Where the exported playbook reads one pair's auth_pass from."""

    pair: str
    vault_var: str
    env_var: str


@dataclass(frozen=True)
class ExportResult:
    """What was written, for the CLI to report."""

    directory: Path
    group: str
    files: list[str]
    passwords: list[PasswordSource]
    secrets_written: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "group": self.group,
            "files": self.files,
            "passwords": [
                {"pair": p.pair, "vault_var": p.vault_var, "env_var": p.env_var}
                for p in self.passwords
            ],
            "secrets_written": self.secrets_written,
        }


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def group_name(pair_name: str) -> str:
    """The inventory group of a pair (Ansible group names take no '-')."""
    return f"pair_{_ident(pair_name)}"


def lab_group(profile: Profile) -> str:
    return f"lab_{_ident(profile.lab.name)}"


def password_source(profile: Profile, pair_name: str) -> PasswordSource:
    env = profile.pair(pair_name).auth_pass_env or f"LABCTL_AUTH_PASS_{_ident(pair_name).upper()}"
    return PasswordSource(pair_name, f"vault_labctl_auth_pass_{_ident(pair_name)}", env)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for plain data (scalars written as JSON, which YAML reads as is)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}\n" if indent == 0 else " {}\n"
        out = "\n" if indent else ""
        for key, item in value.items():
            nested = isinstance(item, dict | list) and item
            text = to_yaml(item, indent + 2) if nested else " " + _scalar(item) + "\n"
            out += f"{pad}{_key(key)}:{text}"
        return out
    if isinstance(value, list):
        if not value:
            return " []\n"
        return "\n" + "".join(f"{pad}- {_scalar(item)}\n" for item in value)
    return _scalar(value) + "\n"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key) else json.dumps(key)


def _scalar(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)  # flow style, only for nested values inside lists
    return "null" if value is None else json.dumps(value)


def _host_vars(profile: Profile, pair_name: str, role: Role) -> tuple[str, dict[str, Any]]:
    context = ka.template_context(profile, pair_name, role)
    node = profile.nodes(pair_name)[0 if role == "primary" else 1]
    # log in as labctl does: the profile's [ssh] (nspawn: the lab's own key); the key need
    # not exist on this machine, the playbook may run elsewhere
    host: dict[str, Any] = {"ansible_host": node.ip}
    if profile.ssh.port != 22:
        host["ansible_port"] = profile.ssh.port
    host["ansible_user"] = profile.ssh.user
    if profile.ssh.user != "root":
        host["ansible_become"] = True  # labctl runs everything through sudo then, too
    if profile.ssh.key:
        host["ansible_ssh_private_key_file"] = profile.ssh.key
    elif profile.lab.backend == "nspawn":
        host["ansible_ssh_private_key_file"] = str(paths.lab_key_path(profile.lab.name))
    host |= {
        "labctl_role": role,
        "labctl_priority": context["priority"],
        "labctl_address": node.address,
        "labctl_ip": node.ip,
        "labctl_interface": profile.pair(pair_name).interface,
        "labctl_keepalived": context,
    }
    return node.name, host


def inventory(profile: Profile, pair_names: Sequence[str], *, show_secrets: bool) -> str:
    pairs: dict[str, Any] = {}
    for name in pair_names:
        source = password_source(profile, name)
        lookup = f"lookup('ansible.builtin.env', '{source.env_var}')"
        pairs[group_name(name)] = {
            "vars": {
                "labctl_pair": name,
                "labctl_auth_pass_vault_var": source.vault_var,
                "labctl_auth_pass_env": source.env_var,
                "labctl_auth_pass": f"{{{{ {source.vault_var} | default({lookup}, true) }}}}",
            },
            "hosts": dict(_host_vars(profile, name, role) for role in ("primary", "standby")),
        }
    doc = {"all": {"children": {lab_group(profile): {"children": pairs}}}}
    where = "group_vars/" + lab_group(profile) + "/vault.yml" if show_secrets else "nowhere"
    header = (
        f"# Written by `labctl export ansible` from lab {profile.lab.name}: one group per pair.\n"
        f"# The VRRP passwords are written {where}; each pair's labctl_auth_pass reads its\n"
        "# vault variable, else its environment variable (see README.md).\n"
    )
    return header + to_yaml(doc)


def playbook(profile: Profile) -> str:
    return (
        f"# Written by `labctl export ansible` from lab {profile.lab.name}.\n"
        f"- name: keepalived hot standby, as labctl provision pair does it\n"
        f"  hosts: {lab_group(profile)}\n"
        "  gather_facts: false\n"
        "  roles:\n"
        f"    - {ROLE}\n"
    )


def _data(name: str) -> bytes:
    return resources.files("labctl").joinpath("templates", "ansible", name).read_bytes()


def _readme(profile: Profile, sources: Sequence[PasswordSource], show_secrets: bool) -> str:
    lines = [
        f"# keepalived hot standby for lab {profile.lab.name} (exported by labctl)",
        "",
        "    ansible-playbook -i inventory.yml playbook.yml          # add --check to preview",
        "",
        "It does what `labctl provision pair` does and writes the same bytes. The machines",
        "need Python 3 and python3-apt (Ansible's apt module). The VRRP password of each",
        "pair comes from its vault variable, else its environment variable:",
        "",
    ]
    for s in sources:
        lines.append(f"* pair {s.pair}: `{s.vault_var}`, else `${s.env_var}`")
    lines.append("")
    if show_secrets:
        vault = f"group_vars/{lab_group(profile)}/vault.yml"
        lines.append(f"The passwords are in clear in `{vault}`: `ansible-vault encrypt {vault}`.")
    else:
        lines.append("To keep them in a vault: `ansible-vault encrypt_string --name VAR` into")
        lines.append(f"`group_vars/{lab_group(profile)}/vault.yml`.")
    return "\n".join(lines) + "\n"


def export(
    profile: Profile,
    directory: Path,
    pair_names: Sequence[str] = (),
    *,
    show_secrets: bool = False,
) -> ExportResult:
    """Write the inventory, playbook and role for the named pairs (all when none are named).

    Raises:
        ProfileError: an unknown pair, or (show_secrets) a password that cannot be read.
        OperationFailed: a machine in two pairs, two pairs with one group name, or DIR not
            writable.
    """
    names = list(dict.fromkeys(pair_names)) or list(profile.pairs)
    owners: dict[str, str] = {}
    groups: dict[str, str] = {}
    for name in names:
        for node in profile.nodes(name):  # ProfileError for an unknown pair
            if owners.setdefault(node.name, name) != name:
                raise OperationFailed(
                    f"{node.name} is in pairs {owners[node.name]} and {name}; one "
                    "keepalived.conf per machine cannot serve both: export them separately"
                )
        if groups.setdefault(group_name(name), name) != name:
            raise OperationFailed(
                f"pairs {groups[group_name(name)]} and {name} both become inventory group "
                f"{group_name(name)}: rename one"
            )
    sources = [password_source(profile, name) for name in names]
    secrets = {s.vault_var: profile.auth_pass(s.pair) for s in sources} if show_secrets else {}
    role = Path("roles") / ROLE
    files: dict[Path, bytes] = {
        Path("inventory.yml"): inventory(profile, names, show_secrets=show_secrets).encode(),
        Path("playbook.yml"): playbook(profile).encode(),
        role / "tasks" / "main.yml": _data("tasks.yml"),
        role / "handlers" / "main.yml": _data("handlers.yml"),
        role / "defaults" / "main.yml": (
            "# what labctl counts as a problem in keepalived -t output (labctl's own pattern)\n"
            + to_yaml({"labctl_config_test_problem": CONFIG_TEST_PROBLEM.pattern})
        ).encode(),
        role / "templates" / ka.TEMPLATE: ka.template_source(),
        Path("README.md"): _readme(profile, sources, show_secrets).encode(),
    }
    for name in names:
        script = profile.check_script_path(name)
        if script is not None:
            files[role / "files" / script.name] = script.read_bytes()
    if secrets:
        files[Path("group_vars") / lab_group(profile) / "vault.yml"] = (
            "# VRRP passwords in clear (--show-secrets): ansible-vault encrypt this file\n"
            + to_yaml(secrets)
        ).encode()
    try:
        shutil.rmtree(directory / role / "files", ignore_errors=True)  # scripts of old exports
        for path, data in files.items():
            target = directory / path
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = 0o600 if path.name == "vault.yml" else 0o644
            target.write_bytes(data)
            target.chmod(mode)
    except OSError as exc:
        raise OperationFailed(f"cannot write the export into {directory}: {exc}") from exc
    return ExportResult(
        directory, lab_group(profile), sorted(str(p) for p in files), sources, bool(secrets)
    )
