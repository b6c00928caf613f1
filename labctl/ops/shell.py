"""``labctl ssh MACHINE [-- COMMAND...]``: OpenSSH to a lab machine, the way labctl logs in.

The system's ``ssh`` client gets the profile's user and port, the lab's key (or the profile's
``ssh.key``) and labctl's own known-hosts record as its only trusted host keys (with
``~/.ssh/known_hosts``, as labctl itself reads), with ``StrictHostKeyChecking``: a host key
that changed is refused, as everywhere in labctl; a machine labctl has not met yet is trusted
on first use and recorded in labctl's file.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from labctl import paths
from labctl.errors import BackendUnavailable
from labctl.profile import Profile


def machine_address(profile: Profile, machine: str) -> str:
    for name, address, _role in profile.all_nodes():
        if name == machine:
            return address
    profile.check_machines([machine])  # raises UnknownName
    raise AssertionError("unreachable")  # pragma: no cover


def openssh_argv(profile: Profile, machine: str, command: Sequence[str] = ()) -> list[str]:
    """The ``ssh`` command line for an interactive shell (or ``command``) on ``machine``."""
    from labctl.ops.connect import endpoint_for

    client = shutil.which("ssh")
    if client is None:
        raise BackendUnavailable(
            "labctl ssh needs the OpenSSH client (ssh)", hint="apt-get install openssh-client"
        )
    endpoint = endpoint_for(profile, machine, machine_address(profile, machine))
    record = paths.known_hosts_path(profile.lab.name)
    record.parent.mkdir(parents=True, exist_ok=True)
    known = [str(record)]
    personal = Path("~/.ssh/known_hosts").expanduser()
    if personal.is_file():
        known.append(str(personal))
    argv = [
        client,
        "-o", f"UserKnownHostsFile={' '.join(known)}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=accept-new",  # new: recorded; changed: refused
        "-o", "HashKnownHosts=no",  # labctl's record stays readable by labctl
        "-o", f"ConnectTimeout={profile.timeouts.connect:g}",
        "-p", str(endpoint.port),
        "-l", endpoint.user,
    ]
    if endpoint.key_filename is not None:
        argv += ["-i", endpoint.key_filename, "-o", "IdentitiesOnly=yes"]
    argv.append(endpoint.host)
    if command:
        argv += ["--", *command]
    return argv
