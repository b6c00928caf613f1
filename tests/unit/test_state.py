"""Lab state: atomic, locked read-modify-write of what labctl created."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from labctl.errors import OperationFailed
from labctl.state import MachineRecord, StateStore


def _record(name: str) -> MachineRecord:
    return MachineRecord(
        name=name, role="production", kind="overlay", address="10.0.0.5/24", unit="lx"
    )


def test_missing_file_is_an_empty_lab(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "lab").load().machines == {}


def test_changes_inside_locked_are_saved(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "lab")
    with store.locked() as state:
        state.machines["a"] = _record("a")
    loaded = StateStore(tmp_path / "lab").load()
    assert loaded.machines["a"] == _record("a")
    assert json.loads(store.path.read_text())["machines"]["a"]["address"] == "10.0.0.5/24"
    assert sorted(p.name for p in store.directory.iterdir()) == ["state.json", "state.lock"]


def test_a_failed_change_is_not_saved(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.locked() as state:
        state.machines["a"] = _record("a")
    with pytest.raises(RuntimeError), store.locked() as state:
        state.machines.pop("a")
        raise RuntimeError("boom")
    assert "a" in store.load().machines


def test_unreadable_state_names_the_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text("{not json")
    with pytest.raises(OperationFailed, match=str(store.path)):
        store.load()


def _add_many(directory: str, prefix: str, count: int) -> None:
    store = StateStore(Path(directory))
    for i in range(count):
        with store.locked() as state:
            state.machines[f"{prefix}{i}"] = _record(f"{prefix}{i}")


def test_two_processes_do_not_lose_each_others_changes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_add_many, args=(str(tmp_path), p, 25)) for p in "xy"]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        assert w.exitcode == 0
    assert len(StateStore(tmp_path).load().machines) == 50
