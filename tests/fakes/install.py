"""Put the fake VBoxManage on disk as an executable named VBoxManage, for one test.

The wrapper runs the fake with this very interpreter: resolving ``python3`` through PATH can
hit a version-manager shim (pyenv's is a shell script) that costs more than the fake itself.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from labctl.hypervisor import vbox_common

FAKE_VBOXMANAGE = Path(__file__).resolve().parent / "fake_vboxmanage.py"


def install_vboxmanage(directory: Path) -> Path:
    """Write ``directory/VBoxManage`` that runs the fake; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "VBoxManage"
    command = shlex.join([sys.executable, "-I", "-S", str(FAKE_VBOXMANAGE)])
    wrapper.write_text(f'#!/bin/sh\n# FAKE VBoxManage for tests\nexec {command} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def pretend_kernel_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake VirtualBox host has its kernel driver: labctl's check for it finds a device.

    The machines the tests run on have no vboxdrv; without this, every fake VM start would
    (rightly) be refused with exit 4.
    """
    monkeypatch.setattr(vbox_common, "KERNEL_DRIVER", Path("/dev/null"))
