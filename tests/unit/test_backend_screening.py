"""One peer screening for every backend: the same records are refused whatever the backend.

Each backend names its peers' identity differently (VTEP MAC, WireGuard public key) but
the rules are shared (backend/peers.py): these cases run once per backend.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from overlayd.backend.hostgw_plan import PeerGateway
from overlayd.backend.peers import PeerVtep, screen_peers
from overlayd.backend.wireguard import WgPeer

OWN_SUBNET = ip_network("10.244.9.0/24")
OWN_IP = ip_address("198.18.0.9")


def vxlan_peer(host: int, identity: int, revision: int = 0) -> PeerVtep:
    return PeerVtep(ip_address(f"198.18.0.{host}"), f"02:00:00:00:00:{identity:02x}", revision)


def wireguard_peer(host: int, identity: int, revision: int = 0) -> WgPeer:
    return WgPeer(bytes([identity]) * 32, ip_address(f"198.18.0.{host}"), 51820, revision)


def hostgw_peer(host: int, identity: int, revision: int = 0) -> PeerGateway:
    return PeerGateway(ip_address(f"198.18.0.{host}"), f"node{identity}", revision)


MAKERS: dict[str, tuple[Callable[..., Any], Hashable]] = {
    "vxlan": (vxlan_peer, "02:00:00:00:00:09"),
    "wireguard": (wireguard_peer, bytes([9]) * 32),
    "host-gw": (hostgw_peer, "node9"),
}


@pytest.fixture(params=sorted(MAKERS))
def make(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], tuple[set, dict]]:
    maker, own_identity = MAKERS[request.param]

    def screen(specs: dict[str, tuple[int, ...]]) -> tuple[set, dict]:
        peers = {ip_network(subnet): maker(*spec) for subnet, spec in specs.items()}
        result = screen_peers(peers, own_subnet=OWN_SUBNET, own_ip=OWN_IP, own_identity=own_identity)
        return {str(s) for s in result.accepted}, {str(r.subnet): r.reason for r in result.refused}

    return screen


def test_a_chain_of_overlapping_subnets_is_refused_whole(make: Any) -> None:
    # The case (a /20 and two /24s in it): WireGuard used to accept the second /24.
    accepted, refused = make({"10.244.16.0/20": (11, 1), "10.244.17.0/24": (12, 2), "10.244.18.0/24": (13, 3),
                              "10.244.40.0/24": (14, 4)})
    assert accepted == {"10.244.40.0/24"}
    assert set(refused) == {"10.244.16.0/20", "10.244.17.0/24", "10.244.18.0/24"}


def test_a_peer_announcing_our_public_ip_is_refused(make: Any) -> None:
    accepted, refused = make({"10.244.1.0/24": (9, 1), "10.244.2.0/24": (12, 2)})
    assert accepted == {"10.244.2.0/24"} and "is our own" in refused["10.244.1.0/24"]


def test_a_peer_with_our_identity_is_refused(make: Any) -> None:
    accepted, refused = make({"10.244.1.0/24": (11, 9)})
    assert accepted == set() and "is our own" in refused["10.244.1.0/24"]


def test_a_peer_overlapping_our_subnet_is_refused(make: Any) -> None:
    accepted, refused = make({"10.244.8.0/23": (11, 1)})
    assert accepted == set() and "our own subnet" in refused["10.244.8.0/23"]


def test_a_clone_is_refused_and_the_older_claimant_kept(make: Any) -> None:
    accepted, refused = make({"10.244.1.0/24": (11, 1, 5), "10.244.7.0/24": (99, 1, 40)})
    assert accepted == {"10.244.1.0/24"}
    assert "belongs to host 198.18.0.11, whose record is older" in refused["10.244.7.0/24"]


def test_one_host_may_hold_several_subnets(make: Any) -> None:
    accepted, refused = make({"10.244.1.0/24": (11, 1, 5), "10.244.2.0/24": (11, 1, 6)})
    assert accepted == {"10.244.1.0/24", "10.244.2.0/24"} and refused == {}


# -- the same answers, a change at a time (ScreenCache) -------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from overlayd.backend.peers import ScreenCache  # noqa: E402

SUBNETS = [ip_network(f"10.244.{n}.0/24") for n in range(12)] + [ip_network("10.244.0.0/22"),
                                                                 ip_network("10.244.9.128/25")]
peer_specs = st.tuples(st.sampled_from(SUBNETS), st.integers(10, 14), st.integers(1, 5), st.integers(0, 3))
peer_sets = st.dictionaries(st.sampled_from(SUBNETS), st.tuples(st.integers(10, 14), st.integers(1, 5),
                                                                st.integers(0, 3)), max_size=10)


@settings(max_examples=300, deadline=None)
@given(st.lists(peer_sets, min_size=1, max_size=6))
def test_screening_a_change_at_a_time_answers_as_screening_the_whole_set(sequence: list[dict]) -> None:
    cache = ScreenCache(own_subnet=OWN_SUBNET, own_ip=OWN_IP, own_identity="02:00:00:00:00:09")
    made: dict = {}  # one object per (subnet, spec), as the daemon reuses parsed peers
    for specs in sequence:
        peers = {subnet: made.setdefault((subnet, spec), vxlan_peer(*spec)) for subnet, spec in specs.items()}
        whole = screen_peers(peers, own_subnet=OWN_SUBNET, own_ip=OWN_IP, own_identity="02:00:00:00:00:09")
        quick = cache.screen(peers)
        assert quick.accepted == whole.accepted
        assert [(r.subnet, r.reason) for r in quick.refused] == [(r.subnet, r.reason) for r in whole.refused]
