"""Real VirtualBox VMs on this host: INTERPRETER-BOUND figures, no targets.

Without VirtualBox's kernel driver the guest CPU is interpreted (about 8 M instructions/s), so
every figure here measures VirtualBox's interpreter on this machine, not labctl: boot to SSH of
a systemd guest takes minutes, an SSH login seconds. They are recorded to show what the real-VM
tier costs and where its time goes; nothing is compared against a target.

Runs the real-VM tier (tests/vbox/vms) once and prints what it measured: kernel, disk and
saved-production builds (0 when cached), the production VM's cold boot to SSH (only when its
saved state is built), its resume (``labctl up`` of the saved machine), the linked clone
(``labctl clone``: cold boot with the cable out, identity through guest control, SSH at the
new address), provision, verify, the failover drills' takeover beside VRRP theory, an SSH
login (key exchange interpreted) and one command on an open connection. The baseline beside
the drills is VRRP's own theory; beside the guest command, the same command run natively.

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
    "prod_cold_boot_to_ssh_s": "production: cold boot -> SSH (only when its saved state is built)",
    "prod_install_s": "production: this run's copy of the saved machine registered",
    "prod_resume_to_ssh_s": "production: labctl up of the saved machine -> SSH answers",
    "clone_s": "labctl clone --linked (cold boot, identity in place, cable in, SSH)",
    "provision_s": "labctl provision pair (keepalived from the apt cache, both nodes)",
    "verify_s": "labctl verify (VIP on exactly one node, data path)",
    "ssh_login_s": "SSH login to production (paramiko, interpreted key exchange)",
    "ssh_login_standby_s": "SSH login to the standby",
    "ssh_command_s": "one command on an open SSH connection",
}
# figures measured only when their cache is built: absent means cached, not failed
WHEN_BUILT = {
    "prod_cold_boot_to_ssh_s": "cached saved state reused (remove $LABCTL_VBOX_CACHE/production-* "
    "to measure)",
}
DRILLS = [(fault, driver) for driver in ("pyvbox", "vboxmanage") for fault in ("freeze", "link")]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/vbox/vms"],
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
        missing = WHEN_BUILT.get(key, "not measured (an earlier step failed)")
        shown = missing if value is None else f"{value:8.1f} s"
        print(f"  {label:<78} {shown}")
    for fault, driver in DRILLS:
        key = f"failover_{fault}_{driver}"
        takeover, theory = figures.get(f"{key}_takeover_s"), figures.get(f"{key}_theory_s")
        label = f"failover --fault {fault} ({driver}): takeover vs VRRP theory"
        if takeover is None or theory is None:
            print(f"  {label:<78} not measured (an earlier step failed)")
        else:
            print(f"  {label:<78} {takeover:8.2f} s vs {theory:.2f} s "
                  f"(x{takeover / theory:.2f}; drill {figures[f'{key}_drill_s']:.0f} s)")
    if "ssh_command_s" in figures and native_command > 0:
        ratio = figures["ssh_command_s"] / native_command
        print(f"  one guest command vs the same command run natively on the host: x{ratio:,.0f}")
    print(f"  whole tier, wall clock: {wall:.0f} s (pytest exit {done.returncode})")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
