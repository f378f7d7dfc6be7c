"""Parsers of pyroute2 messages; plain dicts stand in for messages (both answer .get)."""

import ipaddress
import socket

from overlayd.backend.objects import (
    Address,
    FdbEntry,
    Link,
    Neighbour,
    Route,
    VxlanAttrs,
    address_from_msg,
    fdb_from_msg,
    link_from_msg,
    neighbour_from_msg,
    route_from_msg,
)


def test_vxlan_link() -> None:
    msg = {
        "index": 4, "ifname": "ovl.vx", "address": "02:AA:00:00:00:01", "mtu": 1450, "flags": 69699,
        "linkinfo": {"kind": "vxlan", "data": {"vxlan_id": 7, "vxlan_port": 4789, "vxlan_local": "198.18.0.11",
                                                "vxlan_link": 3, "vxlan_learning": 0}},
    }
    assert link_from_msg(msg) == Link(
        index=4, name="ovl.vx", kind="vxlan", mac="02:aa:00:00:00:01", mtu=1450, up=True,
        vxlan=VxlanAttrs(vni=7, port=4789, local=ipaddress.ip_address("198.18.0.11"), link=3, learning=False),
    )


def test_vxlan_link_with_ipv6_local_and_plain_links() -> None:
    v6 = {"index": 5, "ifname": "vx6", "mtu": 1430, "flags": 0,
          "linkinfo": {"kind": "vxlan", "data": {"vxlan_id": 1, "vxlan_port": 8472, "vxlan_local6": "2001:db8::1",
                                                  "vxlan_learning": 1}}}
    parsed = link_from_msg(v6)
    assert parsed.vxlan == VxlanAttrs(1, 8472, ipaddress.ip_address("2001:db8::1"), None, True)
    assert not parsed.up and parsed.mac is None
    lo = link_from_msg({"index": 1, "ifname": "lo", "mtu": 65536, "flags": 1})
    assert lo.kind is None and lo.vxlan is None and lo.up
    veth = link_from_msg({"index": 2, "ifname": "eth0", "mtu": 1500, "flags": 1, "linkinfo": {"kind": "veth"}})
    assert veth.kind == "veth" and veth.vxlan is None


def test_address_prefers_local_over_peer_address() -> None:
    msg = {"index": 3, "local": "10.0.0.1", "address": "10.0.0.2", "prefixlen": 32, "proto": 213, "scope": 0}
    assert address_from_msg(msg) == Address(3, ipaddress.ip_interface("10.0.0.1/32"), 213, 0)
    v6 = address_from_msg({"index": 3, "address": "fe80::1", "prefixlen": 64, "scope": 253})
    assert v6 == Address(3, ipaddress.ip_interface("fe80::1/64"), 0, 253)


def test_routes_default_and_onlink() -> None:
    default = route_from_msg({"family": socket.AF_INET, "dst_len": 0, "table": 254, "proto": 4, "type": 1,
                              "oif": 3, "gateway": "198.18.0.1", "flags": 0})
    assert default.dst == ipaddress.ip_network("0.0.0.0/0") and default.priority == 0 and not default.onlink
    onlink = route_from_msg({"family": socket.AF_INET6, "dst": "fd00:1::", "dst_len": 64, "table": 254,
                             "proto": 213, "type": 1, "oif": 4, "gateway": "fd00:1::", "flags": 4,
                             "priority": 1024, "scope": 0})
    assert onlink == Route(ipaddress.ip_network("fd00:1::/64"), 254, 213, 1, 4, ipaddress.ip_address("fd00:1::"),
                           True, 1024, 0, 0)
    v6_default = route_from_msg({"family": socket.AF_INET6, "dst_len": 0, "table": 254, "type": 1})
    assert v6_default.dst == ipaddress.ip_network("::/0") and v6_default.gateway is None


def test_neighbour_and_fdb() -> None:
    n = neighbour_from_msg({"ifindex": 4, "dst": "10.244.5.0", "lladdr": "02:00:00:00:00:0A", "state": 128})
    assert n == Neighbour(4, ipaddress.ip_address("10.244.5.0"), "02:00:00:00:00:0a", 128) and n.permanent
    incomplete = neighbour_from_msg({"ifindex": 4, "dst": "10.244.6.0", "state": 1})
    assert incomplete.mac is None and not incomplete.permanent
    f = fdb_from_msg({"ifindex": 4, "lladdr": "02:00:00:00:00:0A", "dst": "198.18.0.12", "port": 8472})
    assert f == FdbEntry(4, "02:00:00:00:00:0a", ipaddress.ip_address("198.18.0.12"), port=8472, vni=None)
    assert fdb_from_msg({"ifindex": 4, "lladdr": "33:33:00:00:00:01"}).dst is None
