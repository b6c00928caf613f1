"""`labctl --version` and `--help` start without the heavy libraries (a behaviour, not a time):
the commands import paramiko, pydantic, jinja2, rich and the backends only when they run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labctl.cli import checks
from labctl.ops.drill import Fault

HEAVY = ("paramiko", "pydantic", "jinja2", "rich", "tenacity", "labctl.hypervisor.nspawn",
         "labctl.hypervisor.vboxmanage", "labctl.hypervisor.pyvbox", "labctl.ops")

PROBE = """
import runpy, sys
sys.argv = ["labctl", *sys.argv[1:]]
try:
    runpy.run_module("labctl", run_name="__main__")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print("MODULES", " ".join(sorted(sys.modules)))
"""


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["verify", "--help"]])
def test_startup_imports_none_of_the_heavy_libraries(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    loaded = set(line.split()[1:])
    assert "labctl.cli" in loaded  # the probe did run labctl
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == []


def test_the_cli_lists_every_drill_fault() -> None:
    assert tuple(f.value for f in Fault) == checks.FAULTS
