"""`labctl export ansible`: the lab's pairs as an Ansible inventory, playbook and role."""

from __future__ import annotations

from pathlib import Path

import click

from labctl.cli.base import JsonOpt, State, cli, emit_json, note, pass_state, profile_option


@cli.group("export")
def export_group() -> None:
    """Hand the lab's pairs to other tools."""


@export_group.command("ansible")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("pairs", nargs=-1, metavar="[PAIR]...")
@click.option("--show-secrets", is_flag=True, help="Write the VRRP passwords (in clear).")
@profile_option
@JsonOpt
@pass_state
def export_ansible(
    state: State, directory: Path, pairs: tuple[str, ...], show_secrets: bool, as_json: bool
) -> None:
    """Write DIR/inventory.yml, playbook.yml and a role doing what `provision pair` does.

    One inventory group per pair (all pairs when none are named); keepalived.conf rendered
    from labctl's own template, byte for byte what labctl writes. The VRRP password is read
    from a vault variable or the environment, never written unless --show-secrets.

    --json: {"directory", "group", "files", "passwords": [{"pair", "vault_var", "env_var"}],
    "secrets_written"}.
    """
    from labctl.ops import export_ansible as export_op

    prof = state.profile()
    result = export_op.export(prof, directory, pairs, show_secrets=show_secrets)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"wrote {len(result.files)} files into {directory} (group {result.group})")
    for source in result.passwords:
        where = "written (in clear)" if result.secrets_written else "not written"
        click.echo(
            f"pair {source.pair}: password {where}; the playbook reads "
            f"{source.vault_var}, else ${source.env_var}"
        )
    note(f"run: ansible-playbook -i {directory}/inventory.yml {directory}/playbook.yml")
