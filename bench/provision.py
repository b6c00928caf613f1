"""Benchmark `labctl provision pair` against an equivalent, tuned Ansible playbook.

Everything is measured side by side in one run on the same fresh lab guests (systemd-nspawn,
a private bridge and subnet of its own), and the figures are medians over --trials:

  * fresh: keepalived not installed, no script user, no /etc/keepalived (the guests are reset
    to that state through the hypervisor's side channel before every fresh trial, untimed);
  * no change: the same command again right after, with everything already right;
  * configure only: the package present, everything labctl configures removed (the cost of
    the work around apt, which both tools pay the same);
  * labctl on N pairs at once vs on one pair (fresh and no change).

The playbook is the one `labctl export ansible` writes (it writes the same bytes as labctl:
tests/lab/test_export_ansible.py), run with the lab tests' runner settings: pipelining,
ControlPersist, no fact gathering, a fixed interpreter, forks >= hosts. ansible-core and
python3 + python3-apt for the guests come from the tests' installer (tests/lab/guest_tools.py:
ansible-core in its own venv, .debs fetched with apt's own helper as the guests have no route
out). The playbook has no all-or-nothing commit across a pair: labctl does more work, not less.

Usage (root, from the repository root):
  sudo .venv/bin/python -m bench.provision [--trials 3] [--pairs 8] [--no-ansible]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/labctl/bench")
IMAGES = Path(os.environ.get("LABCTL_IMAGES") or "/var/cache/labctl/images")
AUTH_PASS = "bench123"

# back to a fresh machine: no keepalived package, no script user, no /etc/keepalived
RESET = r"""
systemctl stop keepalived >/dev/null 2>&1
systemctl disable keepalived >/dev/null 2>&1
export DEBIAN_FRONTEND=noninteractive
apt-get purge -y -q keepalived >/dev/null 2>&1
apt-get autoremove --purge -y -q >/dev/null 2>&1
userdel keepalived_script >/dev/null 2>&1
rm -rf /etc/keepalived
! command -v keepalived >/dev/null
"""

# package kept, everything labctl configures removed: the cost of the work around apt
RESET_CONFIG = r"""
systemctl stop keepalived >/dev/null 2>&1
systemctl disable keepalived >/dev/null 2>&1
userdel keepalived_script >/dev/null 2>&1
rm -rf /etc/keepalived
command -v keepalived >/dev/null
"""

def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    nets = []
    for link in json.loads(out.stdout or "[]"):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    routes = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                            capture_output=True, text=True, check=True)
    for r in json.loads(routes.stdout or "[]"):
        with contextlib.suppress(ValueError, KeyError):
            if r["dst"] != "default":
                nets.append(ipaddress.IPv4Network(r["dst"], strict=False))
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for x in range(10 + os.getpid() % 200, 250):
        net = ipaddress.IPv4Network(f"10.251.{x}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise SystemExit("bench: no free 10.251.X.0/24 subnet")


def write_profile(directory: Path, pairs: int, net: ipaddress.IPv4Network, bridge: str) -> Path:
    hosts = iter(net.hosts())
    gateway = next(hosts)
    lines = [
        "[lab]", f'name = "bench-{os.getpid()}"', 'backend = "nspawn"', "",
        "[lab.nspawn]", f'bridge = "{bridge}"', f'subnet = "{net}"', f'gateway = "{gateway}"',
        'image = "bookworm"', "", "[timeouts]", "boot = 180", "",
    ]
    tables = []
    for i in range(1, pairs + 1):
        primary, standby, vip = next(hosts), next(hosts), next(hosts)
        lines += [f"[machines.bp{i}]", f'address = "{primary}/{net.prefixlen}"', ""]
        tables += [
            f"[pairs.p{i}]", f'primary = "bp{i}"', f'standby = "bp{i}-standby"',
            f'standby_address = "{standby}/{net.prefixlen}"', 'interface = "host0"',
            f"vrid = {100 + i}", f'vip = ["{vip}/{net.prefixlen}"]',
            "priority = { primary = 101, standby = 100 }", "advert_int = 1",
            f'auth_pass = "{AUTH_PASS}"', f"[pairs.p{i}.check]", 'script = "check_heartbeat.sh"',
            "interval = 2", "weight = 2", "",
        ]
    shutil.copy(REPO / "profiles" / "check_heartbeat.sh", directory / "check_heartbeat.sh")
    path = directory / "bench.toml"
    path.write_text("\n".join(lines + tables) + "\n")
    return path


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed ({result.returncode}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from labctl import profile as profile_mod
        from labctl.hypervisor.nspawn import NspawnHypervisor

        self.args = args
        self.work = work
        net = _free_subnet()
        self.profile_path = write_profile(work, args.pairs, net, f"lb{os.getpid() % 100000}")
        self.profile = profile_mod.load(str(self.profile_path))
        self.hv = NspawnHypervisor(self.profile)
        self.labctl = [str(REPO / ".venv" / "bin" / "labctl"), "-p", str(self.profile_path)]

    def nodes(self, pairs: Sequence[str]) -> list[str]:
        return [n.name for p in pairs for n in self.profile.nodes(p)]

    def up(self) -> None:
        from labctl.ops import clone as clone_ops
        from labctl.ops import lab as lab_ops

        say(f"bench: booting {2 * self.args.pairs} guests on {self.profile.lab.nspawn.bridge}")
        lab_ops.up(self.profile, self.hv, progress=lambda line: None)
        for pair in self.profile.pairs.values():
            clone_ops.clone(self.profile, self.hv, pair.primary, linked=True)

    def destroy(self) -> None:
        from labctl.ops import lab as lab_ops

        with contextlib.suppress(Exception):
            lab_ops.destroy(self.profile, self.hv)
        # destroy keeps a bridge that still had a port a moment ago: the bench made it, so
        # it goes once empty
        bridge = self.profile.lab.nspawn.bridge
        ports = Path(f"/sys/class/net/{bridge}/brif")
        if ports.is_dir() and not any(ports.iterdir()):
            subprocess.run(["ip", "link", "del", "dev", bridge], capture_output=True)

    def exec(self, name: str, script: str, timeout: float = 300) -> str:
        result = self.hv.exec_in_guest(name, ["sh", "-c", script], timeout=timeout)
        if result.exit_code != 0:
            raise SystemExit(f"bench: {name}: {script.strip()[:60]}... exited "
                             f"{result.exit_code}: {result.stderr[-800:]}")
        return str(result.stdout)

    def reset(self, names: Sequence[str], script: str = RESET) -> None:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(lambda n: self.exec(n, script), names))

    def check_active(self, names: Sequence[str]) -> None:
        for name in names:
            state = self.exec(name, "systemctl is-active keepalived || true").strip()
            if state != "active":
                raise SystemExit(f"bench: keepalived is {state} on {name} after a run")

    # -- Ansible ---------------------------------------------------------------------------

    def python_on_guests(self, names: Sequence[str]) -> None:
        """python3 + python3-apt for Ansible's modules (the tests' installer, shared)."""
        from tests.lab.guest_tools import install_in_guests

        say(f"bench: python3 for Ansible into {len(names)} guests")
        install_in_guests(self.profile, self.hv, names, ["python3", "python3-apt"])

    def _address(self, name: str) -> str:
        for node, address, _ in self.profile.all_nodes():
            if node == name:
                return address
        raise KeyError(name)

    def ansible_project(self, pairs: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """The playbook `labctl export ansible` writes, run with the tests' tuned runner env."""
        from tests.lab.guest_tools import ansible_env, ansible_venv

        project = self.work / "ansible"
        timed([*self.labctl, "export", "ansible", str(project), *pairs])
        venv = ansible_venv()
        env = ansible_env(self.profile, self.work)
        for pair in pairs:  # the password through the environment, as the export asks
            env[f"LABCTL_AUTH_PASS_{pair.upper()}"] = AUTH_PASS
        argv = [str(venv / "bin" / "ansible-playbook"), "-i", str(project / "inventory.yml"),
                str(project / "playbook.yml")]
        return argv, env


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=8, help="pairs for the scaling figure")
    parser.add_argument("--no-ansible", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        say("bench: needs root (systemd-nspawn, bridge)")
        return 4
    work = Path(tempfile.mkdtemp(prefix="labctl-bench-"))
    os.environ["LABCTL_HOME"] = str(work / "home")
    os.environ["LABCTL_IMAGES"] = str(IMAGES)
    sys.path.insert(0, str(REPO))
    bench = Bench(args, work)
    times: dict[str, list[float]] = {}

    def record(key: str, seconds: float) -> None:
        times.setdefault(key, []).append(seconds)
        say(f"bench:   {key:<26} {seconds:7.2f} s")

    try:
        bench.up()
        one = ["p1"]
        all_pairs = list(bench.profile.pairs)
        ansible: tuple[list[str], dict[str, str]] | None = None
        if not args.no_ansible:
            bench.python_on_guests(bench.nodes(one))
            ansible = bench.ansible_project(one)
        for trial in range(1, args.trials + 1):
            say(f"bench: trial {trial}/{args.trials}")
            bench.reset(bench.nodes(one))
            record("labctl fresh, 1 pair", timed([*bench.labctl, "provision", "pair", "p1"]))
            bench.check_active(bench.nodes(one))
            record("labctl no-change, 1 pair", timed([*bench.labctl, "provision", "pair", "p1"]))
            if ansible is not None:
                bench.reset(bench.nodes(one))
                record("ansible fresh, 1 pair", timed(*ansible))
                bench.check_active(bench.nodes(one))
                record("ansible no-change, 1 pair", timed(*ansible))
            bench.reset(bench.nodes(one), RESET_CONFIG)
            record("labctl configure-only, 1 pair",
                   timed([*bench.labctl, "provision", "pair", "p1"]))
            if ansible is not None:
                bench.reset(bench.nodes(one), RESET_CONFIG)
                record("ansible configure-only, 1 pair", timed(*ansible))
            if len(all_pairs) > 1:
                bench.reset(bench.nodes(all_pairs))
                key = f"labctl fresh, {len(all_pairs)} pairs"
                record(key, timed([*bench.labctl, "provision", "pair"]))
                bench.check_active(bench.nodes(all_pairs))
                key = f"labctl no-change, {len(all_pairs)} pairs"
                record(key, timed([*bench.labctl, "provision", "pair"]))
    finally:
        say("bench: tearing the lab down")
        from tests.lab.guest_tools import close_ansible_connections

        close_ansible_connections(work)
        bench.destroy()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmedians over {args.trials} trials (seconds)")
    for key, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {key:<32} {median(values):7.2f}   (runs: {runs})")
    m = {k: median(v) for k, v in times.items()}
    print("\nratios")

    def ratio(label: str, num: str, den: str, target: str) -> None:
        if num in m and den in m:
            print(f"  {label:<48} {m[num] / m[den]:6.2f}x   (target {target})")

    ratio("ansible fresh / labctl fresh", "ansible fresh, 1 pair", "labctl fresh, 1 pair", ">= 6")
    ratio("ansible configure-only / labctl configure-only", "ansible configure-only, 1 pair",
          "labctl configure-only, 1 pair", "(no target; apt excluded)")
    ratio("ansible no-change / labctl no-change", "ansible no-change, 1 pair",
          "labctl no-change, 1 pair", ">= 8")
    n = len(bench.profile.pairs)
    ratio(f"labctl fresh {n} pairs / 1 pair", f"labctl fresh, {n} pairs",
          "labctl fresh, 1 pair", "<= 2")
    ratio(f"labctl no-change {n} pairs / 1 pair", f"labctl no-change, {n} pairs",
          "labctl no-change, 1 pair", "<= 2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
