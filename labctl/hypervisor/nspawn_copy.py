"""Copying machine trees: plain copies and flattening overlay layers into one plain tree.

Flattening copies the bottom layer with ``cp -a --reflink=auto`` (as fast as copying any tree)
and then applies each upper layer, which holds only what the machine changed: whiteouts
delete, opaque directories replace, everything else is copied over. Reading through a mounted
overlay instead was measured 1.3-1.6x slower than ``cp -a``. Layers using overlayfs features
this does not interpret (metacopy, redirect_dir) are copied through a read-only overlay mount.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from labctl.hypervisor import nspawn_net as net

_OVERLAY_XATTR = "trusted.overlay."
_UNSUPPORTED = ("trusted.overlay.metacopy", "trusted.overlay.redirect")


def copy_tree(src: Path, dest: Path) -> None:
    """``cp -a --reflink=auto`` (reflinks on btrfs/xfs, a plain copy elsewhere)."""
    net.run(["cp", "-a", "--reflink=auto", "--", str(src), str(dest)])


def flatten(layers: Sequence[str], dest: Path) -> None:
    """Write the merged view of overlay ``layers`` (topmost first) to ``dest`` as a plain tree."""
    if len(layers) == 1:
        copy_tree(Path(layers[0]), dest)
        return
    uppers = [Path(p) for p in reversed(layers[:-1])]  # bottom-most upper first
    if any(_uses_unsupported_features(layer) for layer in uppers):
        _flatten_through_mount(layers, dest)
        return
    copy_tree(Path(layers[-1]), dest)
    for layer in uppers:
        _apply_layer(layer, dest)


def _xattrs(path: str) -> list[str]:
    try:
        return [
            x for x in os.listxattr(path, follow_symlinks=False) if x.startswith(_OVERLAY_XATTR)
        ]
    except OSError:
        return []


def _uses_unsupported_features(layer: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(layer):
        for name in (*dirnames, *filenames):
            if any(x.startswith(_UNSUPPORTED) for x in _xattrs(os.path.join(dirpath, name))):
                return True
    return False


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _apply_layer(layer: Path, dest: Path) -> None:
    """Apply one overlay upper layer onto the plain tree ``dest``."""
    whiteouts: list[Path] = []
    marked: list[Path] = [dest] if _xattrs(str(layer)) else []
    for dirpath, dirnames, filenames in os.walk(layer):
        rel = Path(dirpath).relative_to(layer)
        for name in (*dirnames, *filenames):
            src = Path(dirpath) / name
            target = dest / rel / name
            st = src.lstat()
            if _is_whiteout(st):
                _remove(target)
                whiteouts.append(target)
                continue
            xattrs = _xattrs(str(src))
            if xattrs:
                marked.append(target)
            src_is_dir = stat.S_ISDIR(st.st_mode)
            dest_is_dir = target.is_dir() and not target.is_symlink()
            if target.exists() or target.is_symlink():
                opaque = src_is_dir and _opaque(src)
                if src_is_dir != dest_is_dir or opaque:
                    _remove(target)
    copy_tree_contents(layer, dest)
    for target in whiteouts:  # cp copied the whiteout devices themselves
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
    for target in marked:
        for attr in _xattrs(str(target)):
            with contextlib.suppress(OSError):
                os.removexattr(target, attr, follow_symlinks=False)


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def copy_tree_contents(src: Path, dest: Path) -> None:
    """Copy everything inside ``src`` into the existing directory ``dest`` (cp -a semantics)."""
    net.run(["cp", "-a", "--reflink=auto", "--", f"{src}/.", f"{dest}/"])


def _flatten_through_mount(layers: Sequence[str], dest: Path) -> None:
    view = dest.parent / "view"
    view.mkdir()
    opts = f"ro,lowerdir={':'.join(layers)}"
    script = (
        f"set -e\nmount -t overlay overlay -o {shlex.quote(opts)} {shlex.quote(str(view))}\n"
        f"cp -a --reflink=auto {shlex.quote(str(view))}/. {shlex.quote(str(dest))}/"
    )
    dest.mkdir()
    try:
        net.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    finally:
        view.rmdir()
