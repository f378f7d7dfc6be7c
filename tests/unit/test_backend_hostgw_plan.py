"""The pure host-gw planner: on-link screening and route convergence."""

import ipaddress

import pytest

from overlayd.backend.hostgw_plan import PeerGateway, offlink_refusals, onlink_networks, plan_routes
from overlayd.backend.objects import Route
from overlayd.cluster.errors import RecordError
from overlayd.cluster.records import HostRecord

net = ipaddress.ip_network
ip = ipaddress.ip_address
ETH, OTHER, PROTO = 2, 7, 213


def route(dst: str, gw: str | None, *, oif: int = ETH, proto: int = PROTO, scope: int = 0,
          priority: int | None = None) -> Route:
    d = net(dst)
    if priority is None:
        priority = 0 if d.version == 4 else 1024
    return Route(d, 254, proto, 1, oif, ip(gw) if gw else None, False, priority, 0, scope)


def peer(n: int, node: str | None = None) -> PeerGateway:
    return PeerGateway(ip(f"198.18.0.{10 + n}"), node or f"h{n}")


CONNECTED = route("198.18.0.0/24", None, proto=2, scope=253)
PEERS = {net("10.244.2.0/24"): peer(2), net("10.244.3.0/24"): peer(3)}
IN_PLACE = [route("10.244.2.0/24", "198.18.0.12"), route("10.244.3.0/24", "198.18.0.13"), CONNECTED,
            route("0.0.0.0/0", "198.18.0.1", proto=4)]


def test_routes_in_place_need_nothing() -> None:
    plan = plan_routes(PEERS, IN_PLACE, ifindex=ETH, protocol=PROTO)
    assert plan.set == () and plan.delete == ()


def test_missing_routes_are_added_via_the_peers_public_ip() -> None:
    plan = plan_routes(PEERS, [CONNECTED], ifindex=ETH, protocol=PROTO)
    assert [(c.dst, c.gateway, c.new) for c in plan.set] == [
        (net("10.244.2.0/24"), ip("198.18.0.12"), True), (net("10.244.3.0/24"), ip("198.18.0.13"), True)]


def test_a_peer_that_moved_gets_its_route_replaced() -> None:
    moved = {**PEERS, net("10.244.3.0/24"): PeerGateway(ip("198.18.0.99"), "h3")}
    plan = plan_routes(moved, IN_PLACE, ifindex=ETH, protocol=PROTO)
    assert [(c.dst, c.gateway, c.new) for c in plan.set] == [(net("10.244.3.0/24"), ip("198.18.0.99"), False)]
    assert plan.delete == ()  # the replace takes the old route's slot


def test_our_stray_routes_go_and_foreign_ones_stay() -> None:
    stray = route("10.244.9.0/24", "198.18.0.19")
    old_vxlan = route("10.244.8.0/24", "10.244.8.0", oif=OTHER)  # a previous backend's, with our mark
    admin = route("10.99.0.0/16", "198.18.0.50", proto=4)  # on the underlay device, but not ours
    plan = plan_routes({}, [*IN_PLACE, stray, old_vxlan, admin], ifindex=ETH, protocol=PROTO)
    assert plan.set == ()
    assert set(plan.delete) == {IN_PLACE[0], IN_PLACE[1], stray, old_vxlan}


def test_a_second_route_of_ours_for_a_subnet_is_a_stray() -> None:
    extra = route("10.244.2.0/24", "198.18.0.12", priority=50)
    plan = plan_routes(PEERS, [*IN_PLACE, extra], ifindex=ETH, protocol=PROTO)
    assert plan.set == () and plan.delete == (extra,)


def test_ipv6_routes_use_the_ipv6_default_metric() -> None:
    peers = {net("fd00:10:0:2::/64"): PeerGateway(ip("2001:db8::12"), "h2")}
    have = [route("fd00:10:0:2::/64", "2001:db8::12")]
    assert plan_routes(peers, have, ifindex=ETH, protocol=PROTO).set == ()


def test_onlink_networks_are_the_underlay_devices_connected_routes() -> None:
    routes = [CONNECTED, route("198.19.7.0/24", None, proto=4, scope=253),  # `ip route add ... dev eth0`
              route("198.20.0.0/24", None, oif=OTHER, proto=2, scope=253),  # another device
              route("0.0.0.0/0", None, proto=4, scope=253),  # a device-wide default is no segment
              route("10.0.0.0/8", "198.18.0.1", proto=4),  # via a router
              route("2001:db8::/64", None, proto=2)]  # IPv6 connected routes are kernel, universe scope
    assert onlink_networks(routes, ETH) == [net("198.18.0.0/24"), net("198.19.7.0/24"), net("2001:db8::/64")]


def test_a_peer_off_the_segment_is_refused_with_the_reason() -> None:
    peers = {**PEERS, net("10.244.4.0/24"): PeerGateway(ip("198.19.0.5"), "h4")}
    refused = offlink_refusals(peers, [net("198.18.0.0/24")], "eth0")
    assert list(refused) == [net("10.244.4.0/24")]
    assert "198.19.0.5 is not on-link" in refused[net("10.244.4.0/24")]
    assert "eth0: 198.18.0.0/24" in refused[net("10.244.4.0/24")]


def test_records_of_other_backends_do_not_parse() -> None:
    record = HostRecord("h2", ip("198.18.0.12"), {"type": "host-gw"})
    assert PeerGateway.from_record_untrusted(record, 7) == PeerGateway(ip("198.18.0.12"), "h2", 7)
    with pytest.raises(RecordError) as info:
        PeerGateway.from_record_untrusted(HostRecord("h2", ip("198.18.0.12"), {"type": "vxlan"}))
    assert info.value.reason == "backend_mismatch"
