"""Benchmark `labctl apply` and labctl's start-up, each beside a baseline measured in the same run.

1. The whole local lab (three pairs) from a cached image to verified: ``labctl apply`` versus
   the command sequence it replaces (``up``; ``clone`` per pair; ``provision pair``;
   ``verify --wait``), each from nothing (the lab is destroyed before each), then a no-change
   ``apply``. Target (issue 10): apply <= 12 s.
2. Start-up as a new process, median of N runs, beside ``python -c pass``: ``labctl --version``
   and ``--help`` (target <= 60 ms), ``labctl verify PAIR`` of one healthy pair (<= 0.35 s) and
   a no-change ``provision pair PAIR`` (<= 0.25 s), on the lab apply left running.

Usage (root, after scripts/bootstrap; uses the profile's bridge and subnet, leaves the lab
running): .venv/bin/python bench/apply.py [-p local-lab] [--repeat 10] [--skip-lab]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABCTL = str(REPO / ".venv" / "bin" / "labctl")


def timed(argv: list[str], *, check: bool = True) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_of(argv: list[str], repeat: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + sys) of ``repeat`` new processes."""
    timed(argv)  # warm the page cache
    walls, cpus = [], []
    for _ in range(repeat):
        before = cpu_seconds()
        walls.append(timed(argv))
        cpus.append(cpu_seconds() - before)
    return statistics.median(walls), statistics.median(cpus)


def lab(profile: str) -> None:
    def labctl(*args: str) -> list[str]:
        return [LABCTL, "-p", profile, *args]

    def destroy() -> None:
        timed(labctl("destroy", "--yes"))

    pairs = subprocess.run(
        labctl("profile", "check", "--json"), capture_output=True, text=True, check=True
    ).stdout
    import json

    names = json.loads(pairs)["pairs"]
    primaries = []
    for pair in names:
        conf = subprocess.run(
            labctl("render", pair, "--node", "primary"), capture_output=True, text=True, check=True
        ).stdout
        primaries.append(conf.split("# ---- ", 1)[1].split()[0])
    timed(labctl("lab", "image"))  # cached: nothing is built

    destroy()
    steps = [labctl("up")]
    steps += [labctl("clone", p) for p in primaries]
    steps += [labctl("provision", "pair"), labctl("verify", "--wait", "60")]
    sequence = [timed(step) for step in steps]
    seq_total = sum(sequence)

    destroy()
    apply_s = timed(labctl("apply"))
    again = timed(labctl("apply"))
    print(f"lab: {len(names)} pairs from a cached image to verified")
    print(f"  sequence ({len(steps)} commands)  {seq_total:6.2f} s   "
          + "  ".join(f"{' '.join(s[3:4])} {t:.1f}" for s, t in zip(steps, sequence, strict=True)))
    print(f"  labctl apply            {apply_s:6.2f} s   ratio apply/sequence "
          f"{apply_s / seq_total:.2f}   target <= 12 s")
    print(f"  labctl apply (no change){again:6.2f} s")


def startup(profile: str, repeat: int, pair: str) -> None:
    base, base_cpu = median_of([sys.executable, "-c", "pass"], repeat)
    rows = [
        ("labctl --version", [LABCTL, "--version"], 0.060),
        ("labctl --help", [LABCTL, "--help"], 0.060),
        (f"labctl verify {pair}", [LABCTL, "-p", profile, "verify", pair], 0.35),
        (f"labctl provision pair {pair} (no change)",
         [LABCTL, "-p", profile, "provision", "pair", pair], 0.25),
    ]
    print(f"start-up, median of {repeat} new processes (python -c pass: {base * 1000:.0f} ms "
          f"wall, {base_cpu * 1000:.0f} ms CPU); on a busy host CPU time is the steadier figure")
    for title, argv, target in rows:
        t, cpu = median_of(argv, repeat)
        print(f"  {title:42s} {t * 1000:6.0f} ms wall ({t / base:4.1f}x)  {cpu * 1000:5.0f} ms CPU "
              f"({cpu / max(base_cpu, 1e-3):4.1f}x)   target <= {target * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-p", "--profile", default="local-lab")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--pair", default="back")
    parser.add_argument("--skip-lab", action="store_true", help="start-up figures only")
    args = parser.parse_args()
    if not args.skip_lab:
        lab(args.profile)
    startup(args.profile, args.repeat, args.pair)


if __name__ == "__main__":
    main()
