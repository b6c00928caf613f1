"""The harness's build-once cache (tests/vbox/cache.py): what every cold build relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vbox.cache import cached, recipe_digest


def test_an_artifact_is_built_once_and_then_found(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABCTL_VBOX_CACHE", str(tmp_path))
    calls: list[Path] = []

    def build(staging: Path) -> None:
        calls.append(staging)
        (staging / "thing").write_text("made\n")

    name = f"thing-{recipe_digest({'v': 1})}"
    first = cached(name, {"v": 1}, build)
    again = cached(name, {"v": 1}, build)
    assert (first.built, again.built, len(calls)) == (True, False, 1)
    assert first.path == again.path == tmp_path / name
    assert (first.path / "thing").read_text() == "made\n"
    assert '"v": 1' in (first.path / "recipe.json").read_text()
    assert recipe_digest({"v": 2}) != recipe_digest({"v": 1})


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABCTL_VBOX_CACHE", str(tmp_path))

    def build(staging: Path) -> None:
        (staging / "half").write_text("x")
        raise RuntimeError("the build broke")

    with pytest.raises(RuntimeError, match="the build broke"):
        cached("thing-0", {}, build)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock-thing"]
