"""Fixtures for lab tests: real Debian guests booted with systemd-nspawn on a private bridge.

A missing prerequisite (not root, no systemd-nspawn/debootstrap/nft/ip/unshare/nsenter)
FAILS the test; it never skips. Everything a run creates is removed at the end, also when
tests fail: machines (nspawn processes, their mount namespaces and veths), nft tables, the
bridge, freezer cgroups and the temporary LABCTL_HOME.

Fixtures
--------

``lab_env`` (session) -> :class:`LabEnv`
    Checks prerequisites, picks a bridge (``lt<pid%10000>``) and a /24 unused on this host
    (``10.250.X.0/24``, held with a lock under /run/labctl-tests so parallel runs differ),
    sets ``LABCTL_HOME`` to a temp dir, keeps the base image in a persistent cache
    (``$LABCTL_IMAGES``, default ``/var/cache/labctl/images``: built once per host, reused
    across runs, concurrent builds serialised by a lock) and builds it if needed.
    ``lab_env.address()`` hands out unused host addresses (``"10.250.X.N/24"``) and
    ``lab_env.vrid()`` unused VRIDs; every profile of the run shares the bridge, so use them.

``make_profile`` (function) -> ``(pairs=1, *, names=None, pair_extra=None, toml_extra="",
check=True, ssh_user="root", lab_name=None) -> Profile``
    Writes a profile TOML for the run's bridge/subnet into a fresh temp dir, next to a copy
    of ``profiles/check_heartbeat.sh``, and returns the loaded Profile (``profile.path`` is
    the file; pass it to the CLI with ``-p``). ``names`` = list of (primary, standby) names
    (default ``("prod-<i>", "prod-<i>-standby")``); pairs are named ``p<i>`` with
    ``interface = "host0"``, one VIP each, priorities 101/100, ``auth_pass = "labtest"``,
    ``advert_int = 1`` and (``check=True``) the heartbeat check. ``pair_extra`` overrides
    keys of every pair table; ``toml_extra`` is appended verbatim.

``lab_machines`` (function) -> ``(profile, *, production=None, standbys=None,
linked=True) -> Lab``
    Brings up production machines from the image (``ops.lab.up``; default: all of the
    profile's) and creates standbys by cloning (``ops.clone.clone``; default: every pair's),
    all booted with SSH answering. Destroys the profile's lab afterwards.

``shared_pair`` (session) -> :class:`LabPair`
    One booted pair (production + linked-clone standby) for tests that only read. Do not
    stop, pause, reconfigure or install anything on it.

``fresh_pair`` (function) -> :class:`LabPair`
    A booted pair of its own, for tests that break things; destroyed afterwards.

For module- or session-scoped machines of your own, call the plain functions
``write_profile(lab_env, directory, pairs, ...)`` and ``bring_up(profile, ...)`` and
``labctl.ops.lab.destroy(profile, NspawnHypervisor(profile))`` when done (see
tests/lab/test_nspawn_faults.py's ``fault_pair``); every profile written through
``write_profile`` is also swept at the end of the session. tests/contract reaches
``lab_env`` the same way (tests/contract/backends_nspawn.py).

:class:`Lab` gives ``profile``, ``hv`` (the NspawnHypervisor), ``key`` (lab SSH private
key), ``known_hosts`` (trusted host keys, bare IPs), ``ip(name)``, ``exec(name, argv)``
(side channel, no network), ``ssh(name, command)`` (OpenSSH client with the lab key and
strict host-key checking; returns CompletedProcess) and ``ssh_argv(name)``.
:class:`LabPair` adds ``pair`` (the pair name) and ``primary``/``standby``
(:class:`labctl.profile.Node`).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from labctl import paths
from labctl import profile as profile_mod
from labctl.cli import run as run_labctl
from labctl.hypervisor import ExecResult
from labctl.hypervisor.nspawn import NspawnHypervisor
from labctl.hypervisor.nspawn_image import ensure_image
from labctl.ops import clone as clone_ops
from labctl.ops import lab as lab_ops
from labctl.profile import Node, Profile

REPO = Path(__file__).resolve().parents[2]
REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "nft", "ip", "unshare", "nsenter", "ssh-keygen")
DEFAULT_IMAGES = "/var/cache/labctl/images"
LOCK_DIR = Path("/run/labctl-tests")


@dataclass
class LabEnv:
    """The run's lab network and data directories (see the module docstring)."""

    bridge: str
    network: ipaddress.IPv4Network
    home: Path
    images: Path
    workdir: Path
    _hosts: Iterator[int] = field(default_factory=lambda: itertools.count(10))
    _vrids: Iterator[int] = field(default_factory=lambda: itertools.count(10))
    _labs: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    labs: list[Profile] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def prefix(self) -> int:
        return self.network.prefixlen

    def address(self) -> str:
        """An unused host address of the run's subnet, with prefix (``10.250.X.N/24``)."""
        n = next(self._hosts)
        if n >= self.network.num_addresses - 1:
            raise RuntimeError("the test subnet ran out of addresses")
        return f"{self.network.network_address + n}/{self.prefix}"

    def vrid(self) -> int:
        """A VRID no other pair of this run uses (all share one segment)."""
        return next(self._vrids)

    def lab_name(self) -> str:
        return f"t{os.getpid() % 100000}-{next(self._labs)}"


