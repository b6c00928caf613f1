"""Fixtures of the contract suite: ``backend`` is parametrized over CONTRACT_BACKENDS.

To add a backend, see tests/contract/harness.py: register a factory with
``@contract_backend("<id>")`` in a module tests/contract/backends_<name>.py and import it here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Each import registers its backends in CONTRACT_BACKENDS (order = order of the test ids).
from tests.contract import backends_nspawn, backends_vbox  # noqa: F401
from tests.contract.harness import CONTRACT_BACKENDS, ContractBackend, ContractEnv
from tests.lab.conftest import lab_env  # noqa: F401  (session lab for the nspawn backend)


@pytest.fixture(params=list(CONTRACT_BACKENDS))
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ContractBackend]:
    """One backend, set up for this test only and torn down afterwards."""
    factory = CONTRACT_BACKENDS[request.param]
    with factory(ContractEnv(tmp_path, monkeypatch, request)) as contract:
        yield contract
