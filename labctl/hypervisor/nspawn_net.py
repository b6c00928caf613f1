"""The nspawn lab's network on the host: one Linux bridge and one nftables bridge table.

The bridge carries the lab's gateway address so the control host reaches guests; nothing is
routed or NATed. The table ``bridge labctl_<id>`` holds two sets: ``down`` (veth ports whose
cable is pulled: every frame from or to them is dropped, also before the port exists, so a
machine can start disconnected) and ``vrrp_block`` (port pairs between which IP protocol 112 is
dropped, for partition drills). Interface names are matched as strings, so rules apply to a
port from the moment nspawn creates it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Mapping, Sequence

from labctl.errors import OperationFailed


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a host tool; a failure raises OperationFailed with its stderr."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationFailed(f"{argv[0]} failed: {exc}") from exc
    if check and proc.returncode != 0:
        raise OperationFailed(
            f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
        )
    return proc.stdout


def link_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["ip", "link", "show", "dev", name], capture_output=True, check=False
        ).returncode
        == 0
    )


def ensure_bridge(bridge: str, gateway: str, subnet: str) -> None:
    """Create the bridge with the gateway address if missing; bring it up."""
    prefix = ipaddress.IPv4Network(subnet).prefixlen
    gw = f"{ipaddress.IPv4Interface(gateway).ip}/{prefix}"
    if not link_exists(bridge):
        run(["ip", "link", "add", "name", bridge, "type", "bridge"])
    addrs = json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", bridge]) or "[]")
    have = {f"{a['local']}/{a['prefixlen']}" for entry in addrs for a in entry.get("addr_info", [])}
    if gw not in have:
        run(["ip", "addr", "add", gw, "dev", bridge])
    run(["ip", "link", "set", "dev", bridge, "up"])


def delete_bridge(bridge: str) -> None:
    if link_exists(bridge):
        run(["ip", "link", "del", "dev", bridge])


def delete_port(port: str) -> None:
    """Delete a stopped machine's host-side veth if it is still there.

    The kernel removes it with the guest's network namespace, but that namespace can outlive
    the guest's processes for minutes (orphaned TCP sockets finishing their close); deleting
    the host side removes the pair at once. A veth that vanished meanwhile is not an error.
    """
    if link_exists(port):
        run(["ip", "link", "del", "dev", port], check=False)


def set_port(port: str, up: bool) -> None:
    """Bring a host-side veth up or down, when it exists."""
    if link_exists(port):
        run(["ip", "link", "set", "dev", port, "up" if up else "down"])


def _table_exists(table: str) -> bool:
    return (
        subprocess.run(
            ["nft", "list", "table", "bridge", table], capture_output=True, check=False
        ).returncode
        == 0
    )


def ensure_table(table: str) -> None:
    """Create the lab's bridge table (atomically, once)."""
    if _table_exists(table):
        return
    run(
        ["nft", "-f", "-"],
        input=f"""
table bridge {table} {{
  set down {{ type ifname; }}
  set vrrp_block {{ type ifname . ifname; }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname @down drop
    oifname @down drop
    iifname . oifname @vrrp_block ip protocol 112 drop
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname @down drop
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname @down drop
  }}
}}
""",
    )


def delete_table(table: str) -> None:
    _known_tables.discard(table)
    if _table_exists(table):
        run(["nft", "delete", "table", "bridge", table])


def set_elements(table: str, set_name: str) -> set[str]:
    """Elements of one of the table's sets, as nft prints them (``a`` or ``a . b``)."""
    if not _table_exists(table):
        return set()
    doc = json.loads(run(["nft", "-j", "list", "set", "bridge", table, set_name]))
    out: set[str] = set()
    for item in doc.get("nftables", []):
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "concat" in elem:
                out.add(" . ".join(str(x) for x in elem["concat"]))
            else:
                out.add(str(elem))
    return out


def _quote(element: str) -> str:
    return " . ".join(f'"{part.strip()}"' for part in element.split(" . "))


# tables this process has seen exist: adding to them is one nft call, not two (a drill's
# freeze, link and partition are timed from the moment they start)
_known_tables: set[str] = set()


def add_element(table: str, set_name: str, *elements: str) -> None:
    """Add elements in one nft call (``add`` is idempotent), creating the table if needed."""
    quoted = ", ".join(_quote(e) for e in elements)
    argv = ["nft", "add", "element", "bridge", table, set_name, f"{{ {quoted} }}"]
    if table in _known_tables:
        try:
            run(argv)
            return
        except OperationFailed:  # deleted meanwhile (teardown): create it again below
            _known_tables.discard(table)
    ensure_table(table)
    _known_tables.add(table)
    run(argv)


def remove_element(table: str, set_name: str, element: str) -> None:
    if element in set_elements(table, set_name):
        run(["nft", "delete", "element", "bridge", table, set_name, f"{{ {_quote(element)} }}"])
