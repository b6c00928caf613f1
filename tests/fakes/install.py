"""Put the fake VBoxManage on disk as an executable named VBoxManage, for one test.

The wrapper runs the fake with this very interpreter: resolving ``python3`` through PATH can
hit a version-manager shim (pyenv's is a shell script) that costs more than the fake itself.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

FAKE_VBOXMANAGE = Path(__file__).resolve().parent / "fake_vboxmanage.py"


def install_vboxmanage(directory: Path) -> Path:
    """Write ``directory/VBoxManage`` that runs the fake; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "VBoxManage"
    command = shlex.join([sys.executable, "-I", "-S", str(FAKE_VBOXMANAGE)])
    wrapper.write_text(f'#!/bin/sh\n# FAKE VBoxManage for tests\nexec {command} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper
