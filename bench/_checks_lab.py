"""A throwaway nspawn lab for the benchmarks: N provisioned pairs on a private bridge.

Reuses the lab tests' helpers (subnet and bridge allocation, profile writer, bring-up, sweep),
so a benchmark leaves nothing behind either. Needs root, like the lab tests.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from labctl.cli import run
from labctl.hypervisor.nspawn_image import ensure_image
from labctl.profile import Profile
from tests.lab.conftest import (
    DEFAULT_IMAGES,
    LabEnv,
    _allocate_subnet,
    _pick_bridge,
    _sweep,
    bring_up,
    write_profile,
)


@contextlib.contextmanager
def provisioned_lab(pairs: int, pair_extra: Mapping[str, Any] | None = None) -> Iterator[Profile]:
    """Boot ``pairs`` pairs (production + linked clone), provision them, wait until OK.

    ``pair_extra`` overrides keys of every pair table (e.g. VRRPv3 with 0.1 s adverts).
    """
    if os.geteuid() != 0:
        raise SystemExit("benchmarks boot nspawn guests: run as root")
    images = Path(os.environ.get("LABCTL_IMAGES") or DEFAULT_IMAGES)
    workdir = Path(tempfile.mkdtemp(prefix="labctl-bench-"))
    saved = {k: os.environ.get(k) for k in ("LABCTL_HOME", "LABCTL_IMAGES")}
    with _allocate_subnet() as network:
        env = LabEnv(
            bridge=_pick_bridge(),
            network=network,
            home=workdir / "home",
            images=images,
            workdir=workdir,
        )
        os.environ["LABCTL_HOME"] = str(env.home)
        os.environ["LABCTL_IMAGES"] = str(images)
        try:
            ensure_image("bookworm")
            prof = write_profile(env, workdir, pairs, pair_extra=pair_extra)
            bring_up(prof)
            names = list(prof.pairs)
            with contextlib.redirect_stdout(sys.stderr):
                if run(["-p", str(prof.path), "provision", "pair", *names]) != 0:
                    raise SystemExit("provisioning the benchmark lab failed")
                if run(["-p", str(prof.path), "verify", "--wait", "90"]) != 0:
                    raise SystemExit("the benchmark lab did not converge to OK")
            yield prof
        finally:
            _sweep(env)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