@dataclass
class Lab:
    """Machines brought up by ``lab_machines`` (see the module docstring)."""

    profile: Profile
    hv: NspawnHypervisor

    @property
    def key(self) -> Path:
        return paths.lab_key_path(self.profile.lab.name)

    @property
    def known_hosts(self) -> Path:
        return paths.known_hosts_path(self.profile.lab.name)

    def ip(self, name: str) -> str:
        for node, address, _role in self.profile.all_nodes():
            if node == name:
                return str(profile_mod.host_ip(address))
        raise KeyError(name)

    def exec(self, name: str, argv: Sequence[str], timeout: float = 60.0) -> ExecResult:
        return self.hv.exec_in_guest(name, argv, timeout=timeout)

    def ssh_argv(self, name: str) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(self.profile.ssh.port),
            f"{self.profile.ssh.user}@{self.ip(name)}",
        ]

    def ssh(
        self, name: str, command: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_argv(name), command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@dataclass
class LabPair(Lab):
    """A booted production machine and its standby."""

    pair: str = ""

    @property
    def primary(self) -> Node:
        return self.profile.nodes(self.pair)[0]

    @property
    def standby(self) -> Node:
        return self.profile.nodes(self.pair)[1]


class ProfileFactory(Protocol):
    def __call__(
        self,
        pairs: int = 1,
        *,
        names: Sequence[tuple[str, str]] | None = None,
        pair_extra: Mapping[str, Any] | None = None,
        toml_extra: str = "",
        check: bool = True,
        ssh_user: str = "root",
        lab_name: str | None = None,
    ) -> Profile: ...


class MachinesFactory(Protocol):
    def __call__(
        self,
        profile: Profile,
        *,
        production: Sequence[str] | None = None,
        standbys: Sequence[str] | None = None,
        linked: bool = True,
    ) -> Lab: ...


# -- prerequisites, subnet and cleanup -------------------------------------------------------


def _check_prerequisites() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("lab tests need root")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        problems.append(
            f"missing {', '.join(missing)} (apt-get install systemd-container debootstrap "
            "nftables iproute2 util-linux openssh-client)"
        )
    if problems:
        pytest.fail("lab prerequisites: " + "; ".join(problems), pytrace=False)


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        or "[]"
    )
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    addrs = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True
        ).stdout
        or "[]"
    )
    for link in addrs:
        for a in link.get("addr_info", []):
            used.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return used


