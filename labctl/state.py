"""What labctl created for a lab: machines, their kind and role, kept in one JSON file.

The file lives in ``labctl.paths.lab_dir(lab)``. Writers take an exclusive ``fcntl`` lock on a
sibling lock file for the whole read-modify-write, and write a temp file that is renamed over
the old one, so two labctl processes never corrupt it and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from labctl.errors import OperationFailed

STATE_VERSION = 1
Kind = Literal["overlay", "full"]
MachineRole = Literal["production", "standby"]


@dataclass
class MachineRecord:
    """A machine labctl created.

    Attributes:
        name: machine name (the profile's machine or standby name).
        role: production or standby.
        kind: ``overlay`` (upper dir over read-only lower layers) or ``full`` (a plain tree).
        lowers: for overlay machines, the read-only lower layers, topmost first.
        address: its address with prefix, as written into the guest.
        unit: the backend's own name for it (nspawn: the ``-M`` machine name, unique per
            lab directory, from which nspawn derives the veth name and the guest's MAC).
        source: for clones, the machine it was cloned from.
        link_up: whether its cable is connected (remembered for the next start).
    """

    name: str
    role: MachineRole
    kind: Kind
    address: str
    unit: str
    lowers: list[str] = field(default_factory=list)
    source: str | None = None
    link_up: bool = True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MachineRecord:
        return cls(
            name=str(data["name"]),
            role=data["role"],
            kind=data["kind"],
            address=str(data["address"]),
            unit=str(data["unit"]),
            lowers=[str(x) for x in data.get("lowers", [])],
            source=data.get("source"),
            link_up=bool(data.get("link_up", True)),
        )


@dataclass
class LabState:
    """Every machine labctl created for one lab."""

    machines: dict[str, MachineRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "machines": {name: asdict(rec) for name, rec in sorted(self.machines.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        machines = data.get("machines", {})
        return cls({name: MachineRecord.from_json(rec) for name, rec in machines.items()})


@contextlib.contextmanager
def lab_lock(directory: Path) -> Iterator[None]:
    """Hold the lab's exclusive lock (``state.lock``) for a read-modify-write."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "state.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def atomic_write(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class StateStore:
    """Load and change one lab's state file safely.

    Args:
        directory: the lab's directory (created on first write).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"
        self.lock_path = directory / "state.lock"

    def load(self) -> LabState:
        """The current state; an empty state when the file does not exist yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return LabState()
        try:
            return LabState.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise OperationFailed(
                f"lab state {self.path} is unreadable: {exc}",
                hint="inspect or remove the file; machines are under the same directory",
            ) from exc

    @contextlib.contextmanager
    def locked(self) -> Iterator[LabState]:
        """Hold the lab lock, yield the state, and save it when the block succeeds.

        The lock is not re-entrant: do not nest ``locked()`` (or ``lab_lock``) in one process.
        """
        with lab_lock(self.directory):
            state = self.load()
            yield state
            atomic_write(self.path, json.dumps(state.to_json(), indent=2) + "\n")
