import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.backend.peers import PeerVtep, screen_peers
from overlayd.errors import ClusterError

net = ipaddress.ip_network
ip = ipaddress.ip_address
OWN_SUBNET = net("10.244.1.0/24")
OWN_IP = ip("198.18.0.11")
OWN_MAC = "02:00:00:00:00:01"


def peer(n: int, mac: str | None = None) -> PeerVtep:
    return PeerVtep(ip(f"198.18.0.{10 + n}"), mac or f"02:00:00:00:00:{n:02x}")


def screen(peers: dict) -> tuple[set, dict]:
    result = screen_peers(peers, own_subnet=OWN_SUBNET, own_ip=OWN_IP, own_identity=OWN_MAC)
    return set(result.accepted), {r.subnet: r.reason for r in result.refused}


def test_good_peers_are_accepted() -> None:
    peers = {net("10.244.2.0/24"): peer(2), net("10.244.3.0/24"): peer(3)}
    assert screen(peers) == (set(peers), {})


@pytest.mark.parametrize(
    ("subnet", "vtep", "reason"),
    [
        (net("10.244.1.128/25"), peer(2), "overlaps our own subnet"),
        (net("10.244.0.0/16"), peer(2), "overlaps our own subnet"),
        (net("10.244.2.0/24"), PeerVtep(OWN_IP, "02:00:00:00:00:02"), "is our own"),
        (net("10.244.2.0/24"), peer(2, OWN_MAC), "VTEP MAC 02:00:00:00:00:01 is our own"),
        (net("fd00::/64"), peer(2), "subnet is IPv6, ours is IPv4"),
        (net("10.244.2.0/24"), PeerVtep(ip("2001:db8::2"), "02:00:00:00:00:02"), "not IPv4 like our underlay"),
    ],
)
def test_conflicts_with_ourselves_are_refused(subnet, vtep, reason) -> None:
    accepted, refused = screen({subnet: vtep, net("10.244.9.0/24"): peer(9)})
    assert accepted == {net("10.244.9.0/24")}
    assert reason in refused[subnet]


def test_overlapping_peers_are_all_refused() -> None:
    peers = {
        net("10.244.0.0/20"): peer(2),  # covers 10.244.2.0 - 10.244.15.255
        net("10.244.4.0/24"): peer(3),
        net("10.244.9.0/24"): peer(4),
        net("10.244.16.0/24"): peer(5),  # just past the /20: fine
        net("10.244.20.0/24"): peer(6),
        net("10.244.20.0/25"): peer(7),
    }
    accepted, refused = screen(peers)
    # 10.244.0.0/20 also overlaps our 10.244.1.0/24
    assert accepted == {net("10.244.4.0/24"), net("10.244.9.0/24"), net("10.244.16.0/24")}
    assert "our own subnet" in refused[net("10.244.0.0/20")]
    assert "overlaps peer subnet" in refused[net("10.244.20.0/24")]
    assert "overlaps peer subnet" in refused[net("10.244.20.0/25")]


def test_subnets_nested_in_a_peer_subnet_are_refused_with_it() -> None:
    peers = {net("10.244.32.0/20"): peer(2), net("10.244.33.0/24"): peer(3), net("10.244.40.0/24"): peer(4)}
    accepted, refused = screen(peers)
    assert accepted == set() and set(refused) == set(peers)


def test_mac_shared_by_two_hosts_is_refused_but_one_host_with_two_subnets_is_fine() -> None:
    same_host = {net("10.244.2.0/24"): peer(2), net("10.244.3.0/24"): peer(2)}
    assert screen(same_host) == (set(same_host), {})
    clash = {net("10.244.2.0/24"): peer(2, "02:00:00:00:00:99"), net("10.244.3.0/24"): peer(3, "02:00:00:00:00:99"),
             net("10.244.4.0/24"): peer(4)}
    accepted, refused = screen(clash)
    assert accepted == {net("10.244.4.0/24")}
    assert all("claimed by several hosts" in r for r in refused.values()) and len(refused) == 2


subnets = st.builds(
    lambda a, plen: ipaddress.ip_network(f"10.{a >> 8 & 255}.{a & 255}.0/{plen}", strict=False),
    st.integers(0, 2**16 - 1),
    st.integers(16, 26),
)
vteps = st.builds(lambda h, m: PeerVtep(ip(f"198.18.0.{h}"), f"02:00:00:00:00:{m:02x}"),
                  st.integers(1, 30), st.integers(0, 40))


@given(st.dictionaries(subnets, vteps, max_size=12))
def test_screening_properties(peers: dict) -> None:
    result = screen_peers(peers, own_subnet=OWN_SUBNET, own_ip=OWN_IP, own_identity=OWN_MAC)
    refused = {r.subnet for r in result.refused}
    assert set(result.accepted) | refused == set(peers) and not set(result.accepted) & refused
    accepted = sorted(result.accepted)
    for i, a in enumerate(accepted):
        assert not a.overlaps(OWN_SUBNET)
        assert result.accepted[a].public_ip != OWN_IP and result.accepted[a].vtep_mac != OWN_MAC
        for b in accepted[i + 1:]:
            assert not a.overlaps(b)
            if result.accepted[a].vtep_mac == result.accepted[b].vtep_mac:
                assert result.accepted[a].public_ip == result.accepted[b].public_ip
    # refusal is about conflicts: a peer refused for overlap really overlaps someone
    for r in result.refused:
        if "overlaps peer" in r.reason:
            assert any(r.subnet.overlaps(o) for o in peers if o != r.subnet)


def test_peer_from_host_record_backend_data() -> None:
    assert PeerVtep.from_backend_data_untrusted(ip("198.18.0.12"), {"type": "vxlan", "vtep_mac": "02:AA:00:00:00:02"}) \
        == PeerVtep(ip("198.18.0.12"), "02:aa:00:00:00:02")
    with pytest.raises(ClusterError, match="backend type 'wireguard'"):
        PeerVtep.from_backend_data_untrusted(ip("198.18.0.12"), {"type": "wireguard", "public_key": "x"})
    with pytest.raises(ClusterError, match="bad vtep_mac"):
        PeerVtep.from_backend_data_untrusted(ip("198.18.0.12"), {"type": "vxlan", "vtep_mac": "ff:ff:ff:ff:ff:ff"})
    with pytest.raises(ClusterError, match="bad vtep_mac"):
        PeerVtep.from_backend_data_untrusted(ip("198.18.0.12"), {"type": "vxlan"})
