"""The nspawn lab's base image: a minimal Debian tree built once with debootstrap.

The image carries systemd, dbus, sshd, iproute2 and sudo, plus keepalived and its dependencies
*downloaded* into the apt cache with the package lists (not installed), so provisioning runs a
real, offline ``apt-get install keepalived``. It is built in a temp directory and renamed into
place only when complete, and its directory name carries a hash of the recipe, so a changed
recipe means a new image and a failed build leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from labctl import paths
from labctl.errors import OperationFailed
from labctl.state import atomic_write

Progress = Callable[[str], None]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "sudo")
CACHED_PACKAGES = ("keepalived",)
# Bump when the configuration script below changes in a way that matters to guests.
RECIPE_VERSION = 4

_CONFIGURE = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > /etc/apt/sources.list
printf 'Acquire::Languages "none";\n' > /etc/apt/apt.conf.d/90labctl
echo "image: apt-get update"
apt-get -q update >/dev/null
echo "image: downloading $CACHED (not installed)"
apt-get -q -y --download-only install $CACHED >/dev/null
systemctl enable systemd-networkd >/dev/null 2>&1
mkdir -p /etc/systemd/journald.conf.d /etc/ssh/sshd_config.d
# a small, volatile journal keeps machine layers (and linked clones) small
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' > /etc/systemd/journald.conf.d/labctl.conf
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
    > /etc/ssh/sshd_config.d/labctl.conf
# every machine gets its own identity when it is created
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
install -d -m 700 /root/.ssh
"""


@dataclass(frozen=True)
class Image:
    """A built base image.

    Attributes:
        suite: Debian suite (bookworm).
        path: the image directory (holds ``rootfs/`` and ``recipe.json``).
    """

    suite: str
    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"


@dataclass(frozen=True)
class ImageBuild:
    """What ``ensure_image`` did."""

    image: Image
    built: bool
    seconds: float


def host_mirror() -> str:
    """The Debian mirror this host's apt uses (deb822 or one-line sources), else deb.debian.org."""
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    files = sorted(sources.glob("*.sources")) if sources.is_dir() else []
    for f in files:
        with contextlib.suppress(OSError):
            for line in f.read_text().splitlines():
                if line.startswith("URIs:"):
                    candidates.extend(line.split()[1:])
    legacy = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for f in legacy:
        with contextlib.suppress(OSError):
            for line in f.read_text().splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
                if m:
                    candidates.append(m.group(1))
    for uri in candidates:
        if re.search(r"/debian/?$", uri):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def recipe(suite: str) -> dict[str, object]:
    """Everything that decides the image's content (the mirror does not)."""
    return {
        "version": RECIPE_VERSION,
        "suite": suite,
        "variant": "minbase",
        "packages": list(PACKAGES),
        "cached": list(CACHED_PACKAGES),
        "configure": _CONFIGURE,
    }


def recipe_hash(suite: str) -> str:
    blob = json.dumps(recipe(suite), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def family(suite: str) -> Path:
    """The directory holding every build of ``suite`` with the current recipe."""
    return paths.images_dir() / f"{suite}-{recipe_hash(suite)}"


def find_image(suite: str) -> Image | None:
    """The current build for ``suite`` and the current recipe, or None."""
    try:
        build = (family(suite) / "current").read_text().strip()
    except OSError:
        return None
    image = Image(suite, family(suite) / build)
    return image if build and (image.path / "recipe.json").is_file() else None


@contextlib.contextmanager
def _build_lock(suite: str) -> Iterator[None]:
    directory = paths.images_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".build-{suite}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def ensure_image(
    suite: str, *, rebuild: bool = False, progress: Progress | None = None
) -> ImageBuild:
    """Build the image unless it exists (or ``rebuild``); concurrent builds wait for each other.

    Args:
        suite: Debian suite to bootstrap.
        rebuild: build even if an image with the current recipe exists; the new build becomes
            current, the earlier one stays for the machines made from it.
        progress: receives one line per build step (debootstrap's own lines included).

    Raises:
        OperationFailed: debootstrap or the configuration step failed; nothing is left behind.
    """
    say = progress or (lambda _line: None)
    started = time.monotonic()
    with _build_lock(suite):
        existing = find_image(suite)
        if existing is not None and not rebuild:
            return ImageBuild(existing, False, time.monotonic() - started)
        home = family(suite)
        home.mkdir(parents=True, exist_ok=True)
        staging = home / f".building-{os.getpid()}"
        _remove_tree(staging)
        try:
            _build_into(staging, suite, say)
            build = f"build-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
            image = Image(suite, home / build)
            staging.rename(image.path)
            # machines made from an earlier build keep using it: builds are never replaced
            # in place, only the pointer to the current one moves
            atomic_write(home / "current", f"{image.path.name}\n")
        except BaseException:
            _remove_tree(staging)
            with contextlib.suppress(OSError):
                home.rmdir()  # only when empty: no earlier build
            raise
        if existing is not None:
            say(f"image: earlier build kept for the machines made from it: {existing.path}")
    say(f"image: ready at {image.path}")
    return ImageBuild(image, True, time.monotonic() - started)


def _build_into(staging: Path, suite: str, say: Progress) -> None:
    rootfs = staging / "rootfs"
    staging.mkdir(parents=True)
    mirror = host_mirror()
    say(f"image: debootstrap {suite} from {mirror} (about a minute)")
    _run_streaming(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            suite,
            str(rootfs),
            mirror,
        ],
        say,
        what="debootstrap",
    )
    say("image: configuring (apt lists, keepalived download, sshd, networkd)")
    _run_streaming(
        [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--pipe",
            f"--machine=labctl-image-{os.getpid()}",
            "-D",
            str(rootfs),
            f"--setenv=MIRROR={mirror}",
            f"--setenv=SUITE={suite}",
            f"--setenv=CACHED={' '.join(CACHED_PACKAGES)}",
            "/bin/sh",
            "-c",
            _CONFIGURE,
        ],
        say,
        what="image configuration",
    )
    archives = list((rootfs / "var/cache/apt/archives").glob("keepalived_*.deb"))
    if not archives:
        raise OperationFailed("image build: keepalived was not downloaded into the apt cache")
    meta = {"recipe_hash": recipe_hash(suite), "mirror": mirror, "built": time.time()}
    meta.update(recipe(suite))
    (staging / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")


def _run_streaming(argv: list[str], say: Progress, *, what: str) -> None:
    tail: list[str] = []
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise OperationFailed(f"image build: cannot run {argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail = [*tail[-9:], line]
            say(f"  {line}")
    if proc.returncode != 0:
        raise OperationFailed(
            f"image build: {what} failed (exit {proc.returncode}): " + " | ".join(tail[-3:]),
            hint="check network access to the Debian mirror and free disk space",
        )


def _remove_tree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
