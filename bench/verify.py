"""Benchmark `labctl verify` latency on real nspawn guests: 1 pair and N pairs (default 8).

Targets (issue 5): <= 0.5 s for one pair, <= 1 s for 8 pairs.

Measured side by side in one run, on the same provisioned lab:
  * ``labctl verify PAIR`` / ``labctl verify`` (all pairs) run in-process (the operation:
    SSH connects, probes, data path) and as a fresh ``labctl`` process (what a user waits for,
    Python start-up and imports included);
  * the baseline: the seed's manual check, ``ssh NODE ip -o addr`` with OpenSSH on each node of
    each pair one after the other (without even the data-path check verify adds).

Usage (root): .venv/bin/python bench/verify.py [--pairs 8] [--repeat 10]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._checks_lab import provisioned_lab  # noqa: E402
from labctl import paths  # noqa: E402
from labctl.cli import run  # noqa: E402
from labctl.profile import Profile, host_ip  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def in_process(prof: Profile, *pairs: str) -> Callable[[], object]:
    def go() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            code = run(["-p", str(prof.path), "verify", *pairs])
        if code != 0:
            raise SystemExit(f"verify {' '.join(pairs)} exited {code}")

    return go


def as_process(prof: Profile, *pairs: str) -> Callable[[], object]:
    labctl = str(Path(sys.executable).with_name("labctl"))

    def go() -> None:
        subprocess.run(
            [labctl, "-p", str(prof.path), "verify", *pairs], check=True, capture_output=True
        )

    return go


def manual_check(prof: Profile, pairs: list[str]) -> Callable[[], object]:
    """The seed's way: ssh to each machine in turn and look at `ip a`."""
    key = paths.lab_key_path(prof.lab.name)
    known = paths.known_hosts_path(prof.lab.name)

    def go() -> None:
        for pair in pairs:
            for node in prof.nodes(pair):
                subprocess.run(
                    [
                        "ssh",
                        "-i",
                        str(key),
                        "-o",
                        f"UserKnownHostsFile={known}",
                        "-o",
                        "StrictHostKeyChecking=yes",
                        "-o",
                        "BatchMode=yes",
                        f"root@{host_ip(node.address)}",
                        "ip",
                        "-o",
                        "addr",
                    ],
                    check=True,
                    capture_output=True,
                )

    return go


def row(name: str, samples: list[float], target: float | None, baseline: float | None) -> str:
    med = statistics.median(samples)
    cells = [
        f"{name:<44}",
        f"{med:7.3f}",
        f"{min(samples):7.3f}",
        f"{max(samples):7.3f}",
        f"{target:6.2f}" if target else "     -",
        ("  ok " if med <= target else " MISS") if target else "     ",
        f"{baseline / med:6.2f}x" if baseline else "      -",
    ]
    return "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(f"booting and provisioning {args.pairs} pairs ...", file=sys.stderr)
    with provisioned_lab(args.pairs) as prof:
        names = list(prof.pairs)
        one, all_ = names[:1], names
        n = args.repeat
        results = {
            "baseline 1": timed(manual_check(prof, one), n),
            "baseline N": timed(manual_check(prof, all_), n),
            "verify 1 (in-process)": timed(in_process(prof, *one), n),
            "verify N (in-process)": timed(in_process(prof), n),
            "verify 1 (labctl process)": timed(as_process(prof, *one), n),
            "verify N (labctl process)": timed(as_process(prof), n),
        }
    base1 = statistics.median(results["baseline 1"])
    baseN = statistics.median(results["baseline N"])
    k = args.pairs
    print(f"\nlabctl verify, {n} runs each, seconds (median min max), target, speed-up vs manual")
    print(row("manual: ssh NODE ip -o addr, 1 pair", results["baseline 1"], None, None))
    print(row(f"manual: ssh NODE ip -o addr, {k} pairs", results["baseline N"], None, None))
    print(row("labctl verify, 1 pair (in-process)", results["verify 1 (in-process)"], 0.5, base1))
    print(
        row(
            f"labctl verify, {k} pairs (in-process)",
            results["verify N (in-process)"],
            1.0 if k == 8 else None,
            baseN,
        )
    )
    print(
        row("labctl verify, 1 pair (new process)", results["verify 1 (labctl process)"], 0.5, base1)
    )
    print(
        row(
            f"labctl verify, {k} pairs (new process)",
            results["verify N (labctl process)"],
            1.0 if k == 8 else None,
            baseN,
        )
    )
    scale = statistics.median(results["verify N (in-process)"]) / statistics.median(
        results["verify 1 (in-process)"]
    )
    print(f"\n{k} pairs / 1 pair (in-process): {scale:.2f}x")


if __name__ == "__main__":
    main()
