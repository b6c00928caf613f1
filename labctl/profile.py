"""The lab profile: TOML in, frozen and fully checked pydantic models out.

Every problem is reported at once, each prefixed with the key path it concerns
(``pairs.back.vrid: must be 1..255``), before any machine is touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from labctl.errors import ProfileError, UnknownName

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_PAIR_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
AUTH_PASS_MAX = 8
# keepalived 2.2.7 (vrrp_parser.c) reads advert_int as a decimal of 0.01..255 s; then
# (vrrp.c) VRRPv2 rounds it to whole seconds and VRRPv3 to centiseconds, capped at 40.95 s
# (a 12-bit field of centiseconds), each with only a log line: labctl refuses those values.
ADVERT_INT_MIN = 0.01
ADVERT_INT_MAX = 255
ADVERT_INT_V3_MAX = 40.95

Role = Literal["primary", "standby"]


def _strict() -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True, strict=True)


def check_hostname(value: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid hostname (letters, digits and '-', at most 63 characters)"
        )
    return value


def _check_address(value: str) -> str:
    """A host address, optionally with its prefix (``192.168.68.80`` or ``192.168.68.80/24``)."""
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None
    if "/" in value and iface.network.prefixlen < 32 and iface.ip == iface.network.network_address:
        raise ValueError(f"{value!r} is a network address, not a host address")
    return value


def host_ip(address: str) -> ipaddress.IPv4Address:
    """The bare IP of an address written with or without a prefix."""
    return ipaddress.IPv4Interface(address).ip


class SshSettings(BaseModel):
    """How labctl logs in to every machine of the lab."""

    model_config = _strict()

    user: str = Field("root", description="login user; root or a user with passwordless sudo")
    key: str | None = Field(None, description="private key file; agent and ~/.ssh/config apply")
    port: int = Field(22, description="SSH port")

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("must be 1..65535")
        return value

    @property
    def key_path(self) -> Path | None:
        return Path(self.key).expanduser() if self.key else None


class NspawnSettings(BaseModel):
    """The local lab: systemd-nspawn guests on a Linux bridge."""

    model_config = _strict()

    bridge: str = Field("labctl0", description="Linux bridge the guests are attached to")
    subnet: str = Field("10.249.90.0/24", description="the lab segment, private to this host")
    gateway: str = Field("10.249.90.1", description="the bridge's own address (no routing)")
    image: str = Field("bookworm", description="Debian suite of the base image")

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, value: str) -> str:
        if not _IFNAME.match(value):
            raise ValueError(f"{value!r} is not a valid interface name (at most 15 characters)")
        return value

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 network like 10.249.90.0/24") from None
        return value

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str) -> str:
        return _check_address(value)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)


class VirtualBoxSettings(BaseModel):
    """A VirtualBox lab on this host."""

    model_config = _strict()

    driver: Literal["auto", "vboxmanage", "pyvbox"] = Field(
        "auto",
        description="auto: pyvbox when VirtualBox's Python SDK (vboxapi) and pyvbox import, "
        "else vboxmanage; both work with VirtualBox 6.1 and 7.0-7.2",
    )
    vboxmanage: str = Field("VBoxManage", description="VBoxManage executable")
    nic: int = Field(1, description="the adapter (1-based) that carries the lab network")
    guest_user: str | None = Field(
        None,
        description="guest account for exec-in-guest (guestcontrol); root, as labctl runs "
        "guest commands as root; None = exec-in-guest unavailable",
    )
    guest_password_env: str | None = Field(
        None, description="environment variable holding guest_user's password (never stored)"
    )
    driverless: bool = Field(
        False,
        description="true on a host without VirtualBox's kernel driver whose `vboxmanage "
        "startvm` powers VMs on in driverless mode (VirtualBox's own execution engine, e.g. a "
        "wrapper running `VirtualBoxVM --startvm NAME --driverless`): labctl then does not "
        "require /dev/vboxdrv, and the pyvbox driver starts VMs with `vboxmanage startvm` "
        "(the API's launchVMProcess cannot power on a driverless VM)",
    )

    identity_restart: Literal["reboot", "services"] = Field(
        "reboot",
        description="how a new standby takes on the identity labctl writes through guest "
        "control (its cable still out): reboot = restart the guest, so every service starts "
        "with it; services = set the hostname and restart journald, systemd-networkd and sshd "
        "in place, no second boot (minutes saved where a boot is slow, e.g. a driverless host)",
    )

    @field_validator("guest_password_env")
    @classmethod
    def _password_env(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("nic")
    @classmethod
    def _nic(cls, value: int) -> int:
        if not 1 <= value <= 8:
            raise ValueError("must be 1..8")
        return value


class LabSettings(BaseModel):
    model_config = _strict()

    name: str = Field(description="lab name; tags every machine labctl creates")
    backend: Literal["virtualbox", "nspawn", "ssh"] = Field(
        description="hypervisor backend; ssh = existing machines reached only over SSH"
    )
    nspawn: NspawnSettings = Field(default_factory=lambda: NspawnSettings())
    virtualbox: VirtualBoxSettings = Field(default_factory=lambda: VirtualBoxSettings())

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_hostname(value)


class MachineSpec(BaseModel):
    """A configured production machine."""

    model_config = _strict()

    address: str = Field(description="its IPv4 address, optionally with prefix (10.0.0.5/24)")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_address(value)


class Priorities(BaseModel):
    model_config = _strict()

    primary: int = Field(description="VRRP priority of the production machine, 1..254")
    standby: int = Field(description="VRRP priority of the standby, 1..254, below primary")

    @field_validator("primary", "standby")
    @classmethod
    def _range(cls, value: int) -> int:
        if not 1 <= value <= 254:
            raise ValueError("must be 1..254")
        return value


class CheckSpec(BaseModel):
    """A health check: keepalived's vrrp_script plus track_script."""

    model_config = _strict()

    script: str = Field(description="file next to the profile, pushed to /etc/keepalived/")
    interval: int = Field(2, description="seconds between runs, 1..3600")
    weight: int = Field(2, description="priority change on success/failure, -253..253")
    fall: int = Field(1, description="failures before the check counts as failed, 1..255")
    rise: int = Field(1, description="successes before the check counts as passed, 1..255")

    @field_validator("script")
    @classmethod
    def _script(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain file name next to the profile")
        return value

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: int) -> int:
        if not 1 <= value <= 3600:
            raise ValueError("must be 1..3600")
        return value

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: int) -> int:
        if not -253 <= value <= 253:
            raise ValueError("must be -253..253")
        return value

    @field_validator("fall", "rise")
    @classmethod
    def _count(cls, value: int) -> int:
        if not 1 <= value <= 255:
            raise ValueError("must be 1..255")
        return value


