"""A VirtualBox host sandbox: Debian's VirtualBox 7.2 in a cached Debian sid root.

Test harness, not product code: labctl reaches the sandbox only through what a user configures
(``lab.virtualbox.vboxmanage`` = the run's VBoxManage wrapper) or, for the pyvbox driver, by
running inside the sandbox's own Python (3.14, with Debian's vboxapi and pyvbox), because the
VirtualBox SDK binding exists only there.

* **The build** (``ensure_sandbox``) is cached under ``$LABCTL_VBOX_CACHE`` (default
  ``/var/cache/labctl/vbox-sandbox``), one directory per recipe hash: debootstrap minbase of
  sid (main, contrib) from the host's own Debian mirror, then ``apt-get install
  --no-install-recommends`` VirtualBox (``virtualbox-source`` stands in for the kernel module
  package: nothing is compiled, there is no driver), labctl's runtime dependencies from Debian
  and pyvbox from PyPI. It is built in a staging directory and renamed into place only when
  complete (a failed build leaves nothing; concurrent builds are serialised by a lock; a build
  is never modified once in place, so a new recipe never breaks a running user).
* **A run** (``SandboxRun``) is an overlay on the cached root, private to one test session:
  its own ``/tmp`` (VBoxSVC's IPC socket lives there, so two runs never share a VBoxSVC), its own
  ``VBOX_USER_HOME`` (``/vbox-home``, machine folder included), /proc, /dev and /sys inside, and
  the repository bind-mounted read-only at ``/labctl-src``. ``close()`` ends every process whose
  root is the overlay (VBoxSVC, VBoxXPCOMIPCD, ...) by PID and removes every mount and file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.hypervisor.nspawn_image import host_mirror
from tests.vbox.cache import cached, recipe_digest

REPO = Path(__file__).resolve().parents[2]
RECIPE_VERSION = 1
SUITE = "sid"
PACKAGES = (
    "virtualbox",
    "virtualbox-source",
    "python3",
    "python3-click",
    "python3-paramiko",
    "python3-tenacity",
    "python3-jinja2",
    "python3-pydantic",
    "python3-rich",
)
PYVBOX = "virtualbox==2.1.1"
VBOXMANAGE = "/usr/lib/virtualbox/VBoxManage"  # /usr/bin/VBoxManage prints a driver banner
VBOX_HOME = "/vbox-home"
SRC = "/labctl-src"
RUNS = Path("/var/tmp/labctl-vbox-runs")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxError(RuntimeError):
    """The sandbox could not be built or set up (the tier fails, it never skips)."""


def recipe() -> dict[str, object]:
    """Everything that decides the sandbox's content (the mirror does not)."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "components": "main,contrib",
        "packages": list(PACKAGES),
        "pyvbox": PYVBOX,
    }


def recipe_hash() -> str:
    return recipe_digest(recipe())


@dataclass(frozen=True)
class Build:
    """A finished sandbox build: ``root`` is the sid tree, ``seconds`` what building took
    (0 when it was cached). ``layers`` are further read-only trees stacked on ``root`` (the
    VM layer of :func:`ensure_vm_layer`), topmost first."""

    root: Path
    seconds: float
    built: bool
    layers: tuple[Path, ...] = ()

    def lowerdir(self) -> str:
        return ":".join(str(p) for p in (*self.layers, self.root))


# -- the VM layer: what powering VMs on needs, on top of the management-plane sandbox ------
VM_LAYER_VERSION = 1
VM_PACKAGES = (
    # the Qt frontend (the only way to power a VM on without the kernel driver), its X server
    "virtualbox-qt",
    "xvfb",
    "xauth",
    # the lab network, and the SSH client tools labctl uses for the lab key (ssh-keygen)
    "vde2",
    "openssh-client",
    # the guest kernel: Debian's source package and what building a tinyconfig kernel needs
    "linux-source",
    "gcc",
    "make",
    "libc6-dev",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "lz4",
    "cpio",
    "xz-utils",
    "python3-minimal",
    # the boot ISO carrying the kernel
    "grub-pc-bin",
    "grub-common",
    "xorriso",
    "mtools",
)


def vm_layer_recipe() -> dict[str, object]:
    return {"version": VM_LAYER_VERSION, "base": recipe_hash(), "packages": list(VM_PACKAGES)}


def vm_layer_hash() -> str:
    return recipe_digest(vm_layer_recipe())


def ensure_vm_layer(base: Build, log: Path | None = None) -> Build:
    """``base`` plus the cached VM layer (an overlay upper directory, built on first use,
    keyed by its own recipe hash)."""
    layer = cached(f"vm-{vm_layer_hash()}", vm_layer_recipe(),
                   lambda staging: _build_vm_layer(base, staging, log or staging / "build.log"))
    return Build(base.root, layer.seconds, layer.built, (layer.path / "upper", *base.layers))


