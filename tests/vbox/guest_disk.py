"""The guest root disk for real VirtualBox VMs: a configured Debian production machine (harness).

* **The cached image** (``ensure_disk_image``): a whole-disk ext4 image (no partition table; the
  boot ISO of :mod:`tests.vbox.guest_kernel` mounts ``/dev/sda``) of Debian sid with systemd,
  systemd-networkd, sshd, VirtualBox's Guest Additions service (``virtualbox-guest-utils``) and
  keepalived's .debs in the apt cache with the apt lists that name them (no route out: labctl's
  provision installs it offline, like on the nspawn image). keepalived's dependencies are
  already installed (perl, libsnmp: their unpacking alone ran over 17 min interpreted);
  keepalived itself is not. Interpreted guests run at about
  8 M instructions/s, so the boot is cut to what a lab machine needs (see ``_CONFIGURE``): udev
  coldplugs only network devices (networkd waits for udev to have seen a link), no getty, no
  timers, volatile journal, no generators but fstab's, raised start timeouts. Built with the
  host's debootstrap and ``mkfs.ext4 -d`` (no loop device, no mount), cached under
  ``$LABCTL_VBOX_CACHE/disk-<hash>``, staging renamed into place when complete.
* **A production disk** (``make_production_vdi``): a copy of the image given one machine's
  identity (hostname, machine-id, ed25519 host key, its static address on the run's subnet, the
  lab key for root) with ``debugfs`` -- still no mount -- then ``VBoxManage convertfromraw``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from labctl.hypervisor.nspawn_image import host_mirror
from tests.vbox.cache import cached, recipe_digest
from tests.vbox.sandbox import VBOX_HOME, SandboxError, SandboxRun

DISK_VERSION = 3  # 2: package lists trimmed to the cached .debs; 3: keepalived's deps installed
SUITE = "sid"
SIZE_MB = 1536
INCLUDE = (
    "systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "iproute2",
    "sudo", "procps", "virtualbox-guest-utils",
)  # fmt: skip
CACHED = ("keepalived",)
GUEST_USER = "root"
# Guest control logs in with a password: a cheap SHA-512 hash (yescrypt made every interpreted
# guest-control login far slower). A throw-away lab credential of the test harness, nothing else.
GUEST_PASSWORD = "labctl-guest"
INTERFACE = "eth0"

_CONFIGURE = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
printf 'deb %s %s main contrib\n' "$MIRROR" "$SUITE" > /etc/apt/sources.list
printf 'Acquire::Languages "none";\nAcquire::Check-Valid-Until "false";\n' \
    > /etc/apt/apt.conf.d/90labctl
apt-get -q update >/dev/null
apt-get -q -y --download-only install $CACHED >/dev/null
ls /var/cache/apt/archives/keepalived_*.deb >/dev/null
# keepalived's dependencies are installed, keepalived itself is not (provision installs it from
# the cache): unpacking perl-modules, libperl and libsnmp interpreted ran over 17 min. A
# configured Debian server plausibly has them; what provision does to keepalived stays real.
apt-get -q -y --no-install-recommends install $CACHED >/dev/null
dpkg --purge $CACHED >/dev/null
rm -rf /etc/keepalived
if dpkg -s $CACHED >/dev/null 2>&1; then echo "$CACHED is still installed" >&2; exit 1; fi
rm -f /usr/sbin/policy-rc.d
printf 'root:%s\n' "$PASSWORD" | chpasswd -c SHA512 -s 1000
systemctl enable systemd-networkd ssh
systemctl set-default multi-user.target >/dev/null 2>&1
mkdir -p /etc/systemd/system.conf.d /etc/systemd/journald.conf.d /etc/ssh/sshd_config.d \
    /etc/systemd/system/systemd-udev-trigger.service.d /etc/systemd/system-generators \
    /etc/systemd/system/virtualbox-guest-utils.service.d
# interpreted: every unit is ~100x slower than native; the 90 s defaults fail journald and udevd
printf '[Manager]\nDefaultTimeoutStartSec=20min\nDefaultDeviceTimeoutSec=20min\n' \
    > /etc/systemd/system.conf.d/labctl-interpreted.conf
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=8M\n' > /etc/systemd/journald.conf.d/labctl.conf
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
    > /etc/ssh/sshd_config.d/labctl.conf
# udev coldplugs network devices only: networkd needs udev to have seen the link, nothing else
# on a lab machine needs the full trigger (5 min interpreted)
trigger='udevadm trigger --type=devices --action=add --subsystem-match=net'
printf '[Service]\nExecStart=\nExecStart=-%s\n' "$trigger" \
    > /etc/systemd/system/systemd-udev-trigger.service.d/labctl.conf
# Debian's unit runs an init script that modprobes vboxguest (built in here)
{
    printf '[Unit]\nConditionVirtualization=\n[Service]\nType=simple\nRemainAfterExit=no\n'
    printf 'ExecStart=\nExecStart=/usr/sbin/VBoxService --foreground\nExecStop=\n'
} > /etc/systemd/system/virtualbox-guest-utils.service.d/labctl.conf
systemctl enable virtualbox-guest-utils >/dev/null 2>&1 || true
# no logind or D-Bus (nothing on a lab machine needs them; the root login over SSH then starts no
# user manager: logins cost seconds, not a minute, interpreted); no remount (the kernel mounts the
# root read-write), sysctl, network generator, credentials loading or /tmp mount: ~45 s each;
# no timers and no apt-daily (an `apt-get check` of apt.systemd.daily ran 6 min interpreted,
# started right after a saved guest resumed, and would hold the dpkg lock provision needs)
for unit in getty@tty1.service serial-getty@ttyS0.service getty.target \
        systemd-udev-settle.service systemd-modules-load.service modprobe@.service \
        systemd-networkd-wait-online.service systemd-journal-flush.service \
        systemd-hwdb-update.service ldconfig.service systemd-journal-catalog-update.service \
        systemd-update-done.service systemd-binfmt.service systemd-pstore.service \
        systemd-firstboot.service systemd-machine-id-commit.service systemd-random-seed.service \
        sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
        sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
        kmod-static-nodes.service systemd-tmpfiles-clean.timer apt-daily.timer \
        apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
        man-db.timer systemd-sysext.service systemd-confext.service \
        systemd-tpm2-setup-early.service systemd-tpm2-setup.service \
        systemd-pcrmachine.service systemd-pcrphase-sysinit.service systemd-pcrphase.service \
        systemd-userdbd.socket systemd-homed.service systemd-repart.service \
        systemd-boot-random-seed.service systemd-hostnamed.socket ssh.socket \
        systemd-networkd-persistent-storage.service systemd-battery-check.service \
        systemd-bsod.service systemd-soft-reboot.service systemd-ask-password-console.path \
        systemd-ask-password-wall.path remote-fs.target cryptsetup.target \
        sshd-keygen.service systemd-remount-fs.service systemd-sysctl.service \
        systemd-udev-load-credentials.service systemd-network-generator.service tmp.mount \
        systemd-tmpfiles-setup-dev-early.service systemd-logind.service dbus.service \
        dbus.socket apt-daily.service apt-daily-upgrade.service timers.target; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done
for gen in /usr/lib/systemd/system-generators/*; do
    name=${gen##*/}
    [ "$name" = systemd-fstab-generator ] || ln -sf /dev/null "/etc/systemd/system-generators/$name"
done
# debootstrap leaves these out: without them hwdb/ldconfig/catalog updates run every boot
touch /etc/.updated /var/.updated
# the kernel mounts the root read-write (root=/dev/sda rw): an fstab entry would make systemd
# wait for dev-sda.device, which udev (coldplugging network devices only) never announces
printf '# root: mounted by the kernel (root=/dev/sda rw)\n' > /etc/fstab
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
install -d -m 700 /root/.ssh
"""


