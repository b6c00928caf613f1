"""Flattening overlay layers gives exactly the tree the mounted overlay shows."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labctl.hypervisor.nspawn_copy import flatten

pytestmark = pytest.mark.lab

# Changes made through a real overlay mount, so the upper layer holds real whiteouts,
# opaque directories and copied-up files.
CHANGES = """
set -e
cd "$1"
echo changed > etc/config
rm etc/removed
rm -r gone
rm -r replaced && mkdir replaced && echo new > replaced/only
rm file-becomes-dir && mkdir file-becomes-dir && echo inside > file-becomes-dir/x
rm -r dir-becomes-file && echo now-a-file > dir-becomes-file
mkdir -p brand/new && echo hello > brand/new/file
chmod 700 etc
ln -s etc/config link
"""


def _make_lower(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/config").write_text("original\n")
    (root / "etc/removed").write_text("x\n")
    (root / "etc/kept").write_text("kept\n")
    for d in ("gone/sub", "replaced/old", "dir-becomes-file/sub"):
        (root / d).mkdir(parents=True)
        (root / d / "f").write_text("f\n")
    (root / "file-becomes-dir").write_text("file\n")


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                content = "-> " + os.readlink(p)
            elif p.is_file():
                content = p.read_text()
            else:
                content = ""
            out[str(p.relative_to(root))] = (st.st_mode, content)
            if p.is_file() and not p.is_symlink():
                assert not os.listxattr(p, follow_symlinks=False) or all(
                    not x.startswith("trusted.overlay.") for x in os.listxattr(p)
                )
    return out


def test_flatten_matches_the_overlay_view(tmp_path: Path) -> None:
    lower, upper, work, view, flat = (
        tmp_path / n for n in ("lower", "upper", "work", "view", "flat")
    )
    for d in (upper, work, view):
        d.mkdir()
    _make_lower(lower)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t overlay overlay -o {opts} "$1" && sh -c "$0" changes "$1"',
            CHANGES,
            str(view),
        ],
        check=True,
    )
    expected_dir = tmp_path / "expected"
    expected_dir.mkdir()
    subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t overlay overlay -o ro,lowerdir={upper}:{lower} "$0" && cp -a "$0"/. "$1"/',
            str(view),
            str(expected_dir),
        ],
        check=True,
    )
    flatten([str(upper), str(lower)], flat)
    assert _snapshot(flat) == _snapshot(expected_dir)
    assert "gone" not in _snapshot(flat) and (flat / "replaced/only").exists()
    assert not (flat / "replaced/old").exists()