def _build_vm_layer(base: Build, staging: Path, log: Path) -> None:
    upper, work, merged = staging / "upper", staging / "work", staging / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)  # the staging directory itself first: it holds the log
    _mount(
        ["-t", "overlay", "overlay", "-o",
         f"lowerdir={base.lowerdir()},upperdir={upper},workdir={work}", str(merged)]
    )  # fmt: skip
    try:
        with open(log, "a") as out, _mounted_system(merged):
            install = (
                "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && "
                f"apt-get install -y -q --no-install-recommends {' '.join(VM_PACKAGES)} && "
                "apt-get clean && rm -rf /var/lib/apt/lists/*"
            )
            done = subprocess.run(
                ["chroot", str(merged), "/bin/sh", "-c", install],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        if done.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise SandboxError(
                f"VirtualBox VM layer: apt-get install failed (exit {done.returncode}): "
                + " | ".join(tail)
            )
    finally:
        _umount(merged)
    shutil.rmtree(work, ignore_errors=True)
    merged.rmdir()
    (staging / "recipe.json").write_text(
        json.dumps({**vm_layer_recipe(), "built": time.time()}, indent=2) + "\n"
    )


def ensure_sandbox(log: Path | None = None) -> Build:
    """The cached sandbox for the current recipe, built first if missing."""
    sandbox = cached(f"{SUITE}-{recipe_hash()}", {**recipe(), "mirror": host_mirror()},
                     lambda staging: _build(staging, log or staging / "build.log"), lock="sid")
    return Build(sandbox.path / "root", sandbox.seconds, sandbox.built)


def _build(staging: Path, log: Path) -> None:
    root = staging / "root"
    staging.mkdir(parents=True, exist_ok=True)
    mirror = host_mirror()
    with open(log, "a") as out:

        def run(argv: Sequence[str], what: str) -> None:
            out.write(f"$ {shlex.join(argv)}\n")
            out.flush()
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            if done.returncode != 0:
                tail = log.read_text(errors="replace").splitlines()[-5:]
                raise SandboxError(
                    f"VirtualBox sandbox: {what} failed (exit {done.returncode}): "
                    + " | ".join(tail)
                )

        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--components=main,contrib",
                SUITE,
                str(root),
                mirror,
            ],
            "debootstrap sid",
        )
        # the archive is a dated snapshot: its Release file has expired
        (root / "etc/apt/apt.conf.d/99labctl-snapshot").write_text(
            'Acquire::Check-Valid-Until "false";\n'
        )
        # no service may start inside the sandbox while packages install
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        with _mounted_system(root):
            install = (
                "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && "
                f"apt-get install -y -q --no-install-recommends {' '.join(PACKAGES)} && "
                "apt-get clean"
            )
            run(["chroot", str(root), "/bin/sh", "-c", install], "apt-get install VirtualBox")
        wheels = staging / "wheels"
        run(
            [
                "python3",
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(wheels),
                PYVBOX,
            ],
            "pip download pyvbox",
        )
        site = _site_packages(root)
        for wheel in wheels.glob("*.whl"):  # pure Python: a wheel is a zip of site-packages
            run(["python3", "-m", "zipfile", "-e", str(wheel), str(site)], "unpack pyvbox")
        shutil.rmtree(wheels)
        check = "import vboxapi, virtualbox, pydantic, paramiko, click, tenacity, jinja2, rich"
        run(["chroot", str(root), "python3", "-c", check], "import check")
        (staging / "recipe.json").write_text(
            json.dumps({**recipe(), "mirror": mirror, "built": time.time()}, indent=2) + "\n"
        )


def _site_packages(root: Path) -> Path:
    versions = sorted((root / "usr/lib").glob("python3.*"))
    if not versions:
        raise SandboxError("VirtualBox sandbox: no python3 in the sid root")
    site = root / "usr/local/lib" / versions[-1].name / "dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    return site


@contextlib.contextmanager
def _mounted_system(root: Path):  # type: ignore[no-untyped-def]
    mounted: list[Path] = []
    try:
        for what in ("proc", "sys", "dev"):
            target = root / what
            target.mkdir(exist_ok=True)
            _mount(["--rbind", f"/{what}", str(target)])
            _mount(["--make-rslave", str(target)])
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            _umount(target)


def _mount(args: Sequence[str]) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SandboxError(f"mount {' '.join(args)}: {done.stderr.strip()}")