@dataclass(frozen=True)
class DiskImage:
    path: Path
    seconds: float
    built: bool


def disk_recipe() -> dict[str, object]:
    return {
        "version": DISK_VERSION, "suite": SUITE, "size_mb": SIZE_MB, "include": list(INCLUDE),
        "cached": list(CACHED), "configure": _CONFIGURE, "password": GUEST_PASSWORD,
    }  # fmt: skip


def disk_hash() -> str:
    return recipe_digest(disk_recipe())


def ensure_disk_image() -> DiskImage:
    disk = cached(f"disk-{disk_hash()}", disk_recipe(), _build)
    return DiskImage(disk.path / "root.img", disk.seconds, disk.built)


def _run(argv: list[str], what: str, log: Path, timeout: float = 1800) -> None:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SandboxError(
            f"guest disk: {what} failed (exit {done.returncode}): " + " | ".join(tail)
        )


def _build(staging: Path) -> None:
    root, log = staging / "root", staging / "build.log"
    mirror = host_mirror()
    include = f"--include={','.join(INCLUDE)}"
    _run(["debootstrap", "--variant=minbase", "--components=main,contrib", include, SUITE,
          str(root), mirror], "debootstrap", log)  # fmt: skip
    policy = root / "usr/sbin/policy-rc.d"  # nothing starts in the chroot while configuring
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        for what in ("proc", "sys", "dev"):
            _run(["mount", "--rbind", f"/{what}", str(root / what)], "mount", log)
            _run(["mount", "--make-rslave", str(root / what)], "mount", log)
        _run(["chroot", str(root), "/usr/bin/env", f"MIRROR={mirror}", f"SUITE={SUITE}",
              f"CACHED={' '.join(CACHED)}", f"PASSWORD={GUEST_PASSWORD}",
              "/bin/sh", "-c", _CONFIGURE], "configure", log)  # fmt: skip
    finally:
        for what in ("sys", "dev", "proc"):
            subprocess.run(["umount", "-R", str(root / what)], capture_output=True)
    for leftover in ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin"):
        (root / leftover).unlink(missing_ok=True)
    _trim_apt_lists(root)
    _run(["mkfs.ext4", "-q", "-F", "-L", "labctl-guest", "-d", str(root),
          str(staging / "root.img"), f"{SIZE_MB}M"], "mkfs.ext4 -d", log)  # fmt: skip
    shutil.rmtree(root)


