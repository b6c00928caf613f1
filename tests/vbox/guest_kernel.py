"""The guest kernel for interpreted VirtualBox VMs, and the boot ISO carrying it (test harness).

A stock Debian kernel is far too slow when VirtualBox interprets the guest (no kernel driver, about
8 M instructions/s). This builds a small one from Debian's own ``linux-source`` package in the
VM layer of the sandbox: ``make tinyconfig``, then the fragments in ``tests/vbox/guest/``
(serial console, devtmpfs, PCI/ACPI, e1000, AHCI, ext4, LZ4, multicast, what systemd needs,
VirtualBox's guest driver), ``make -j2 bzImage`` under ``nice -n 10``. A GRUB rescue ISO carries
it (VirtualBox cannot boot a kernel directly) with the guest's command line; the root is the
VM's first SATA disk (``/dev/sda``, a whole-disk ext4 image, no partition table).

Cached under ``$LABCTL_VBOX_CACHE/kernel-<hash>`` where the hash covers the fragments, the
command line, the linux-source tarball's name and this recipe's version; built in a staging
directory and renamed into place only when complete (a failed build leaves nothing).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.vbox.cache import cached, recipe_digest
from tests.vbox.sandbox import Build, SandboxError, SandboxRun

KERNEL_VERSION = 1
FRAGMENTS = (
    Path(__file__).parent / "guest/kernel-tiny.config",
    Path(__file__).parent / "guest/kernel-systemd.config",
)
# net.ifnames=0 keeps eth0 (a renamed link was once never configured by networkd);
# the boot status on the serial console costs interpreted cycles and shows nothing useful.
CMDLINE = (
    "root=/dev/sda rw rootfstype=ext4 console=ttyS0,115200 net.ifnames=0 "
    "systemd.show_status=false quiet"
)
# options the guest cannot work without: the build fails if olddefconfig dropped one
REQUIRED = (
    "CONFIG_KERNEL_LZ4", "CONFIG_E1000", "CONFIG_SATA_AHCI", "CONFIG_EXT4_FS",
    "CONFIG_DEVTMPFS_MOUNT", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_PACKET", "CONFIG_IP_MULTICAST",
    "CONFIG_CGROUPS", "CONFIG_NAMESPACES", "CONFIG_AUTOFS_FS", "CONFIG_DMIID", "CONFIG_VBOXGUEST",
    "CONFIG_SECCOMP", "CONFIG_INOTIFY_USER", "CONFIG_UNIX",
)  # fmt: skip


@dataclass(frozen=True)
class Kernel:
    """A built guest kernel: ``iso`` boots it (host path), ``seconds`` what building took."""

    path: Path
    iso: Path
    seconds: float
    built: bool


def _source_tarball(build: Build) -> str:
    for layer in build.layers:
        found = sorted((layer / "usr/src").glob("linux-source-*.tar.*"))
        if found:
            return found[-1].name
    raise SandboxError("guest kernel: no linux-source tarball in the sandbox's VM layer")


def kernel_recipe(build: Build) -> dict[str, object]:
    return {
        "version": KERNEL_VERSION,
        "source": _source_tarball(build),
        "cmdline": CMDLINE,
        "fragments": {f.name: f.read_text() for f in FRAGMENTS},
    }


def kernel_hash(build: Build) -> str:
    return recipe_digest(kernel_recipe(build))


def ensure_kernel(build: Build) -> Kernel:
    """The cached guest kernel and boot ISO for ``build`` (the sandbox with its VM layer)."""
    kernel = cached(f"kernel-{kernel_hash(build)}", kernel_recipe(build),
                    lambda staging: _build(build, staging))  # fmt: skip
    return Kernel(kernel.path / "bzImage", kernel.path / "boot.iso", kernel.seconds, kernel.built)


_SCRIPT = r"""
set -eu
cd /kbuild
tar -xf /usr/src/$SOURCE
cd linux-source-*
make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config $FRAGMENTS >/dev/null
make -s olddefconfig
missing=""
for opt in $REQUIRED; do grep -q "^$opt=y" .config || missing="$missing $opt"; done
if [ -n "$missing" ]; then echo "kernel config lost:$missing" >&2; exit 3; fi
nice -n 10 make -s -j2 bzImage
cp arch/x86/boot/bzImage .config /kout/
mkdir -p /kiso/boot/grub
cp arch/x86/boot/bzImage /kiso/boot/bzImage
cat > /kiso/boot/grub/grub.cfg <<CFG
set timeout=0
set default=0
menuentry labctl-guest {
  linux /boot/bzImage $CMDLINE
}
CFG
grub-mkrescue -o /kout/boot.iso /kiso 2>/kout/grub-mkrescue.log
"""


def _build(build: Build, staging: Path) -> None:
    run = SandboxRun.open(build, vbox=False)
    try:
        for d in ("kbuild", "kout", "kiso", "kfrag"):
            run.host_path(d).mkdir()
        for frag in FRAGMENTS:
            shutil.copy(frag, run.host_path(f"kfrag/{frag.name}"))
        env = (
            f"SOURCE={_source_tarball(build)}",
            "FRAGMENTS=" + " ".join(f"/kfrag/{f.name}" for f in FRAGMENTS),
            "REQUIRED=" + " ".join(REQUIRED),
            f"CMDLINE={CMDLINE}",
        )
        done = run.run("/usr/bin/env", *env, "/bin/sh", "-c", _SCRIPT, check=False,
                       timeout=3600)  # fmt: skip
        (staging / "build.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SandboxError(
                f"guest kernel build failed (exit {done.returncode}): "
                + " | ".join((done.stdout + done.stderr).strip().splitlines()[-6:])
            )
        for name in ("bzImage", ".config", "boot.iso"):
            shutil.copy(run.host_path(f"kout/{name}"), staging / name.lstrip("."))
    finally:
        run.close()
