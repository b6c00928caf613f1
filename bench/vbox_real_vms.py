"""Real VirtualBox VMs on this host: INTERPRETER-BOUND figures, no targets.

Without VirtualBox's kernel driver the guest CPU is interpreted (about 8 M instructions/s), so
every figure here measures VirtualBox's interpreter on this machine, not labctl: boot to SSH of
a systemd guest takes minutes, an SSH login seconds. They are recorded to show what the real-VM
tier costs and where its time goes; nothing is compared against a target.

Runs the real-VM tier (tests/vbox/vms) once and prints what it measured: kernel and disk build
(0 when cached), production boot to SSH (``labctl up``), the linked clone (``labctl clone``:
cold boot, identity through guest control, restart, SSH), SSH login (key exchange interpreted)
and one command on an open connection. The baseline beside each is the same machine's
native-speed figure where one exists in the run (the open-connection command on the host).

    sudo .venv/bin/python -m bench.vbox_real_vms
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LABELS = {
    "kernel_build_s": "guest kernel build (tinyconfig + fragments, make -j2; 0 = cached)",
    "disk_build_s": "guest disk build (debootstrap sid + configure + mkfs; 0 = cached)",
    "prod_boot_to_ssh_s": "production: labctl up -> SSH answers (systemd guest, cold)",
    "prod_boot_to_ssh_beside_clone_s": "production: labctl up while the clone boots (2 VMs)",
    "clone_s": "labctl clone --linked (cold boot, identity, restart, SSH at new address)",
    "ssh_login_s": "SSH login to production (paramiko, interpreted key exchange)",
    "ssh_login_standby_s": "SSH login to the standby",
    "ssh_command_s": "one command on an open SSH connection",
}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/vbox/vms/test_boot_real.py", "tests/vbox/vms/e2e_real_vms.py"],
            env={**os.environ, "LABCTL_VM_FIGURES": str(out)},
        )
        wall = time.monotonic() - started
        figures = json.loads(out.read_text()) if out.exists() else {}
    local = time.monotonic()
    subprocess.run(["true"], check=True)
    native_command = time.monotonic() - local
    print("real VirtualBox VMs, INTERPRETER-BOUND on this host (no kernel driver); no targets")
    for key, label in LABELS.items():
        value = figures.get(key)
        shown = "not measured (an earlier step failed)" if value is None else f"{value:8.1f} s"
        print(f"  {label:<78} {shown}")
    if "ssh_command_s" in figures and native_command > 0:
        ratio = figures["ssh_command_s"] / native_command
        print(f"  one guest command vs the same command run natively on the host: x{ratio:,.0f}")
    print(f"  whole tier, wall clock: {wall:.0f} s (pytest exit {done.returncode})")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
