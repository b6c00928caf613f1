"""The base image cache: recipe-addressed, built aside and renamed into place."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.errors import OperationFailed
from labctl.hypervisor import nspawn_image


@pytest.fixture(autouse=True)
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABCTL_IMAGES", str(tmp_path / "images"))
    return tmp_path / "images"


def _fake_build(staging: Path, suite: str, say: nspawn_image.Progress) -> None:
    (staging / "rootfs").mkdir(parents=True)
    say("image: fake build")
    (staging / "recipe.json").write_text("{}")


def test_a_changed_recipe_means_a_new_image(monkeypatch: pytest.MonkeyPatch) -> None:
    before = nspawn_image.family("bookworm")
    monkeypatch.setattr(nspawn_image, "CACHED_PACKAGES", ("keepalived", "tcpdump"))
    after = nspawn_image.family("bookworm")
    assert before != after and before.parent == after.parent


def test_build_once_then_reuse(monkeypatch: pytest.MonkeyPatch, images: Path) -> None:
    calls: list[str] = []

    def build(staging: Path, suite: str, say: nspawn_image.Progress) -> None:
        calls.append(suite)
        _fake_build(staging, suite, say)

    monkeypatch.setattr(nspawn_image, "_build_into", build)
    lines: list[str] = []
    first = nspawn_image.ensure_image("bookworm", progress=lines.append)
    second = nspawn_image.ensure_image("bookworm")
    assert first.built and not second.built and calls == ["bookworm"]
    assert first.image == second.image and (first.image.rootfs).is_dir()
    assert "image: fake build" in lines
    assert [p.name for p in images.iterdir() if not p.name.startswith(".build")] == [
        nspawn_image.family("bookworm").name
    ]
    lines.clear()
    rebuilt = nspawn_image.ensure_image("bookworm", rebuild=True, progress=lines.append)
    assert rebuilt.built and calls == ["bookworm", "bookworm"]
    assert nspawn_image.find_image("bookworm") == rebuilt.image != first.image
    # machines made from the first build keep their lower layer
    assert first.image.rootfs.is_dir()
    assert any(str(first.image.path) in line for line in lines)


def test_a_failed_build_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, images: Path
) -> None:
    def broken(staging: Path, suite: str, say: nspawn_image.Progress) -> None:
        (staging / "rootfs" / "usr").mkdir(parents=True)
        raise OperationFailed("image build: debootstrap failed (exit 1)")

    monkeypatch.setattr(nspawn_image, "_build_into", broken)
    with pytest.raises(OperationFailed, match="debootstrap failed"):
        nspawn_image.ensure_image("bookworm")
    assert nspawn_image.find_image("bookworm") is None
    assert [p.name for p in images.iterdir() if not p.name.endswith(".lock")] == []


def test_a_failed_rebuild_keeps_the_old_image(
    monkeypatch: pytest.MonkeyPatch, images: Path
) -> None:
    monkeypatch.setattr(nspawn_image, "_build_into", _fake_build)
    old = nspawn_image.ensure_image("bookworm").image

    def broken(staging: Path, suite: str, say: nspawn_image.Progress) -> None:
        raise OperationFailed("image build: apt-get failed")

    monkeypatch.setattr(nspawn_image, "_build_into", broken)
    with pytest.raises(OperationFailed):
        nspawn_image.ensure_image("bookworm", rebuild=True)
    assert nspawn_image.find_image("bookworm") == old
