"""Test-only tools for lab guests and the host, shared by lab tests and bench/.

* ``install_in_guests``: Debian packages the base image does not carry (python3 for Ansible's
  modules, nftables for in-guest partitions). The guests have no route out, so the host
  fetches the .debs the guest's apt asks for with apt's own helper (from the Debian mirror
  the image was built from), caches them, copies them in over SFTP and installs them offline.
* ``ansible_venv``: ansible-core, a test- and benchmark-only dependency, in a venv of its own
  (never in labctl's), installed on first use by the test command itself.

Both cache under /var/cache/labctl (kept across runs, built under a lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labctl.hypervisor import Hypervisor
from labctl.ops.connect import close_all, connect_all
from labctl.profile import Profile

CACHE = Path("/var/cache/labctl")
DEBS = CACHE / "debs"
ANSIBLE_VENV = CACHE / "ansible-venv"
ANSIBLE_CORE = "ansible-core>=2.16"


class ToolSetupFailed(RuntimeError):
    """A test prerequisite could not be installed (the test fails, it does not skip)."""


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def ansible_venv() -> Path:
    """The venv holding ansible-playbook, created on first use."""
    playbook = ANSIBLE_VENV / "bin" / "ansible-playbook"
    with _locked("ansible-venv"):
        if not playbook.exists():
            print(
                "installing ansible-core into its own venv (test-only dependency)",
                file=sys.stderr,
                flush=True,
            )
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(ANSIBLE_VENV)],
                [
                    str(ANSIBLE_VENV / "bin" / "pip"),
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    ANSIBLE_CORE,
                ],
            ]
            for argv in steps:
                done = subprocess.run(argv, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise ToolSetupFailed(f"{' '.join(argv)} failed: {done.stderr[-1500:]}")
    return ANSIBLE_VENV


def _exec(hv: Hypervisor, name: str, script: str, timeout: float = 300) -> str:
    result = hv.exec_in_guest(name, ["sh", "-c", script], timeout=timeout)
    if result.exit_code != 0:
        raise ToolSetupFailed(
            f"{name}: {script.strip()[:70]} exited {result.exit_code}: {result.stderr[-800:]}"
        )
    return result.stdout


def _fetch(uris_output: str) -> list[Path]:
    """Download (once) every .deb that ``apt-get install --print-uris`` listed."""
    DEBS.mkdir(parents=True, exist_ok=True)
    wanted = []
    for line in uris_output.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].startswith("'"):
            uri, filename, checksum = parts[0].strip("'"), parts[1], parts[3]
            target = DEBS / filename
            wanted.append(target)
            if not target.exists():
                done = subprocess.run(
                    ["/usr/lib/apt/apt-helper", "download-file", uri, str(target), checksum],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise ToolSetupFailed(f"apt-helper download-file {uri}: {done.stderr[-500:]}")
    return wanted


def install_in_guests(
    profile: Profile, hv: Hypervisor, names: Sequence[str], packages: Sequence[str]
) -> None:
    """Install Debian ``packages`` into the running guests ``names`` (offline inside)."""
    addresses = {name: address for name, address, _ in profile.all_nodes()}
    pkgs = " ".join(packages)
    with _locked("debs"):
        debs = _fetch(_exec(hv, names[0], f"apt-get install -y -qq --print-uris {pkgs}"))
    if not debs:
        return  # already installed
    remotes = connect_all(profile, [(name, addresses[name]) for name in names])
    try:

        def install(name: str) -> None:
            for deb in debs:
                remotes[name].put(deb.read_bytes(), f"/var/cache/apt/archives/{deb.name}")
            _exec(
                hv,
                name,
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                f"--no-download {pkgs} >/dev/null",
            )

        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(install, names))
    finally:
        close_all(remotes.values())


def ansible_env(profile: Profile, workdir: Path) -> dict[str, str]:
    """How the tests and bench run ansible-playbook against a lab: the lab's trusted host
    keys (strict checking), pipelining and a persistent connection per host (tuned as a
    careful user would), no retry files. The exported files themselves are not changed."""
    from labctl import paths

    control = workdir / "cp"
    control.mkdir(parents=True, exist_ok=True)
    known = paths.known_hosts_path(profile.lab.name)
    return dict(
        os.environ,
        ANSIBLE_PIPELINING="true",
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(control),
        ANSIBLE_SSH_ARGS=(
            "-o ControlMaster=auto -o ControlPersist=120s -o BatchMode=yes "
            f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
        ),
        ANSIBLE_HOST_KEY_CHECKING="true",
        ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
        ANSIBLE_RETRY_FILES_ENABLED="false",
        ANSIBLE_FORKS="32",
        ANSIBLE_NOCOLOR="1",
    )


def close_ansible_connections(workdir: Path) -> None:
    """End the persistent SSH connections ``ansible_env(profile, workdir)`` left running."""
    control = workdir / "cp"
    for socket_path in control.glob("*") if control.is_dir() else []:
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "labctl-control"],
            capture_output=True,
            timeout=30,
            check=False,
        )


RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of ansible-playbook's output: host -> ok/changed/unreachable/failed."""
    return {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        for m in RECAP.finditer(output)
    }