def _trim_apt_lists(root: Path) -> None:
    """Keep only the package lists' stanzas of the .debs in the apt cache. The guest has no
    route out, so nothing else can be installed anyway, and apt parses every list on its first
    run: sid's 65 MB main list took apt minutes interpreted (provision waited for it)."""
    cached = {deb.name.split("_", 1)[0] for deb in (root / "var/cache/apt/archives").glob("*.deb")}
    for listing in (root / "var/lib/apt/lists").glob("*_Packages"):
        stanzas = listing.read_text(errors="replace").split("\n\n")
        kept = [st for st in stanzas
                if st.startswith("Package: ") and st.split("\n", 1)[0][9:].strip() in cached]
        listing.write_text("\n\n".join(kept) + "\n")


# -- one machine's disk ---------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    hostname: str
    address: str  # with prefix, e.g. 10.250.3.10/24
    machine_id: str
    host_key_pub: str


def make_production_vdi(
    run: SandboxRun, image: Path, vdi_inside: str, *, hostname: str, address: str,
    lab_pubkey: str,
) -> Identity:
    """A VDI (sandbox path ``vdi_inside``) of ``image`` configured as one machine."""
    work = Path(tempfile.mkdtemp(prefix="disk-", dir=run.host_path(VBOX_HOME)))
    try:
        raw = work / "root.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(raw)], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{hostname}",
                        "-f", str(work / "ssh_host_ed25519_key")], check=True)  # fmt: skip
        machine_id = uuid.uuid4().hex
        files = {
            "/etc/hostname": f"{hostname}\n",
            "/etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n",
            "/etc/machine-id": f"{machine_id}\n",
            "/etc/systemd/network/10-lab.network": (
                f"[Match]\nName={INTERFACE}\n\n[Network]\nAddress={address}\n"
                "LinkLocalAddressing=no\n"
            ),
            "/root/.ssh/authorized_keys": lab_pubkey.strip() + "\n",
        }
        commands: list[str] = []
        for n, (path, text) in enumerate(files.items()):
            local = work / f"f{n}"
            local.write_text(text)
            commands += [f"rm {path}", f"write {local} {path}"]
        for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
            commands += [f"write {work / name} /etc/ssh/{name}"]
        key = "/etc/ssh/ssh_host_ed25519_key"
        modes = {"/root/.ssh/authorized_keys": "0100600", key: "0100600"}
        for path in [*files, key, f"{key}.pub"]:
            commands += [f"sif {path} uid 0", f"sif {path} gid 0",
                         f"sif {path} mode {modes.get(path, '0100644')}"]  # fmt: skip
        # "rm" of a file that is not there is harmless; keep other errors fatal
        _debugfs_tolerant(raw, commands)
        run.manage("convertfromraw", run.inside_path(raw), vdi_inside, "--format", "VDI")
        pub = (work / "ssh_host_ed25519_key.pub").read_text().split()
        return Identity(hostname, address, machine_id, f"{pub[0]} {pub[1]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _debugfs_tolerant(image: Path, commands: list[str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write("\n".join(commands) + "\n")
        script.flush()
        done = subprocess.run(["debugfs", "-w", "-f", script.name, str(image)],
                              capture_output=True, text=True)  # fmt: skip
    errors = [ln for ln in done.stderr.splitlines()
              if ln.strip() and not ln.startswith("debugfs ") and "File not found" not in ln]
    if done.returncode != 0 or errors:
        raise SandboxError(f"guest disk: debugfs failed: {' | '.join(errors[-4:])}")
