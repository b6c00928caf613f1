"""Every command that takes a PRODUCTION, MACHINE or PAIR argument treats an unknown one as a
usage error: exit 2, one line naming the argument and the known names, nothing contacted."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from labctl import hypervisor as hypervisor_mod
from labctl.ops import connect as connect_ops
from tests.unit.conftest import CliResult

PAIRS = "(known: front, back, db)"
MACHINES = "(known: prod-front, prod-back, prod-db, prod-front-standby, prod-back-standby, "
PRIMARIES = "(known: prod-front, prod-back, prod-db)"

CASES = [
    (["render", "nosuch"], "PAIR: 'nosuch' is not a pair of lab local-lab " + PAIRS),
    (["up", "nosuch"], "MACHINE: 'nosuch' is not a machine of lab local-lab " + MACHINES),
    (["up", "prod-back", "nosuch"], "MACHINE: 'nosuch' is not a machine"),
    (["clone", "nosuch"], "PRODUCTION: 'nosuch' is not the primary of a pair of lab local-lab "
     + PRIMARIES),
    (["clone", "prod-back-standby"], "PRODUCTION: 'prod-back-standby' is not the primary"),
    (["provision", "pair", "nosuch"], "PAIR: 'nosuch' is not a pair of lab local-lab " + PAIRS),
    (["provision", "pair", "--dry-run", "back", "nosuch"], "PAIR: 'nosuch' is not a pair"),
    (["verify", "nosuch"], "PAIR: 'nosuch' is not a pair of lab local-lab " + PAIRS),
    (["verify", "--wait", "5", "back", "nosuch"], "PAIR: 'nosuch' is not a pair"),
    (["failover", "nosuch"], "PAIR: 'nosuch' is not a pair of lab local-lab " + PAIRS),
    (["failover", "nosuch", "--fault", "freeze"], "PAIR: 'nosuch' is not a pair"),
    (["apply", "nosuch"], "PAIR: 'nosuch' is not a pair of lab local-lab " + PAIRS),
    (["apply", "back", "nosuch"], "PAIR: 'nosuch' is not a pair"),
    (["export", "ansible", "/nonexistent/labctl-out", "nosuch"],
     "PAIR: 'nosuch' is not a pair of lab local-lab " + PAIRS),
    (["ssh", "nosuch"], "MACHINE: 'nosuch' is not a machine of lab local-lab " + MACHINES),
    (["ssh", "nosuch", "--", "hostname"], "MACHINE: 'nosuch' is not a machine"),
]


@pytest.fixture
def untouchable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the hypervisor nor any machine may be contacted."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("contacted the lab for an unknown name")

    monkeypatch.setattr(hypervisor_mod, "get_hypervisor", refuse)
    monkeypatch.setattr(connect_ops, "connect", refuse)
    monkeypatch.setattr(connect_ops, "connect_each", refuse)


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_an_unknown_name_is_a_usage_error_naming_the_known_ones(
    cli: Callable[..., CliResult], untouchable: None, args: list[str], message: str
) -> None:
    result = cli("-p", "local-lab", *args)
    assert result.code == 2, result.err
    assert result.err.startswith(f"error: {message}"), result.err
    assert len(result.err.splitlines()) == 1
    assert "Traceback" not in result.err
    assert result.out == ""
