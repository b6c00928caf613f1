#!/usr/bin/env python3
"""Benchmarks of the nspawn lab: figures and ratios measured side by side in one run.

    sudo .venv/bin/python bench/lab_bench.py [--cold] [--repeat N]

Prints: image build (warm; cold with --cold, into a throw-away image cache), production
machine create (overlay + identity), boot to SSH, full clone vs ``cp -a`` of the same tree
(ratio), linked clone, and whole ``labctl clone`` (linked) to SSH. Targets from the issue:
boot to SSH <= 3 s, linked clone <= 0.5 s, full clone within 1.2x of cp -a. Nothing is
asserted; everything created is removed at the end.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labctl.hypervisor.nspawn import NspawnHypervisor
from labctl.hypervisor.nspawn_image import ensure_image
from labctl.ops import clone as clone_ops
from labctl.ops import lab as lab_ops
from labctl.profile import Profile, load


def _free_subnet() -> ipaddress.IPv4Network:
    used = []
    for cmd in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr"]):
        for entry in json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout):
            if entry.get("dst") and entry["dst"] != "default":
                used.append(ipaddress.IPv4Network(entry["dst"], strict=False))
            for a in entry.get("addr_info", []):
                used.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for x in range(249, 10, -1):
        net = ipaddress.IPv4Network(f"10.250.{x}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise SystemExit("no free 10.250.X.0/24")


def _profile(directory: Path) -> Profile:
    net = _free_subnet()
    base = net.network_address
    bridge = f"lb{os.getpid() % 100000}"
    (directory / "check_heartbeat.sh").write_text("#!/bin/sh\nexit 0\n")
    (directory / "lab.toml").write_text(
        f"""
[lab]
name = "bench"
backend = "nspawn"
[lab.nspawn]
bridge = "{bridge}"
subnet = "{net}"
gateway = "{base + 1}"
[machines.prod]
address = "{base + 10}/24"
[pairs.p]
primary = "prod"
standby = "prod-standby"
standby_address = "{base + 20}/24"
vrid = 1
vip = ["{base + 100}/24"]
priority = {{ primary = 101, standby = 100 }}
auth_pass = "bench"
"""
    )
    return load(str(directory / "lab.toml"))


def timed(fn: Callable[[], object]) -> float:
    os.sync()  # start each figure with no dirty pages of the previous one being written back
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextmanager
def lab_home() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="labctl-bench-"))
    old = os.environ.get("LABCTL_HOME")
    os.environ["LABCTL_HOME"] = str(work / "home")
    try:
        yield work
    finally:
        if old is None:
            os.environ.pop("LABCTL_HOME", None)
        else:
            os.environ["LABCTL_HOME"] = old
        shutil.rmtree(work, ignore_errors=True)


def row(label: str, seconds: float, note: str = "") -> None:
    print(f"{label:<44} {seconds:8.3f} s  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also time a cold image build")
    parser.add_argument("--repeat", type=int, default=3, help="boot/clone repetitions")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench needs root (systemd-nspawn, bridges)")
    os.environ.setdefault("LABCTL_IMAGES", "/var/cache/labctl/images")

    print(f"nspawn lab benchmarks ({os.cpu_count()} CPUs), repeat={args.repeat}")
    if args.cold:
        cold_cache = Path(tempfile.mkdtemp(prefix="labctl-bench-images-"))
        saved = os.environ["LABCTL_IMAGES"]
        os.environ["LABCTL_IMAGES"] = str(cold_cache)
        try:
            row("image build, cold", timed(lambda: ensure_image("bookworm")))
        finally:
            os.environ["LABCTL_IMAGES"] = saved
            shutil.rmtree(cold_cache, ignore_errors=True)
    ensure_image("bookworm")
    row("image build, warm (already built)", timed(lambda: ensure_image("bookworm")))

    with lab_home() as work:
        prof = _profile(work)
        hv = NspawnHypervisor(prof)
        prod = prof.nodes("p")[0]
        standby = prof.nodes("p")[1]
        try:
            image = ensure_image("bookworm").image

            def create() -> None:
                hv.create(prod.name, image, address=prod.address)
                lab_ops.apply_identity(hv, prof, prod.name, prod.address)

            row("production machine create (+identity)", timed(create))

            boots = []
            for _ in range(args.repeat):

                def boot() -> None:
                    hv.start(prod.name)
                    lab_ops.wait_for_ssh(prod.name, prod.address, port=22, deadline=60)

                boots.append(timed(boot))
                hv.stop(prod.name, hard=True)
            row("boot to SSH (median)", statistics.median(boots), "target <= 3 s")
            hv.start(prod.name)
            lab_ops.wait_for_ssh(prod.name, prod.address, port=22, deadline=60)

            fulls, copies, linkeds = [], [], []
            for rep in range(args.repeat):
                # baseline: cp -a of the tree the clone copies (the image plus the machine's
                # own small layer) from the same place; the order alternates so that neither
                # side always finds the other's reads in the page cache
                cp_argv = ["cp", "-a", str(image.rootfs), str(work / "cp-baseline")]

                def baseline(a: list[str] = cp_argv) -> None:
                    subprocess.run(a, check=True)

                def full_clone() -> None:
                    hv.clone(prod.name, standby.name, linked=False)

                if rep % 2:
                    fulls.append(timed(full_clone))
                    copies.append(timed(baseline))
                else:
                    copies.append(timed(baseline))
                    fulls.append(timed(full_clone))
                shutil.rmtree(work / "cp-baseline")
                hv.destroy(standby.name)
                linkeds.append(timed(lambda: hv.clone(prod.name, standby.name, linked=True)))
                hv.destroy(standby.name)
            full, cp = statistics.median(fulls), statistics.median(copies)
            row("full clone (median)", full)
            row("cp -a of the same tree (median)", cp, f"ratio full/cp = {full / cp:.2f} (<= 1.2)")
            row("linked clone (median)", statistics.median(linkeds), "target <= 0.5 s")

            whole = timed(lambda: clone_ops.clone(prof, hv, prod.name, linked=True))
            row("labctl clone --linked, to SSH answering", whole)
            hv.destroy(standby.name)
            whole_full = timed(lambda: clone_ops.clone(prof, hv, prod.name, linked=False))
            row("labctl clone --full, to SSH answering", whole_full)
        finally:
            lab_ops.destroy(prof, hv)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
