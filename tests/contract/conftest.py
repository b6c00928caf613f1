"""Fixtures of the contract suite: ``backend`` is parametrized over CONTRACT_BACKENDS.

To add a backend, see tests/contract/harness.py: register a factory with
``@contract_backend("<id>")`` in a module tests/contract/backends_<name>.py and import it here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Each import registers its backends in CONTRACT_BACKENDS (order = order of the test ids).
from tests.contract import backends_nspawn, backends_vbox, backends_vbox_real  # noqa: F401
from tests.contract.harness import CONTRACT_BACKENDS, RUNS_VMS, ContractBackend, ContractEnv
from tests.lab.conftest import lab_env  # noqa: F401  (session lab for the nspawn backend)
from tests.vbox.fixtures import vbox_sandbox, vbox_vms  # noqa: F401  (real VirtualBox 7.2)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``backend``: tests marked ``running_vm`` only over backends that run VMs."""
    if "backend" not in metafunc.fixturenames:
        return
    needs_running = metafunc.definition.get_closest_marker("running_vm") is not None
    ids = [b for b in CONTRACT_BACKENDS if not needs_running or b in RUNS_VMS]
    metafunc.parametrize("backend", ids, indirect=True)


@pytest.fixture
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ContractBackend]:
    """One backend, set up for this test only and torn down afterwards."""
    factory = CONTRACT_BACKENDS[request.param]
    with factory(ContractEnv(tmp_path, monkeypatch, request)) as contract:
        yield contract
