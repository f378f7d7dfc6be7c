"""The post-outage grace for missing peers (pure)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from overlayd.cluster.grace import PeerGrace
from overlayd.cluster.records import HostRecord, Lease


def lease(subnet: str, node: str, host: int) -> Lease:
    backend = {"type": "vxlan", "vtep_mac": f"02:00:00:00:00:{host:02x}"}
    record = HostRecord(node, ip_address(f"198.18.0.{host}"), backend)
    return Lease(ip_network(subnet), record)


A, B = lease("10.244.1.0/24", "a", 11), lease("10.244.2.0/24", "b", 12)


def test_nothing_held_means_the_peers_as_given() -> None:
    grace = PeerGrace(10)
    assert grace.wanted({A.subnet: A}, now=0) == {A.subnet: A}
    assert grace.next_deadline() is None


def test_a_missing_peer_stays_until_its_grace_ends() -> None:
    grace = PeerGrace(10)
    grace.hold({B.subnet: B}, now=100)
    assert grace.wanted({A.subnet: A}, now=105) == {A.subnet: A, B.subnet: B}
    assert grace.next_deadline() == 110
    assert grace.wanted({A.subnet: A}, now=110) == {A.subnet: A}
    assert grace.held == {} and grace.next_deadline() is None


def test_a_peer_that_comes_back_ends_its_hold_and_the_new_data_wins() -> None:
    grace = PeerGrace(10)
    grace.hold({B.subnet: B}, now=0)
    taken_over = lease("10.244.2.0/24", "c", 13)  # another host claimed the subnet meanwhile
    assert grace.wanted({B.subnet: taken_over}, now=1) == {B.subnet: taken_over}
    assert grace.held == {}
    assert grace.wanted({}, now=2) == {}  # gone again later: no second grace from the old hold


def test_holding_again_keeps_the_first_deadline() -> None:
    grace = PeerGrace(10)
    grace.hold({B.subnet: B}, now=0)
    grace.hold({B.subnet: B}, now=8)  # a second re-list while it is still missing
    assert grace.next_deadline() == 10


def test_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError):
        PeerGrace(-1)
