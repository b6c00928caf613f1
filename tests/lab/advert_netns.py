"""A loopback-only network namespace for running the drill's advert waiter against real frames
(tests/lab/test_advert_wait.py, bench/advert_wait.py). Nothing in it reaches any other host."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

OWN, OTHER = "10.249.251.1", "10.249.251.2"

# sends frames of one IP protocol from one address to another every INTERVAL s until killed
SENDER = r"""
import socket, sys, time
src, dst, proto, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
s.bind((src, 0))
while True:
    s.sendto(b"\x31\x01\x64\x01\x00\x64\x00\x00", (dst, 0))
    time.sleep(interval)
"""

# a TCP stream of small segments from OTHER to OWN (argv: own, other, port): frames to skip
NOISE = r"""
import socket, sys, threading
own, other, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
srv = socket.socket(); srv.bind((own, port)); srv.listen()
def sink():
    c, _ = srv.accept()
    while c.recv(65536): pass
threading.Thread(target=sink, daemon=True).start()
c = socket.create_connection((own, port), source_address=(other, 0))
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True: c.send(b"x" * 100)
"""


@contextlib.contextmanager
def loopback_netns(tag: str) -> Iterator[str]:
    """A namespace holding only a loopback with OWN and OTHER; deleted afterwards."""
    name = f"labctl-{tag}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for address in (OWN, OTHER):
            subprocess.run(
                ["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"], check=True
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


@contextlib.contextmanager
def running(netns: str, scripts: Sequence[tuple[str, Sequence[str]]]) -> Iterator[None]:
    """Python scripts (source, argv) running in the namespace for the duration."""
    procs = [
        subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", src, *argv])
        for src, argv in scripts
    ]
    try:
        time.sleep(0.2)  # sockets bound before anything is measured
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def sender(src: str, dst: str, proto: int, interval: float = 0.05) -> tuple[str, list[str]]:
    return SENDER, [src, dst, str(proto), str(interval)]


def run_waiter(
    netns: str, script: str, window: float = 0.2, nice: int = 0
) -> tuple[int, str, float]:
    """Run a waiter script (perl) for an advert of OWN; (exit code, output, seconds taken)."""
    started = time.monotonic()
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nice", "-n", str(nice), "perl", "-e", script, OWN,
         f"{window:g}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started
