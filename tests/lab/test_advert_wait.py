"""Lab tests: the drill's advert waiter (WAIT_FOR_OWN_ADVERT) with real packets and perl.

It runs in a network namespace of its own holding only a loopback with two addresses
(tests/lab/advert_netns.py), so the frames it sees are the ones these tests send: VRRP (IP
protocol 112) from the node's own address must wake it; VRRP from another address, or other
traffic from its own, must not. The script's classic BPF filter is attached by the kernel for
real here (a filter the kernel refuses makes the script die, and both tests fail).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labctl.ops.drill.faults import WAIT_FOR_OWN_ADVERT
from tests.lab.advert_netns import OTHER, OWN, loopback_netns, run_waiter, running, sender

pytestmark = pytest.mark.lab


@pytest.fixture
def netns() -> Iterator[str]:
    with loopback_netns("advert") as name:
        yield name


def test_the_nodes_own_advert_wakes_the_waiter(netns: str) -> None:
    with running(netns, [sender(OWN, OTHER, 112), sender(OTHER, OWN, 6)]):
        code, out, took = run_waiter(netns, WAIT_FOR_OWN_ADVERT)
    assert (code, out) == (0, "advert\n")
    assert took < 1.0  # the next advert, not the end of the window


def test_adverts_of_another_address_and_other_traffic_do_not(netns: str) -> None:
    with running(netns, [sender(OTHER, OWN, 112), sender(OWN, OTHER, 17)]):
        code, out, took = run_waiter(netns, WAIT_FOR_OWN_ADVERT)
    assert (code, out) == (1, "")
    assert took >= 1.0  # it waited out its window
