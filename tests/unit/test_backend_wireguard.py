"""WireGuard backend planning, without a kernel: peers and routes from the desired state."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from overlayd.backend.objects import Route
from overlayd.backend.wireguard import PeerChange, WgPeer, plan_device, plan_routes
from overlayd.errors import ClusterError

KEY_A, KEY_B, KEY_C, OWN = (bytes([n]) * 32 for n in (1, 2, 3, 9))
NET_A, NET_B, NET_C = (ip_network(f"10.244.{n}.0/24") for n in (1, 2, 3))
OWN_NET = ip_network("10.244.9.0/24")


def _peer(key: bytes, last_octet: int) -> WgPeer:
    return WgPeer(public_key=key, endpoint_ip=ip_address(f"198.18.0.{last_octet}"), port=51820)


def test_record_data_is_parsed_and_bad_data_refused() -> None:
    import base64

    data = {"type": "wireguard", "public_key": base64.b64encode(KEY_A).decode(), "port": "51820"}
    assert WgPeer.from_backend_data_untrusted(ip_address("198.18.0.11"), data) == _peer(KEY_A, 11)
    for bad in ({**data, "type": "vxlan"}, {**data, "public_key": "short"}, {**data, "port": "0"},
                {**data, "port": "x"}, {"type": "wireguard"}):
        with pytest.raises(ClusterError):
            WgPeer.from_backend_data_untrusted(ip_address("198.18.0.11"), bad)


APPLIED = {KEY_A: "198.18.0.11:51820", KEY_B: "198.18.0.12:51820"}


def test_plan_adds_changes_and_removes_only_what_differs() -> None:
    desired = {NET_A: _peer(KEY_A, 11), NET_B: _peer(KEY_B, 12)}
    current = {
        KEY_A: ("198.18.0.11:51820", (NET_A,)),  # already right
        KEY_B: ("198.18.0.12:51820", (NET_A, NET_B)),  # allowed IPs drifted
        KEY_C: ("198.18.0.13:51820", (NET_C,)),  # host gone
    }
    plan = plan_device(desired, current, APPLIED)
    assert plan.upsert == (PeerChange(NET_B, desired[NET_B], set_endpoint=False),)
    assert plan.remove == (KEY_C,)
    converged = {KEY_A: current[KEY_A], KEY_B: ("198.18.0.12:51820", (NET_B,))}
    assert not plan_device(desired, converged, APPLIED)


def test_new_peers_and_changed_records_get_their_endpoint() -> None:
    desired = {NET_A: _peer(KEY_A, 21), NET_B: _peer(KEY_B, 12)}
    plan = plan_device(desired, {KEY_A: ("198.18.0.11:51820", (NET_A,))}, APPLIED)
    assert plan.upsert == (PeerChange(NET_A, desired[NET_A], True), PeerChange(NET_B, desired[NET_B], True))


def test_a_roamed_peer_is_left_where_it_roamed() -> None:
    desired = {NET_A: _peer(KEY_A, 11)}
    roamed = {KEY_A: ("198.18.0.111:51820", (NET_A,))}  # authenticated packets came from .111
    assert not plan_device(desired, roamed, APPLIED)
    # After a daemon restart nothing was applied yet: the record's endpoint is set once.
    assert plan_device(desired, roamed, {}).upsert == (PeerChange(NET_A, desired[NET_A], True),)


def _route(dst: str, oif: int, protocol: int = 213, gateway: str | None = None) -> Route:
    return Route(dst=ip_network(dst), table=254, protocol=protocol, type=1, oif=oif,
                 gateway=ip_address(gateway) if gateway else None, onlink=False, priority=0, tos=0, scope=253)


def test_route_plan_keeps_ours_removes_strays_and_leaves_others_alone() -> None:
    routes = [_route("10.244.1.0/24", 7), _route("10.244.3.0/24", 7), _route("10.244.2.0/24", 5),
              _route("192.0.2.0/24", 7, protocol=4)]
    add, delete = plan_routes({NET_A, NET_B}, routes, ifindex=7, protocol=213)
    assert add == [NET_B]
    assert sorted(str(r.dst) for r in delete) == ["10.244.2.0/24", "10.244.3.0/24"]
