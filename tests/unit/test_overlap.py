"""Keeping the overlay off the host's own networks (issue 7, item 6): the pure checks."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

import pytest

from overlayd.backend.objects import (RT_SCOPE_LINK, RT_TABLE_MAIN, RTN_UNICAST, RTPROT_KERNEL, RTPROT_OVERLAYD,
                                      Address, Link, Route)
from overlayd.backend.overlap import HostNetwork, check_cluster_network, foreign_route_conflicts, host_networks
from overlayd.errors import ConfigError

TUNNEL = 5  # ifindex of our VXLAN / WireGuard device
LINKS = [Link(1, "lo", None, None, 65536, True), Link(2, "eth0", None, "02:00:00:00:00:01", 1500, True),
         Link(4, "ovl0", "bridge", "02:00:00:00:00:04", 1450, True)]


def address(ifindex: int, text: str, scope: int = 0) -> Address:
    return Address(ifindex, ip_interface(text), 0, scope)


def route(dst: str, *, protocol: int = RTPROT_KERNEL, oif: int | None = 2, gateway: str | None = None,
          scope: int = 0) -> Route:
    return Route(ip_network(dst), RT_TABLE_MAIN, protocol, RTN_UNICAST, oif, ip_address(gateway) if gateway else None,
                 False, 0, 0, scope)


def test_host_networks_are_global_addresses_off_our_own_links() -> None:
    addresses = [address(1, "127.0.0.1/8", scope=254), address(2, "198.18.0.11/24"), address(2, "fe80::1/64", 253),
                 address(2, "2001:db8::11/64"), address(4, "10.244.1.1/24")]
    assert host_networks(LINKS, addresses, ours={"ovl0", "ovl.vx"}) == [
        HostNetwork(ip_network("198.18.0.0/24"), "eth0"), HostNetwork(ip_network("2001:db8::/64"), "eth0")]


@pytest.mark.parametrize("cidr", ["198.18.0.0/16", "198.18.0.128/25", "0.0.0.0/0", "2001:db8::/32"])
def test_a_cluster_network_over_a_host_network_is_refused_in_one_line(cidr: str) -> None:
    local = [HostNetwork(ip_network("198.18.0.0/24"), "eth0"), HostNetwork(ip_network("2001:db8::/64"), "eth0")]
    with pytest.raises(ConfigError) as info:
        check_cluster_network(ip_network(cidr), local)
    assert f"cluster network {cidr} overlaps" in str(info.value) and "\n" not in str(info.value)


def test_a_cluster_network_apart_from_the_host_networks_is_fine() -> None:
    check_cluster_network(ip_network("10.244.0.0/16"), [HostNetwork(ip_network("198.18.0.0/24"), "eth0")])
    check_cluster_network(ip_network("fd00::/48"), [HostNetwork(ip_network("198.18.0.0/24"), "eth0")])


ROUTES = [
    route("0.0.0.0/0", protocol=3, gateway="198.18.0.1", oif=2),  # default route (proto boot)
    route("10.0.0.0/8", protocol=3, gateway="198.18.0.1", oif=2),  # a site aggregate
    route("198.18.0.0/24", scope=RT_SCOPE_LINK),  # the underlay's connected route
    route("10.244.7.0/24", protocol=4, gateway="198.18.0.1"),  # an admin's static route
    route("10.244.2.0/24", protocol=RTPROT_OVERLAYD, oif=TUNNEL, gateway="10.244.2.0"),  # ours
    route("10.244.3.0/24", protocol=3, oif=TUNNEL),  # on our device: ours to fix
    route("2001:db8::/64", oif=2),  # an IPv6 connected route: kernel, no gateway, universe scope
]


def conflicts(*subnets: str) -> dict:
    return foreign_route_conflicts([ip_network(s) for s in subnets], ROUTES, ifindex=TUNNEL, protocol=RTPROT_OVERLAYD)


def test_routes_that_are_not_ours_keep_their_destination() -> None:
    found = conflicts("198.18.0.0/24", "198.18.0.0/23", "198.18.0.128/25", "10.244.7.0/24", "2001:db8::/64",
                      "2001:db8::/80")
    assert set(found) == {ip_network(s) for s in ("198.18.0.0/24", "198.18.0.0/23", "198.18.0.128/25",
                                                   "10.244.7.0/24", "2001:db8::/64", "2001:db8::/80")}
    assert "198.18.0.0/24 dev #2 proto 2" in found[ip_network("198.18.0.0/23")]
    assert "10.244.7.0/24 via 198.18.0.1" in found[ip_network("10.244.7.0/24")]


def test_our_routes_wider_gateway_routes_and_free_subnets_are_no_conflict() -> None:
    assert conflicts("10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24", "10.244.7.0/25", "fd00::/64") == {}