@contextlib.contextmanager
def _allocate_subnet(only: int | None = None) -> Iterator[ipaddress.IPv4Network]:
    """A 10.250.X.0/24 that no route or address on this host touches, locked for the run.

    ``only``: that X and no other (waiting for another run that holds it), for a tier whose
    cached machines keep their addresses (the real-VM tier's saved production VM)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    used = _used_networks()
    for x in range(10, 250) if only is None else (only,):
        net = ipaddress.IPv4Network(f"10.250.{x}.0/24")
        if any(net.overlaps(u) for u in used):
            continue
        lock = open(LOCK_DIR / f"subnet-{x}.lock", "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if only is None else 0))
        except BlockingIOError:
            lock.close()
            continue
        try:
            yield net
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            lock.close()
        return
    if only is not None:
        pytest.fail(f"10.250.{only}.0/24 (the lab tests' fixed subnet) is used by a route or "
                    "address on this host", pytrace=False)  # fmt: skip
    pytest.fail("no free 10.250.X.0/24 subnet for the lab tests", pytrace=False)


def _pick_bridge() -> str:
    base = os.getpid() % 10000
    for n in range(base, base + 10000):
        name = f"lt{n % 100000}"
        if not Path(f"/sys/class/net/{name}").exists():
            return name
    raise RuntimeError("no free bridge name")


def _sweep(env: LabEnv) -> None:
    """Remove whatever a run left behind, whatever state its tests ended in."""
    for prof in env.labs:
        with contextlib.suppress(Exception):
            lab_ops.destroy(prof, NspawnHypervisor(prof))
    home = str(env.home)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "systemd-nspawn" in cmdline and home in cmdline:
                os.kill(int(proc.name), signal.SIGKILL)
    for prof in env.labs:
        hv = NspawnHypervisor(prof)
        subprocess.run(["nft", "delete", "table", "bridge", hv.table], capture_output=True)
        for name, _address, _role in prof.all_nodes():
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/cgroup/freezer/labctl-{hv.unit(name)}").rmdir()
    subprocess.run(["ip", "link", "del", "dev", env.bridge], capture_output=True)
    shutil.rmtree(env.workdir, ignore_errors=True)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lab_env() -> Iterator[LabEnv]:
    _check_prerequisites()
    images = Path(os.environ.get("LABCTL_IMAGES") or DEFAULT_IMAGES)
    workdir = Path(tempfile.mkdtemp(prefix="labctl-labtests-"))
    with _allocate_subnet() as network, pytest.MonkeyPatch.context() as mp:
        env = LabEnv(
            bridge=_pick_bridge(),
            network=network,
            home=workdir / "home",
            images=images,
            workdir=workdir,
        )
        mp.setenv("LABCTL_HOME", str(env.home))
        mp.setenv("LABCTL_IMAGES", str(images))
        try:
            ensure_image("bookworm")
            yield env
        finally:
            _sweep(env)


@pytest.fixture
def make_profile(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> ProfileFactory:
    def factory(
        pairs: int = 1,
        *,
        names: Sequence[tuple[str, str]] | None = None,
        pair_extra: Mapping[str, Any] | None = None,
        toml_extra: str = "",
        check: bool = True,
        ssh_user: str = "root",
        lab_name: str | None = None,
    ) -> Profile:
        return write_profile(
            lab_env,
            tmp_path_factory.mktemp("profile"),
            pairs,
            names=names,
            pair_extra=pair_extra,
            toml_extra=toml_extra,
            check=check,
            ssh_user=ssh_user,
            lab_name=lab_name,
        )

    return factory


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_profile(
    env: LabEnv,
    directory: Path,
    pairs: int = 1,
    *,
    names: Sequence[tuple[str, str]] | None = None,
    pair_extra: Mapping[str, Any] | None = None,
    toml_extra: str = "",
    check: bool = True,
    ssh_user: str = "root",
    lab_name: str | None = None,
) -> Profile:
    """Write a profile for the run's bridge and subnet into ``directory`` and load it."""
    names = list(names or [(f"prod-{i}", f"prod-{i}-standby") for i in range(1, pairs + 1)])
    shutil.copy(REPO / "profiles" / "check_heartbeat.sh", directory / "check_heartbeat.sh")
    lines = [
        "[lab]",
        f'name = "{lab_name or env.lab_name()}"',
        'backend = "nspawn"',
        "",
        "[lab.nspawn]",
        f'bridge = "{env.bridge}"',
        f'subnet = "{env.network}"',
        f'gateway = "{env.gateway}"',
        'image = "bookworm"',
        "",
        "[ssh]",
        f'user = "{ssh_user}"',
        "",
        "[timeouts]",
        "boot = 60",
        "",
    ]
    pair_tables = []
    for i, (primary, standby) in enumerate(names, start=1):
        lines += [f"[machines.{primary}]", f'address = "{env.address()}"', ""]
        table: dict[str, Any] = {
            "primary": primary,
            "standby": standby,
            "standby_address": env.address(),
            "interface": "host0",
            "vrid": env.vrid(),
            "vip": [env.address()],
            "priority": {"primary": 101, "standby": 100},
            "advert_int": 1,
            "auth_pass": "labtest",
        }
        table.update(pair_extra or {})
        pair_tables.append((f"p{i}", table))
    for pname, table in pair_tables:
        lines.append(f"[pairs.{pname}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        if check:
            lines += [
                f"[pairs.{pname}.check]",
                'script = "check_heartbeat.sh"',
                "interval = 2",
                "weight = 2",
            ]
        lines.append("")
    path = directory / "labctl.toml"
    path.write_text("\n".join(lines) + "\n" + toml_extra)
    prof = profile_mod.load(str(path))
    env.labs.append(prof)
    return prof


def bring_up(
    profile: Profile,
    *,
    production: Sequence[str] | None = None,
    standbys: Sequence[str] | None = None,
    linked: bool = True,
) -> Lab:
    """Create and boot production machines, then clone their standbys (SSH answering)."""
    hv = NspawnHypervisor(profile)
    prods = list(production) if production is not None else list(profile.machines)
    if prods:
        lab_ops.up(profile, hv, prods)
    wanted = (
        list(standbys)
        if standbys is not None
        else [p.standby for p in profile.pairs.values() if p.primary in prods]
    )
    for pair in profile.pairs.values():
        if pair.standby in wanted:
            clone_ops.clone(profile, hv, pair.primary, linked=linked)
    return Lab(profile, hv)


@pytest.fixture
def lab_machines(lab_env: LabEnv) -> Iterator[MachinesFactory]:
    made: list[Profile] = []

    def factory(
        profile: Profile,
        *,
        production: Sequence[str] | None = None,
        standbys: Sequence[str] | None = None,
        linked: bool = True,
    ) -> Lab:
        made.append(profile)
        return bring_up(profile, production=production, standbys=standbys, linked=linked)

    yield factory
    for prof in made:
        lab_ops.destroy(prof, NspawnHypervisor(prof))


def _pair(env: LabEnv, directory: Path) -> LabPair:
    prof = write_profile(env, directory, 1, names=[("prod-a", "prod-a-standby")])
    lab = bring_up(prof)
    return LabPair(lab.profile, lab.hv, pair="p1")


@pytest.fixture(scope="session")
def shared_pair(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPair]:
    pair = _pair(lab_env, tmp_path_factory.mktemp("shared-pair"))
    yield pair
    lab_ops.destroy(pair.profile, pair.hv)


@pytest.fixture
def fresh_pair(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPair]:
    pair = _pair(lab_env, tmp_path_factory.mktemp("fresh-pair"))
    yield pair
    lab_ops.destroy(pair.profile, pair.hv)


@pytest.fixture(scope="session")
def checks_pair(lab_env: LabEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPair]:
    """One pair provisioned by `labctl provision pair`, shared by the verify, failover and doctor
    lab tests (see tests/lab/checks_pair.py); destroyed at the end of the session."""
    prof = write_profile(
        lab_env, tmp_path_factory.mktemp("checks-pair"), 1, names=[("chk-a", "chk-a-standby")]
    )
    lab = bring_up(prof)
    pair = LabPair(lab.profile, lab.hv, pair="p1")
    try:
        code = run_labctl(["-p", str(prof.path), "provision", "pair", "p1"])
        assert code == 0, "labctl provision pair failed on a fresh pair"
        yield pair
    finally:
        lab_ops.destroy(pair.profile, pair.hv)