class PairSpec(BaseModel):
    """A production machine and its hot standby sharing virtual IPs through VRRP."""

    model_config = _strict()

    primary: str = Field(description="a key of [machines]")
    standby: str = Field(description="the standby's machine name (created by labctl clone)")
    standby_address: str = Field(description="the standby's own IPv4 address")
    interface: str | None = Field(None, description="VRRP interface; omitted = detected")
    vrid: int = Field(description="virtual_router_id, 1..255, unique per segment")
    vip: list[str] = Field(description="virtual IPs with prefix, e.g. ['192.168.68.89/24']")
    priority: Priorities
    advert_int: float = Field(
        1,
        description="seconds between adverts: whole seconds 1..255 with VRRPv2, "
        "0.01..40.95 in steps of 0.01 with VRRPv3",
    )
    auth_pass: str | None = Field(None, description="PASS authentication, at most 8 characters")
    auth_pass_env: str | None = Field(None, description="environment variable holding auth_pass")
    preempt: bool = Field(True, description="false = nopreempt (both nodes start as BACKUP)")
    unicast: bool = Field(False, description="unicast adverts to the peer (no multicast)")
    vrrp_version: Literal[2, 3] = Field(2, description="VRRP version")
    check: CheckSpec | None = None

    @field_validator("standby")
    @classmethod
    def _standby(cls, value: str) -> str:
        return check_hostname(value)

    @field_validator("standby_address")
    @classmethod
    def _standby_address(cls, value: str) -> str:
        return _check_address(value)

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str | None) -> str | None:
        if value is not None and not _IFNAME.match(value):
            raise ValueError(f"{value!r} is not a valid interface name (at most 15 characters)")
        return value

    @field_validator("vrid")
    @classmethod
    def _vrid(cls, value: int) -> int:
        if not 1 <= value <= 255:
            raise ValueError("must be 1..255")
        return value

    @field_validator("advert_int")
    @classmethod
    def _advert_int(cls, value: float) -> float:
        # keepalived 2.2.7 parses 0.01..255 s; the version-dependent rules (whole seconds for
        # v2, centiseconds up to 40.95 s for v3) are in profile_load.semantic_problems
        if not ADVERT_INT_MIN <= value <= ADVERT_INT_MAX:
            raise ValueError(f"must be {ADVERT_INT_MIN}..{ADVERT_INT_MAX:g} seconds")
        return value

    @field_validator("vip")
    @classmethod
    def _vip(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one virtual IP")
        for vip in value:
            if "/" not in vip:
                raise ValueError(f"{vip!r} needs a prefix length, like {vip}/24")
            try:
                ipaddress.IPv4Interface(vip)
            except ValueError:
                raise ValueError(f"{vip!r} is not an IPv4 address with prefix") from None
        return value

    @field_validator("auth_pass")
    @classmethod
    def _auth_pass(cls, value: str | None) -> str | None:
        if value is not None:
            _check_auth_pass(value)
        return value

    @field_validator("auth_pass_env")
    @classmethod
    def _auth_pass_env(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value


def _check_auth_pass(value: str) -> None:
    # Never echo the secret itself in a message.
    if len(value) > AUTH_PASS_MAX:
        raise ValueError(
            f"{len(value)} characters is too long: keepalived silently truncates it to "
            f"{AUTH_PASS_MAX}; use at most {AUTH_PASS_MAX}"
        )
    if not value or not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError("must be 1..8 printable ASCII characters without spaces")


class Timeouts(BaseModel):
    model_config = _strict()

    connect: float = Field(10.0, description="seconds for one SSH connection attempt")
    boot: float = Field(90.0, description="seconds a starting machine has to answer SSH")
    command: float = Field(300.0, description="seconds one remote command may take")
    guest: float = Field(
        120.0,
        description="seconds a VirtualBox guest-control session (Guest Additions) may take to "
        "open; a loaded or interpreted guest needs minutes",
    )

    check: float | None = Field(
        None,
        description="seconds verify and failover give one node to answer (an SSH login, the "
        "state probe, the VIP's host key); unset: 3 s to log in, 5 s for the probe, 2 s for "
        "the host key, right for guests on this host; an interpreted guest needs a minute",
    )
    stop: float = Field(
        60.0,
        description="seconds a machine labctl restarts has to shut down gracefully before it "
        "is powered off (its disk is synced first)",
    )

    @field_validator("connect", "boot", "command", "guest", "check", "stop", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, float) and not 0 < value <= 86400:
            raise ValueError("must be a number of seconds, 0 < s <= 86400")
        return value


@dataclass(frozen=True)
class Node:
    """One machine of a pair as provisioning and verification see it."""

    pair: str
    name: str
    address: str
    role: Role

    @property
    def ip(self) -> str:
        return str(host_ip(self.address))


class Profile(BaseModel):
    """A whole lab: its backend, how to log in, production machines and their pairs."""

    model_config = _strict()

    lab: LabSettings
    ssh: SshSettings = Field(default_factory=lambda: SshSettings())
    timeouts: Timeouts = Field(default_factory=lambda: Timeouts())
    machines: dict[str, MachineSpec] = Field(description="configured production machines")
    pairs: dict[str, PairSpec] = Field(default_factory=dict, description="hot-standby pairs")

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("machines")
    @classmethod
    def _machines(cls, value: dict[str, MachineSpec]) -> dict[str, MachineSpec]:
        # names are checked with the cross-key rules, so the message names machines.<name>
        if not value:
            raise ValueError("needs at least one machine")
        return value

    @field_validator("pairs")
    @classmethod
    def _pair_names(cls, value: dict[str, PairSpec]) -> dict[str, PairSpec]:
        for name in value:
            if not _PAIR_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid pair name (letters, digits, '_', '-')")
        return value

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    def pair(self, name: str) -> PairSpec:
        try:
            return self.pairs[name]
        except KeyError:
            raise UnknownName("PAIR", name, "a pair", self.lab.name, list(self.pairs)) from None

    def pair_of_primary(self, production: str) -> str:
        """The name of the pair whose primary is ``production`` (UnknownName if none)."""
        for name, pair in self.pairs.items():
            if pair.primary == production:
                return name
        primaries = [p.primary for p in self.pairs.values()]
        raise UnknownName(
            "PRODUCTION", production, "the primary of a pair", self.lab.name, primaries
        )

    def check_machines(self, names: Iterable[str]) -> None:
        """UnknownName for the first name that is not a machine (production or standby)."""
        known = [name for name, _address, _role in self.all_nodes()]
        for name in names:
            if name not in known:
                raise UnknownName("MACHINE", name, "a machine", self.lab.name, known)

    def check_pairs(self, names: Iterable[str]) -> None:
        """UnknownName for the first name that is not a pair."""
        for name in names:
            self.pair(name)

    def nodes(self, pair_name: str) -> tuple[Node, Node]:
        """The (primary, standby) nodes of a pair."""
        pair = self.pair(pair_name)
        primary = Node(pair_name, pair.primary, self.machines[pair.primary].address, "primary")
        standby = Node(pair_name, pair.standby, pair.standby_address, "standby")
        return primary, standby

    def all_nodes(self) -> Iterator[tuple[str, str, str]]:
        """Every machine of the lab as (name, address, role), production machines first."""
        for name, spec in self.machines.items():
            yield name, spec.address, "production"
        for pair in self.pairs.values():
            yield pair.standby, pair.standby_address, "standby"

    def check_script_path(self, pair_name: str) -> Path | None:
        check = self.pair(pair_name).check
        return self.base_dir / check.script if check else None

    def auth_pass(self, pair_name: str) -> str:
        """The pair's VRRP password, read from the environment when auth_pass_env is set."""
        pair = self.pair(pair_name)
        if pair.auth_pass is not None:
            return pair.auth_pass
        assert pair.auth_pass_env is not None  # guaranteed by semantic checks
        value = os.environ.get(pair.auth_pass_env)
        key = f"pairs.{pair_name}.auth_pass_env"
        if value is None:
            raise ProfileError(
                f"{key}: environment variable {pair.auth_pass_env} is not set",
                hint=f"export {pair.auth_pass_env}=... (at most {AUTH_PASS_MAX} characters)",
            )
        try:
            _check_auth_pass(value)
        except ValueError as exc:
            raise ProfileError(f"{key}: value of {pair.auth_pass_env}: {exc}") from None
        return value

    def secrets(self) -> list[str]:
        """Every auth_pass this profile can resolve, for masking output."""
        found = []
        for name in self.pairs:
            with contextlib.suppress(ProfileError):
                found.append(self.auth_pass(name))
        return found


# Loading lives in its own module; re-exported here so callers use labctl.profile.load().
from labctl.profile_load import load, parse, resolve_path, semantic_problems  # noqa: E402

__all__ = [
    "CheckSpec",
    "LabSettings",
    "MachineSpec",
    "Node",
    "NspawnSettings",
    "PairSpec",
    "Priorities",
    "Profile",
    "Role",
    "SshSettings",
    "Timeouts",
    "VirtualBoxSettings",
    "host_ip",
    "load",
    "parse",
    "resolve_path",
    "semantic_problems",
]