def _umount(target: Path) -> None:
    done = subprocess.run(["umount", "-R", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point == str(path) or point.startswith(prefix):
                found.append(point)
    return found


def _unmount_below(path: Path) -> None:
    for point in sorted(_mounts_below(path), key=len, reverse=True):
        _umount(Path(point))


def processes_in(root: Path) -> list[int]:
    """PIDs of every process whose root directory is ``root`` (or below it)."""
    pids = []
    want = str(root)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            their_root = os.readlink(proc / "root")
            if their_root == want or their_root.startswith(want + "/"):
                pids.append(int(proc.name))
    return pids


@dataclass
class SandboxRun:
    """One test session's VirtualBox host: an overlay on the cached build (see module doc).

    Attributes:
        root: the merged root the VirtualBox processes run in.
        vboxmanage: host path of the run's VBoxManage wrapper (for ``lab.virtualbox.vboxmanage``).
        version: ``VBoxManage --version`` of the sandbox.
    """

    build: Build
    base: Path
    root: Path = field(init=False)
    vboxmanage: Path = field(init=False)
    version: str = ""
    # helpers that live as long as the run (e.g. hv_server processes), closed before teardown
    servers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.base / "merged"
        self.vboxmanage = self.base / "bin" / "VBoxManage"

    @classmethod
    def open(cls, build: Build, *, vbox: bool = True) -> SandboxRun:
        """A new run; ``vbox=False`` for scratch work (builds) that needs no VBoxSVC."""
        RUNS.mkdir(parents=True, exist_ok=True)
        run = cls(build, Path(tempfile.mkdtemp(prefix="run-", dir=RUNS)))
        try:
            run._setup(vbox)
        except BaseException:
            run.close()
            raise
        return run

    def _setup(self, vbox: bool = True) -> None:
        upper, work = self.base / "upper", self.base / "work"
        for d in (upper, work, self.root, self.vboxmanage.parent):
            d.mkdir(parents=True)
        _mount(
            [
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.build.lowerdir()},upperdir={upper},workdir={work}",
                str(self.root),
            ]
        )
        for what in ("proc", "sys", "dev"):
            _mount(["--rbind", f"/{what}", str(self.root / what)])
            _mount(["--make-rslave", str(self.root / what)])
        (self.root / SRC.lstrip("/")).mkdir()
        _mount(["--bind", str(REPO), str(self.root / SRC.lstrip("/"))])
        _mount(["-o", "remount,bind,ro", str(self.root / SRC.lstrip("/"))])
        (self.root / VBOX_HOME.lstrip("/")).mkdir()
        self.vboxmanage.write_text(
            "#!/bin/sh\n"
            "# labctl test harness: the real VBoxManage of the VirtualBox sandbox\n"
            f"exec chroot {shlex.quote(str(self.root))} /usr/bin/env -i PATH={_PATH} "
            f'HOME=/root VBOX_USER_HOME={VBOX_HOME} {VBOXMANAGE} "$@"\n'
        )
        self.vboxmanage.chmod(0o755)
        if not vbox:
            return
        self.version = self.manage("--version").stdout.strip()
        self.manage("setproperty", "machinefolder", f"{VBOX_HOME}/machines")

    # -- running things inside ------------------------------------------------------------

    def env(self) -> list[str]:
        return [
            "/usr/bin/env",
            "-i",
            f"PATH={_PATH}",
            "HOME=/root",
            f"VBOX_USER_HOME={VBOX_HOME}",
            f"PYTHONPATH={SRC}",
            "PYTHONDONTWRITEBYTECODE=1",
        ]

    def argv(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        """argv to run ``argv`` inside the sandbox with the run's VirtualBox environment
        (plus ``env``)."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return ["chroot", str(self.root), *self.env(), *extra, *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 300, input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*argv, env=env),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise SandboxError(
                f"in the sandbox: {shlex.join(argv)} -> exit {done.returncode}: "
                f"{done.stderr.strip()[-800:]}"
            )
        return done

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real VBoxManage (not through labctl)."""
        return self.run(VBOXMANAGE, *args, check=check)

    def labctl(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """labctl's own CLI, run by the sandbox's Python (where vboxapi and pyvbox exist)."""
        return self.run("python3", "-m", "labctl", *args, check=False, timeout=timeout, env=env)

    def host_path(self, inside: str) -> Path:
        """Where a path of the sandbox is seen from the host."""
        return self.root / inside.lstrip("/")

    def inside_path(self, host: Path) -> str:
        """The sandbox path of a host path below the merged root."""
        return "/" + str(host.relative_to(self.root))

    # -- teardown ---------------------------------------------------------------------------

    def stop_processes(self) -> None:
        """End VBoxSVC and every other process of this run by PID (TERM, then KILL)."""
        deadline = time.monotonic() + 10
        sig = signal.SIGTERM
        while pids := processes_in(self.root):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            time.sleep(0.1)

    def close(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.close()
        self.servers.clear()
        self.stop_processes()
        _unmount_below(self.root)
        shutil.rmtree(self.base, ignore_errors=True)
