"""The contract suite's harness: what a backend must provide to be tested, and the registry.

Every test in tests/contract runs once per entry of ``CONTRACT_BACKENDS``. An entry is a
factory that sets up one backend for one test and tears it down afterwards::

    @contract_backend("nspawn")
    def nspawn_backend(env: ContractEnv) -> Iterator[ContractBackend]:
        lab = ...                      # build what the backend needs under env.tmp_path
        try:
            yield ContractBackend(
                hypervisor=...,        # the labctl.hypervisor.Hypervisor under test
                make_machine=...,      # a stopped production machine, as the backend has it
                make_foreign=...,      # a stopped machine labctl did NOT create for this lab
                exists=...,            # does a machine of that name exist, seen from outside
                mac_of=...,            # the lab NIC's MAC, observed outside the backend
                link_up=...,           # is the lab NIC's cable connected, observed outside
            )
        finally:
            ...                        # remove every machine, bridge, process, directory

The factory's name is the test id suffix: say how the backend runs (``vboxmanage-fake-no-
virtualbox-here``, ``nspawn-real``). Put it in a module ``tests/contract/backends_<name>.py``
and import that module in ``tests/contract/conftest.py``; that is all.

The probes (``mac_of``, ``link_up``, ``exists``) look from outside the Hypervisor interface
(the fake's state, ``ip link`` on the host side of a veth...), so the suite checks what a user
would see, not what the backend says about itself.

Notes for nspawn (labctl.hypervisor.nspawn): production machines are labctl's (make_machine =
``NspawnHypervisor.create`` from the image, they are managed); make_foreign = a machine of
another lab (a second NspawnHypervisor with another lab name), which this lab's backend cannot
see (inspect ABSENT; the suite accepts that). ``mac_of`` is also called on stopped machines:
nspawn derives the guest MAC from the unit name at boot, so return that MAC computed the same
way (or the unit name it is derived from: the suite only compares MACs for equality).
``link_up`` can read the host-side veth (``ip -j link show vb-<unit>``) of a running machine
and the backend's recorded link state of a stopped one. Reuse tests/lab/conftest.py's lab
environment (bridge, subnet, cached image) through ``env.request.getfixturevalue``; a missing
prerequisite must fail, not skip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl.hypervisor import Hypervisor


@dataclass(frozen=True)
class ContractEnv:
    """What a backend factory gets.

    Attributes:
        tmp_path: a directory private to this test.
        monkeypatch: pytest's monkeypatch (environment, sys.modules), undone after the test.
        request: the test's request; ``request.getfixturevalue("lab_env")`` reaches
            session-wide resources (import such a fixture into tests/contract/conftest.py).
    """

    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest


@dataclass(frozen=True)
class ContractBackend:
    """One backend set up for one test.

    Attributes:
        hypervisor: the backend under test.
        make_machine: create a stopped, bootable production machine as it exists on this
            backend before labctl clones it (VirtualBox: the user's VM, not labctl's; nspawn:
            made from the image), whose guest runs ``/bin/sh`` through exec_in_guest.
        make_foreign: create a stopped machine labctl did not create for this lab (VirtualBox:
            any VM without the lab's tag; nspawn: a machine of another lab). list must not show
            it; inspect reports it unmanaged or, where the backend only sees its own lab, ABSENT;
            destroy must leave it alone (refuse, or not see it).
        exists: whether a machine of that name exists, observed outside the backend.
        mac_of: the MAC address of a machine's lab NIC, observed outside the backend.
        link_up: whether a machine's lab NIC has its cable connected, observed outside.
    """

    hypervisor: Hypervisor
    make_machine: Callable[[str], None]
    make_foreign: Callable[[str], None]
    exists: Callable[[str], bool]
    mac_of: Callable[[str], str]
    link_up: Callable[[str], bool]


BackendFactory = Callable[[ContractEnv], AbstractContextManager[ContractBackend]]
CONTRACT_BACKENDS: dict[str, BackendFactory] = {}
# backends whose machines can run here; tests marked ``running_vm`` use only these
RUNS_VMS: set[str] = set()


def contract_backend(
    backend_id: str, *, runs_vms: bool = True
) -> Callable[[Callable[[ContractEnv], Iterator[ContractBackend]]], BackendFactory]:
    """Register a generator factory under ``backend_id`` (the parametrized test id).

    ``runs_vms=False``: the backend's machines cannot run on this host (real VirtualBox without
    its kernel driver); it takes part only in the tests not marked ``running_vm``.
    """

    def register(factory: Callable[[ContractEnv], Iterator[ContractBackend]]) -> BackendFactory:
        if backend_id in CONTRACT_BACKENDS:
            raise ValueError(f"contract backend {backend_id!r} registered twice")
        wrapped = contextmanager(factory)
        CONTRACT_BACKENDS[backend_id] = wrapped
        if runs_vms:
            RUNS_VMS.add(backend_id)
        return wrapped

    return register


def eventually(condition: Callable[[], bool], what: str, *, deadline: float = 60.0) -> None:
    """Await a condition a backend reaches asynchronously (a graceful stop), polling it.

    The deadline only keeps a broken backend from hanging the suite; it is not a timing
    assertion. Fakes reach the condition within a few polls.
    """
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not reached within {deadline:.0f} s")
        time.sleep(0.02)
