"""Both VirtualBox drivers against real VirtualBox 7.2 (Debian's, in the project's sandbox).

VMs cannot run on the machines these tests run on (no kernel driver; see
tests/vbox/sandbox.py), so these backends take part in every contract test that needs no
running VM (``runs_vms=False``). ``vboxmanage`` runs on the host through the sandbox's
VBoxManage wrapper, exactly as a user's ``lab.virtualbox.vboxmanage`` setting would;
``pyvbox`` runs inside the sandbox's Python (tests/vbox/remote_hv.py), the only one with
VirtualBox's SDK. The probes read the real VBoxManage's showvminfo, outside labctl.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from labctl.hypervisor import get_hypervisor
from labctl.profile import Profile
from tests.contract.harness import ContractBackend, ContractEnv, contract_backend
from tests.vbox.fixtures import VmMaker
from tests.vbox.remote_hv import served
from tests.vbox.sandbox import SandboxRun


def real_profile(driver: str, vboxmanage: str = "VBoxManage") -> dict[str, Any]:
    """A VirtualBox profile for lab 'contract' (its machines are never contacted)."""
    return {
        "lab": {
            "name": "contract",
            "backend": "virtualbox",
            "virtualbox": {"driver": driver, "vboxmanage": vboxmanage},
        },
        "machines": {"prod": {"address": "10.249.99.5/24"}},
    }


def _backend(hypervisor: Any, vms: VmMaker) -> ContractBackend:
    return ContractBackend(
        hypervisor=hypervisor,
        make_machine=vms.create,
        make_foreign=vms.create,  # VirtualBox production VMs are the user's, not labctl's
        exists=vms.exists,
        mac_of=lambda name: vms.info(name)["macaddress1"],
        link_up=lambda name: vms.info(name)["cableconnected1"] == "on",
    )


@contract_backend("vboxmanage-real-7.2", runs_vms=False)
def vboxmanage_real(env: ContractEnv) -> Iterator[ContractBackend]:
    run: SandboxRun = env.request.getfixturevalue("vbox_sandbox")
    vms: VmMaker = env.request.getfixturevalue("vbox_vms")
    profile = Profile.model_validate(real_profile("vboxmanage", str(run.vboxmanage)))
    hypervisor = get_hypervisor(profile)
    hypervisor.check()
    yield _backend(hypervisor, vms)


@contract_backend("pyvbox-real-7.2", runs_vms=False)
def pyvbox_real(env: ContractEnv) -> Iterator[ContractBackend]:
    run: SandboxRun = env.request.getfixturevalue("vbox_sandbox")
    vms: VmMaker = env.request.getfixturevalue("vbox_vms")
    hypervisor = served(run, real_profile("pyvbox"))
    hypervisor.check()
    yield _backend(hypervisor, vms)
