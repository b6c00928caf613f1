"""keepalived knowledge: render each node's keepalived.conf and read `ip -o addr`.

Both nodes of a pair are rendered from the same PairSpec, so VRID, VIPs, advert_int and auth
agree by construction; only state, priority, router_id (and unicast peers) differ.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.profile import Node, Profile, Role

KEEPALIVED_DIR = "/etc/keepalived"
CONF_PATH = f"{KEEPALIVED_DIR}/keepalived.conf"
SCRIPT_USER = "keepalived_script"
MASK = "********"
INTERFACE_PLACEHOLDER = "<detected-at-provision>"

# the whitespace options any other renderer of the template must use for identical bytes
JINJA_OPTIONS = {"trim_blocks": True, "lstrip_blocks": True, "keep_trailing_newline": True}

if TYPE_CHECKING:
    import jinja2


@cache
def _env() -> jinja2.Environment:
    # jinja2 is loaded on first render only: verify and doctor parse, they never render
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("labctl", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=JINJA_OPTIONS["trim_blocks"],
        lstrip_blocks=JINJA_OPTIONS["lstrip_blocks"],
        keep_trailing_newline=JINJA_OPTIONS["keep_trailing_newline"],
    )


@dataclass(frozen=True)
class CheckScript:
    """The health-check script as it will be installed on a node."""

    name: str
    path: str
    content: bytes


@dataclass(frozen=True)
class RenderedNode:
    """Everything provisioning writes to one node."""

    node: Node
    conf: str
    check: CheckScript | None


def router_id(node_name: str) -> str:
    return node_name.replace("-", "_")


def instance_name(pair_name: str) -> str:
    return f"VI_{pair_name}"


def check_name(script_file: str) -> str:
    stem = Path(script_file).stem
    stem = re.sub(r"^(check|chk)[_-]?", "", stem) or "check"
    return "chk_" + re.sub(r"[^A-Za-z0-9_]", "_", stem)


def render_node(
    profile: Profile,
    pair_name: str,
    role: Role,
    *,
    interface: str | None = None,
    mask_secrets: bool = True,
) -> RenderedNode:
    """Render one node's keepalived.conf (and its check script).

    Args:
        profile: the validated profile.
        pair_name: key of [pairs].
        role: "primary" or "standby".
        interface: the VRRP interface; defaults to the profile's, or a placeholder when neither
            is known (provisioning always passes the detected one).
        mask_secrets: replace auth_pass with a mask; only the file written to a machine
            carries the real password.
    """
    pair = profile.pair(pair_name)
    node = profile.nodes(pair_name)[0 if role == "primary" else 1]
    check = None
    if pair.check is not None:
        script_path = profile.base_dir / pair.check.script
        check = CheckScript(
            name=check_name(pair.check.script),
            path=f"{KEEPALIVED_DIR}/{pair.check.script}",
            content=script_path.read_bytes() if script_path.is_file() else b"",
        )
    auth_pass = MASK if mask_secrets else profile.auth_pass(pair_name)
    context = template_context(profile, pair_name, role)
    context["interface"] = interface or pair.interface or INTERFACE_PLACEHOLDER
    conf = render_template(context | {"auth_pass": auth_pass})
    return RenderedNode(node=node, conf=conf, check=check)


TEMPLATE = "keepalived.conf.j2"
# the template's variables that are not in template_context(): known only on the machine
# (interface, when the profile does not set it) or secret
RUNTIME_VARIABLES = ("interface", "auth_pass")


def template_source() -> bytes:
    """The template file itself, byte for byte (``labctl export ansible`` ships it)."""
    env = _env()
    source = env.loader.get_source(env, TEMPLATE)[0] if env.loader else ""
    return source.encode()


def template_context(profile: Profile, pair_name: str, role: Role) -> dict[str, Any]:
    """Every variable of keepalived.conf.j2 for one node, except RUNTIME_VARIABLES.

    Values are plain str/int/bool/list/dict/None, so another renderer (Ansible's template
    module) given the same values and the same Jinja2 options writes the same bytes.
    """
    pair = profile.pair(pair_name)
    primary, standby = profile.nodes(pair_name)
    node, peer = (primary, standby) if role == "primary" else (standby, primary)
    check = pair.check
    return {
        "lab": profile.lab.name,
        "node": node.name,
        "role": role,
        "pair": pair_name,
        "router_id": router_id(node.name),
        "script_user": SCRIPT_USER,
        "check": None
        if check is None
        else {
            "name": check_name(check.script),
            "path": f"{KEEPALIVED_DIR}/{check.script}",
            "interval": check.interval,
            "weight": check.weight,
            "fall": check.fall,
            "rise": check.rise,
        },
        "instance": instance_name(pair_name),
        # nopreempt only works when both nodes start as BACKUP
        "state": "MASTER" if role == "primary" and pair.preempt else "BACKUP",
        "vrid": pair.vrid,
        "priority": pair.priority.primary if role == "primary" else pair.priority.standby,
        "advert_int": advert_int_text(pair.advert_int),
        "vrrp_version": pair.vrrp_version,
        "preempt": pair.preempt,
        "unicast": pair.unicast,
        "self_ip": node.ip,
        "peer_ip": peer.ip,
        "vips": list(pair.vip),
    }


def render_template(context: dict[str, Any]) -> str:
    """keepalived.conf.j2 rendered with labctl's Jinja2 options (see JINJA_OPTIONS)."""
    return _env().get_template(TEMPLATE).render(**context)


def advert_int_text(seconds: float) -> str:
    """advert_int as keepalived reads it: ``1`` for whole seconds, ``0.1`` for VRRPv3 fractions."""
    return f"{seconds:.2f}".rstrip("0").rstrip(".")


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in text (longest first, so prefixes do not leak)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


@dataclass(frozen=True)
class IfAddr:
    """One line of `ip -o addr`: an address on an interface."""

    ifname: str
    interface: ipaddress.IPv4Interface


_IP_O_ADDR = re.compile(r"^\d+:\s+(?P<ifname>[^\s:@]+)(?:@\S+)?\s+inet\s+(?P<cidr>[\d.]+/\d+)")


def parse_ip_addr(output: str) -> list[IfAddr]:
    """The IPv4 addresses in the output of `ip -o addr` (or `ip -o -4 addr show`)."""
    found = []
    for line in output.splitlines():
        match = _IP_O_ADDR.match(line.strip())
        if match:
            found.append(IfAddr(match["ifname"], ipaddress.IPv4Interface(match["cidr"])))
    return found


def holds(addrs: Iterable[IfAddr], vip: str) -> bool:
    """True when the address list carries the VIP's IP (on any interface, any prefix)."""
    ip = ipaddress.IPv4Interface(vip).ip
    return any(a.interface.ip == ip for a in addrs)


def interface_for(addrs: Iterable[IfAddr], address: str) -> str | None:
    """The interface that carries a machine's own address (for interface detection)."""
    ip = ipaddress.IPv4Interface(address).ip
    for a in addrs:
        if a.interface.ip == ip:
            return a.ifname
    return None
