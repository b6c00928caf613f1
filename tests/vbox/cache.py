"""Build-once artifacts of the VirtualBox tiers, keyed by their recipe (test harness).

Every heavy artifact (the sandbox, its VM layer, the guest kernel, the guest disk, the saved
production VM) is a directory ``$LABCTL_VBOX_CACHE/<name>`` where the name carries the hash of
its recipe. :func:`cached` returns it when complete (``recipe.json`` is written last), else
builds it once under a lock: in a staging directory beside it, renamed into place only when
the build succeeded. A failed or interrupted build unmounts and removes its staging directory
and leaves nothing behind; a finished directory is never modified.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = "/var/cache/labctl/vbox-sandbox"


def cache_dir() -> Path:
    return Path(os.environ.get("LABCTL_VBOX_CACHE") or DEFAULT_CACHE)


def recipe_digest(recipe: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Cached:
    """A finished artifact: ``path`` its directory, ``seconds`` what building it took (0 when
    it was already there), ``built`` whether this call built it."""

    path: Path
    seconds: float
    built: bool


def cached(
    name: str, recipe: dict[str, object], build: Callable[[Path], None],
    *, lock: str | None = None,
) -> Cached:  # fmt: skip
    """The artifact directory ``name`` (which should carry ``recipe_digest(recipe)``), built by
    ``build(staging)`` first when missing. ``lock`` names the lock file (default: ``name``'s
    kind, the part before the last ``-``)."""
    from tests.vbox.sandbox import _unmount_below  # the sandbox module builds on this one

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / name
    if (final / "recipe.json").is_file():
        return Cached(final, 0.0, False)
    kind = lock or name.rpartition("-")[0] or name
    with open(cache / f".lock-{kind}", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        if (final / "recipe.json").is_file():  # another run built it meanwhile
            return Cached(final, 0.0, False)
        started = time.monotonic()
        staging = cache / f".build-{name}-{uuid.uuid4().hex[:6]}"
        staging.mkdir()
        try:
            build(staging)
            seconds = time.monotonic() - started
            (staging / "recipe.json").write_text(
                json.dumps({**recipe, "built": time.time(), "seconds": seconds}, indent=2) + "\n"
            )
            staging.rename(final)
        except BaseException:
            _unmount_below(staging)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Cached(final, seconds, True)
