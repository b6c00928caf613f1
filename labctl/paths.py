"""Where labctl keeps its state: images, machines, the lab SSH key, trusted host keys.

``$LABCTL_HOME`` overrides everything; otherwise ``$XDG_DATA_HOME/labctl``
(``~/.local/share/labctl``).
"""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """labctl's data directory (created on demand by whoever writes there)."""
    explicit = os.environ.get("LABCTL_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "labctl"


def images_dir() -> Path:
    """Base images, shared by every lab on this host."""
    explicit = os.environ.get("LABCTL_IMAGES")
    return Path(explicit).expanduser() if explicit else data_home() / "images"


def lab_dir(lab_name: str) -> Path:
    """Everything one lab owns: machines, state file, lock, keys."""
    return data_home() / "labs" / lab_name


def lab_key_path(lab_name: str) -> Path:
    """The lab's own SSH private key (nspawn guests trust its public half)."""
    return lab_dir(lab_name) / "id_ed25519"


def known_hosts_path(lab_name: str) -> Path:
    """labctl's record of trusted host keys for this lab (OpenSSH known_hosts format)."""
    return lab_dir(lab_name) / "known_hosts"
