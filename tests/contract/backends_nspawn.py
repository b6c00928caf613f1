"""The nspawn backend in the contract suite: real guests (systemd-nspawn) on the lab tests'
bridge, subnet and cached image (tests/lab/conftest.py's ``lab_env``; a missing prerequisite
fails the test).

Probes look from outside the Hypervisor interface: ``exists`` at the machine directories,
``link_up`` at the host-side veth (``ip -j link``) of a running machine and at the lab's
state file for a stopped one, ``mac_of`` at the nspawn unit name the guest MAC is derived from.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

from labctl.hypervisor.nspawn import NspawnHypervisor
from labctl.hypervisor.nspawn_image import ensure_image
from labctl.ops import lab as lab_ops
from labctl.profile import Profile
from tests.contract.harness import ContractBackend, ContractEnv, contract_backend
from tests.lab.conftest import LabEnv


def _profile(env: LabEnv, name: str, machines: list[str], standby: str | None) -> Profile:
    prof = {
        "lab": {
            "name": name,
            "backend": "nspawn",
            "nspawn": {"bridge": env.bridge, "subnet": str(env.network), "gateway": env.gateway},
        },
        "machines": {m: {"address": env.address()} for m in machines},
        "pairs": {},
    }
    if standby is not None:
        prof["pairs"] = {
            "p": {
                "primary": machines[0],
                "standby": standby,
                "standby_address": env.address(),
                "vrid": env.vrid(),
                "vip": [env.address()],
                "priority": {"primary": 101, "standby": 100},
                "auth_pass": "contract",
            }
        }
    profile = Profile.model_validate(prof)
    env.labs.append(profile)  # swept at the end of the session whatever happens
    return profile


@contract_backend("nspawn-real")
def nspawn_backend(env: ContractEnv) -> Iterator[ContractBackend]:
    lab_env: LabEnv = env.request.getfixturevalue("lab_env")
    image = ensure_image("bookworm").image
    ours = _profile(lab_env, lab_env.lab_name(), ["prod", "taken"], "standby")
    theirs = _profile(lab_env, lab_env.lab_name(), ["foreign"], None)
    hv, other = NspawnHypervisor(ours), NspawnHypervisor(theirs)

    def owner(name: str) -> NspawnHypervisor:
        return other if other.machine_dir(name).exists() else hv

    def make_machine(name: str) -> None:
        hv.create(name, image, address=ours.machines[name].address)

    def make_foreign(name: str) -> None:
        other.create(name, image, address=theirs.machines[name].address)

    def exists(name: str) -> bool:
        return hv.machine_dir(name).exists() or other.machine_dir(name).exists()

    def mac_of(name: str) -> str:
        return owner(name).unit(name)

    def link_up(name: str) -> bool:
        backend = owner(name)
        port = backend.port(name)
        if Path(f"/sys/class/net/{port}").exists():
            link = json.loads(
                subprocess.run(
                    ["ip", "-j", "link", "show", "dev", port],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )[0]
            return "UP" in link["flags"]
        state = json.loads(backend.store.path.read_text())
        return bool(state["machines"][name]["link_up"])

    try:
        yield ContractBackend(
            hypervisor=hv,
            make_machine=make_machine,
            make_foreign=make_foreign,
            exists=exists,
            mac_of=mac_of,
            link_up=link_up,
        )
    finally:
        lab_ops.destroy(ours, hv)
        lab_ops.destroy(theirs, other)
