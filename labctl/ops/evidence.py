"""Evidence bundles: what happened on both nodes during a drill or a verify, kept as one file.

``labctl failover ... --evidence DIR`` and ``labctl verify ... --evidence DIR`` write, per pair,
``DIR/<lab>-<pair>-<fault|verify>-<UTC time>.tar.gz`` holding one directory of that name::

    manifest.json          lab, pair, kind, fault, started/finished (UTC), labctl version,
                           the parts present and, per node, why a part is missing
    labctl-version.txt
    profile.toml           the profile as loaded, secrets masked
    result.json            the drill's timeline (failover --json) or verify's document
    nodes/<node>/keepalived.journal   `journalctl -u keepalived` since the run started
    nodes/<node>/keepalived.json      keepalived's JSON state dump (auth_data blanked on the node)
    nodes/<node>/ip-addr.txt          `ip -o addr show`
    nodes/<node>/ip-neigh.txt         `ip neigh show`
    nodes/<node>/keepalived.conf      the installed config (auth_pass masked on the node)

Secrets never enter the bundle: auth_pass is replaced on the node before anything is sent, and
every text is masked again on the control host (the profile's resolvable secrets and any
``auth_pass`` value) before it is packed.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import labctl
from labctl import keepalived as ka
from labctl.errors import OperationFailed
from labctl.ops.verify import (
    KEEPALIVED_JSON_DUMP,
    UNREACHABLE_ERRORS,
    describe_error,
    split_sections,
)
from labctl.profile import Profile
from labctl.remote import Remote

NODE_TIMEOUT = 30.0
NODE_PARTS = (
    "keepalived.journal",
    "keepalived.json",
    "ip-addr.txt",
    "ip-neigh.txt",
    "keepalived.conf",
)

_AUTH_PASS = re.compile(r"(auth_pass\b\s*=?\s*)(\"[^\"]*\"|'[^']*'|\S+)")
_AUTH_DATA = re.compile(r'("auth_data"\s*:\s*)"[^"]*"')

# One round trip per node; the password is replaced before it leaves the node.
NODE_SCRIPT = (
    r"""
echo @@journal
journalctl -u keepalived --since "@$1" --no-pager -o short-iso-precise 2>&1
echo @@json"""
    + KEEPALIVED_JSON_DUMP
    + r"""echo @@addr
ip -o addr show
echo @@neigh
ip neigh show
echo @@conf
sed -E 's/(auth_pass[[:space:]]+)[^[:space:]]+/\1********/' /etc/keepalived/keepalived.conf 2>&1
echo @@end
"""
)
SECTIONS = {
    "journal": "keepalived.journal",
    "json": "keepalived.json",
    "addr": "ip-addr.txt",
    "neigh": "ip-neigh.txt",
    "conf": "keepalived.conf",
}


def scrub(text: str, secrets: list[str]) -> str:
    """Mask every known secret, any auth_pass value and keepalived's auth_data."""
    text = ka.mask(text, secrets)
    text = _AUTH_PASS.sub(lambda m: m.group(1) + ka.MASK, text)
    return _AUTH_DATA.sub(lambda m: m.group(1) + '""', text)


def bundle_name(lab: str, pair: str, what: str, when: dt.datetime) -> str:
    return f"{lab}-{pair}-{what}-{when.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"


def prepare(directory: Path) -> Path:
    """Create DIR if needed and make sure a bundle can be written there (before anything runs)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".labctl-probe-"):
            pass
    except OSError as exc:
        raise OperationFailed(
            f"--evidence {directory}: cannot write there: {exc.strerror or exc}"
        ) from None
    return directory


def node_parts(remote: Remote, since: float) -> tuple[dict[str, str], str | None]:
    """The node's parts (file name -> text), or an error saying why there are none."""
    argv = ["sh", "-c", NODE_SCRIPT, "evidence", str(int(since) - 1)]
    try:
        result = remote.run(argv, check=False, timeout=NODE_TIMEOUT)
    except UNREACHABLE_ERRORS as exc:
        return {}, describe_error(exc)
    sections = split_sections(result.stdout)
    if "end" not in sections:
        return {}, f"the evidence script did not complete (exit {result.exit_code})"
    return {name: sections.get(key, "") for key, name in SECTIONS.items()}, None


def write_bundle(
    profile: Profile,
    pair_name: str,
    remotes: Mapping[str, Remote],
    *,
    directory: Path,
    what: str,
    document: Mapping[str, Any],
    started: float,
    now: Callable[[], float],
) -> Path:
    """Collect the pair's evidence from its nodes and write the .tar.gz; return its path.

    Args:
        what: the fault of a drill, or ``verify``.
        document: the result document (drill timeline or verify JSON).
        started: wall-clock seconds when the run started (journals are read from there).
        remotes: open connections by machine name; a node missing here is recorded as such.
    """
    secrets = profile.secrets()
    finished = now()
    name = bundle_name(
        profile.lab.name, pair_name, what, dt.datetime.fromtimestamp(finished, dt.UTC)
    )
    files: dict[str, str] = {}
    errors: dict[str, str] = {}
    for node in profile.nodes(pair_name):
        remote = remotes.get(node.name)
        if remote is None:
            errors[node.name] = "no connection to the node"
            continue
        parts, error = node_parts(remote, started)
        if error is not None:
            errors[node.name] = error
        for part, text in parts.items():
            files[f"nodes/{node.name}/{part}"] = text
    profile_text = profile.path.read_text() if profile.path is not None else ""
    files["profile.toml"] = profile_text
    files["result.json"] = json.dumps(document, indent=2, default=str) + "\n"
    files["labctl-version.txt"] = f"labctl {labctl.__version__}\n"
    manifest = {
        "lab": profile.lab.name,
        "pair": pair_name,
        "kind": "verify" if what == "verify" else "failover",
        "fault": None if what == "verify" else what,
        "started": _iso(started),
        "finished": _iso(finished),
        "labctl_version": labctl.__version__,
        "parts": sorted([*files, "manifest.json"]),
        "errors": errors,
    }
    files["manifest.json"] = json.dumps(manifest, indent=2) + "\n"
    return _pack(directory, name, {k: scrub(v, secrets) for k, v in files.items()}, finished)


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


def _pack(directory: Path, name: str, files: Mapping[str, str], mtime: float) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size, info.mode, info.mtime = len(data), 0o600, int(mtime)
            tar.addfile(info, io.BytesIO(data))
    target = directory / f"{name}.tar.gz"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(buffer.getvalue())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OperationFailed(
            f"--evidence {directory}: cannot write {target.name}: {exc}"
        ) from None
    return target
