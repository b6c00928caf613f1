"""The two VirtualBox backends in the contract suite, each against its fake.

VirtualBox cannot run on the machines these tests run on: ``vboxmanage`` drives the fake
VBoxManage executable (tests/fakes/fake_vboxmanage.py), ``pyvbox`` the fake ``virtualbox``
module (tests/fakes/fake_virtualbox.py); both fakes share one model of a VirtualBox host
(tests/fakes/vbox_world.py), which the probes read directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from labctl.hypervisor import get_hypervisor
from labctl.profile import Profile
from tests.contract.harness import ContractBackend, ContractEnv, contract_backend
from tests.fakes.fake_virtualbox import FakeVirtualBoxApi
from tests.fakes.install import install_vboxmanage, pretend_kernel_driver
from tests.fakes.vbox_world import STOPPED_STATES, Vm, World, opened

GUEST_USER = "labctl"
GUEST_PASSWORD_ENV = "LABCTL_CONTRACT_GUEST_PASSWORD"
GUEST_PASSWORD = "contract-guest-pw"


def vbox_profile(driver: str, **virtualbox: Any) -> Profile:
    """A VirtualBox profile for lab 'contract' (its machines are never contacted)."""
    return Profile.model_validate(
        {
            "lab": {
                "name": "contract",
                "backend": "virtualbox",
                "virtualbox": {
                    "driver": driver,
                    "guest_user": GUEST_USER,
                    "guest_password_env": GUEST_PASSWORD_ENV,
                    **virtualbox,
                },
            },
            "machines": {"prod": {"address": "10.249.99.5/24"}},
        }
    )


def _mac(vm: Vm) -> str:
    return vm.nics["1"].mac


def _link_up(vm: Vm) -> bool:
    nic = vm.nics["1"]
    return nic.cable if vm.state in STOPPED_STATES else nic.live_cable


@contract_backend("vboxmanage-fake-no-virtualbox-here")
def vboxmanage_backend(env: ContractEnv) -> Iterator[ContractBackend]:
    state = env.tmp_path / "fake-virtualbox.json"
    env.monkeypatch.setenv("FAKE_VBOX_STATE", str(state))
    env.monkeypatch.setenv(GUEST_PASSWORD_ENV, GUEST_PASSWORD)
    pretend_kernel_driver(env.monkeypatch)
    vboxmanage = install_vboxmanage(env.tmp_path / "bin")
    hypervisor = get_hypervisor(vbox_profile("vboxmanage", vboxmanage=str(vboxmanage)))
    hypervisor.check()

    def peek() -> World:
        return World.from_json(json.loads(state.read_text()))

    def make_machine(name: str) -> None:
        with opened(state) as world:
            world.create(name, guest_accounts={GUEST_USER: GUEST_PASSWORD})

    yield ContractBackend(
        hypervisor=hypervisor,
        make_machine=make_machine,
        make_foreign=make_machine,  # VirtualBox production VMs are the user's, not labctl's
        exists=lambda name: name in peek().machines,
        mac_of=lambda name: _mac(peek().find(name)),
        link_up=lambda name: _link_up(peek().find(name)),
    )


@contract_backend("pyvbox-fake-no-virtualbox-here")
def pyvbox_backend(env: ContractEnv) -> Iterator[ContractBackend]:
    world = World()
    api = FakeVirtualBoxApi(world)
    # the fake module stands in for pyvbox for this test only
    env.monkeypatch.setitem(sys.modules, "virtualbox", api.module)
    env.monkeypatch.setitem(sys.modules, "virtualbox.library", api.lib)
    env.monkeypatch.setenv(GUEST_PASSWORD_ENV, GUEST_PASSWORD)
    pretend_kernel_driver(env.monkeypatch)
    hypervisor = get_hypervisor(vbox_profile("pyvbox"))
    hypervisor.check()

    def make_machine(name: str) -> None:
        world.create(name, guest_accounts={GUEST_USER: GUEST_PASSWORD})

    yield ContractBackend(
        hypervisor=hypervisor,
        make_machine=make_machine,
        make_foreign=make_machine,  # VirtualBox production VMs are the user's, not labctl's
        exists=lambda name: name in world.machines,
        mac_of=lambda name: _mac(world.find(name)),
        link_up=lambda name: _link_up(world.find(name)),
    )
