"""Benchmark the drill's advert waiter on a loaded node: filtered (labctl) vs unfiltered.

Before a hard fault the drill waits on the node for its own VRRP advert (perl, a packet
socket), so the fault lands just after one. The socket sees every frame of the node,
including the drill's own SSH probes (~1,600 frames/s with sub-second adverts); labctl's
waiter attaches a classic BPF filter so the kernel hands it only the node's adverts. The
baseline is the same script without the filter (labctl before this change).

Setup, all in a loopback-only network namespace of its own: adverts from the node's
address every 0.1 s (advert_int 0.1), two TCP streams of 100-byte segments as noise, two
busy loops competing for the CPU, and the waiter at nice 19 with a 0.2 s window (what the
drill gives a 0.1 s pair). Each variant tries N times; printed: how many saw an advert,
median time to it, and the ratio of misses.

Usage (root): .venv/bin/python -m bench.advert_wait [--tries 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labctl.ops.drill.faults import WAIT_FOR_OWN_ADVERT  # noqa: E402
from tests.lab.advert_netns import (  # noqa: E402
    NOISE,
    OTHER,
    OWN,
    loopback_netns,
    run_waiter,
    running,
    sender,
)

FILTER_START = "my $filter = "
FILTER_END = 'or die "SO_ATTACH_FILTER: $!\\n";\n'


def unfiltered(script: str) -> str:
    """The waiter without its filter: everything from building it to attaching it removed."""
    start, end = script.index(FILTER_START), script.index(FILTER_END) + len(FILTER_END)
    return script[:start] + script[end:]


@contextlib.contextmanager
def busy_cpus(count: int = 2) -> Iterator[None]:
    procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    args = parser.parse_args()
    variants = {"unfiltered (baseline)": unfiltered(WAIT_FOR_OWN_ADVERT),
                "filtered (labctl)": WAIT_FOR_OWN_ADVERT}
    results: dict[str, tuple[int, list[float]]] = {}
    with loopback_netns("advert-bench") as netns:
        noise = [(NOISE, [OWN, OTHER, str(port)]) for port in (7, 9)]
        with running(netns, [sender(OWN, OTHER, 112, 0.1), *noise]), busy_cpus():
            for label, script in variants.items():
                seen, times = 0, []
                for _ in range(args.tries):
                    code, _out, took = run_waiter(netns, script, window=0.2, nice=19)
                    if code == 0:
                        seen += 1
                        times.append(took)
                results[label] = (seen, times)
    print(f"advert waiter, {args.tries} tries each, loaded node (noise + 2 busy CPUs, nice 19)")
    for label, (seen, times) in results.items():
        median = f"{statistics.median(times):.3f} s" if times else "-"
        print(f"  {label:24} saw the advert {seen:3}/{args.tries}   median time to it {median}")
    missed = {label: args.tries - seen for label, (seen, _) in results.items()}
    base, ours = missed["unfiltered (baseline)"], missed["filtered (labctl)"]
    print(f"  misses: baseline {base}, labctl {ours}"
          + (f" (ratio {base / ours:.1f}x)" if ours else " (labctl missed none)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
