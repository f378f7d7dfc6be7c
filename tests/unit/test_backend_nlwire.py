"""nlwire: packed requests decode like pyroute2's for the same request; parsers on fixed bytes."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pyroute2 import IPBatch
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from overlayd.backend import nlwire
from overlayd.backend.objects import FdbEntry, Neighbour, Route

ip = ipaddress.ip_address
net = ipaddress.ip_network


def decoded(data: bytes, cls: Any) -> dict[str, Any]:
    """Header type and flags, fields and attributes (order-free) of one message, as pyroute2 decodes it."""
    msg = cls(data)
    msg.decode()
    fields = {name: msg[name] for name, *_ in cls.fields if not name.startswith("__")}
    return {
        "type": msg["header"]["type"],
        "flags": msg["header"]["flags"],
        "length": msg["header"]["length"],
        "fields": fields,
        "attrs": sorted((name, value) for name, value in msg["attrs"]),
    }


def pyroute2_request(method: str, command: str, **kwargs: Any) -> bytes:
    batch = IPBatch()
    getattr(batch, method)(command, **kwargs)
    return bytes(batch.batch)


ROUTE4 = Route(dst=net("10.1.2.0/24"), table=254, protocol=213, type=1, oif=5, gateway=ip("10.1.2.0"),
               onlink=True, priority=0, tos=0, scope=0)
ROUTE6 = Route(dst=net("fd00:1::/64"), table=254, protocol=4, type=1, oif=None, gateway=None,
               onlink=False, priority=1024, tos=0, scope=253)


@pytest.mark.parametrize(
    ("ours", "theirs", "cls"),
    [
        (
            nlwire.route_replace(1, net("10.1.2.0/24"), ip("10.1.2.0"), 5, 213),
            pyroute2_request("route", "replace", dst="10.1.2.0/24", gateway="10.1.2.0", oif=5, flags=4,
                             proto=213, table=254),
            rtmsg,
        ),
        (
            nlwire.route_replace(1, net("fd00:1::/64"), ip("fd00:1::"), 7, 213),
            pyroute2_request("route", "replace", dst="fd00:1::/64", gateway="fd00:1::", oif=7, flags=4,
                             proto=213, table=254),
            rtmsg,
        ),
        (
            nlwire.route_delete(1, ROUTE4),
            pyroute2_request("route", "del", dst="10.1.2.0/24", gateway="10.1.2.0", oif=5, table=254, proto=213,
                             type=1, tos=0, priority=0, scope=0),
            rtmsg,
        ),
        (
            nlwire.route_delete(1, ROUTE6),
            pyroute2_request("route", "del", dst="fd00:1::/64", table=254, proto=4, type=1, tos=0, priority=1024,
                             scope=253),
            rtmsg,
        ),
        (
            nlwire.neighbour_replace(1, 5, ip("10.1.2.0"), "02:00:00:00:00:0a"),
            pyroute2_request("neigh", "replace", ifindex=5, dst="10.1.2.0", lladdr="02:00:00:00:00:0a", state=0x80),
            ndmsg,
        ),
        (
            nlwire.neighbour_delete(1, Neighbour(5, ip("fd00:1::"), "02:00:00:00:00:0a", 0x80)),
            pyroute2_request("neigh", "del", ifindex=5, dst="fd00:1::"),
            ndmsg,
        ),
        (
            nlwire.fdb_replace(1, 5, "02:00:00:00:00:0a", ip("198.18.0.11")),
            pyroute2_request("fdb", "replace", ifindex=5, lladdr="02:00:00:00:00:0a", dst="198.18.0.11",
                             state=0xC0, flags=2),
            ndmsg,
        ),
        (
            nlwire.fdb_delete(1, FdbEntry(5, "02:00:00:00:00:0a", ip("2001:db8::1"), port=4790, vni=3)),
            pyroute2_request("fdb", "del", ifindex=5, lladdr="02:00:00:00:00:0a", dst="2001:db8::1", port=4790,
                             vni=3),
            ndmsg,
        ),
        (
            nlwire.fdb_delete(1, FdbEntry(5, "00:00:00:00:00:00", None)),
            pyroute2_request("fdb", "del", ifindex=5, lladdr="00:00:00:00:00:00"),
            ndmsg,
        ),
    ],
    ids=["route4", "route6", "del-route4", "del-route6", "neigh", "del-neigh6", "fdb", "del-fdb6", "del-fdb-bare"],
)
def test_requests_decode_like_pyroute2s(ours: bytes, theirs: bytes, cls: Any) -> None:
    assert decoded(ours, cls) == decoded(theirs, cls)


# A route dump message as Linux sends it: 10.9.0.0/16 via 10.9.0.0 dev #6 onlink proto 213, main table.
ROUTE_DUMP = bytes.fromhex(
    "3c000000180002002a00000000000000"  # nlmsghdr: 60 bytes, RTM_NEWROUTE, NLM_F_MULTI, seq 42
    "02100000fed50001" "04000000"  # rtmsg: AF_INET /16, table 254, proto 213, scope 0, unicast, onlink
    "08000f00fe000000"  # RTA_TABLE 254
    "080001000a090000"  # RTA_DST 10.9.0.0
    "080005000a090000"  # RTA_GATEWAY 10.9.0.0
    "0800040006000000"  # RTA_OIF 6
)
# A neighbour: fd00::1 -> 02:aa:bb:cc:dd:ee on #6, permanent; then a VXLAN FDB entry with port and VNI.
NEIGH_DUMP = bytes.fromhex(
    "3c000000" "1c00" "0200" "07000000" "00000000"
    "0a000000" "06000000" "8000" "00" "00"
    "14000100" "fd000000000000000000000000000001"
    "0a00020002aabbccddee" "0000"
)
FDB_DUMP = bytes.fromhex(
    "40000000" "1c00" "0200" "07000000" "00000000"
    "07000000" "06000000" "c000" "02" "00"
    "0a00020002aabbccddee" "0000"
    "08000100c6120063"  # NDA_DST 198.18.0.99
    "0600060012b60000"  # NDA_PORT 4790 (big-endian)
    "0800070003000000"  # NDA_VNI 3
)


def test_parses_a_route() -> None:
    (msg,) = nlwire.split(ROUTE_DUMP)
    assert (msg.type, msg.seq) == (nlwire.RTM_NEWROUTE, 42)
    assert nlwire.parse_route(msg.body) == Route(
        dst=net("10.9.0.0/16"), table=254, protocol=213, type=1, oif=6, gateway=ip("10.9.0.0"), onlink=True,
        priority=0, tos=0, scope=0)


def test_parses_a_neighbour_and_an_fdb_entry() -> None:
    (neigh,) = nlwire.split(NEIGH_DUMP)
    assert nlwire.parse_neighbour(neigh.body) == Neighbour(6, ip("fd00::1"), "02:aa:bb:cc:dd:ee", 0x80)
    (fdb,) = nlwire.split(FDB_DUMP)
    assert nlwire.parse_fdb(fdb.body) == FdbEntry(6, "02:aa:bb:cc:dd:ee", ip("198.18.0.99"), port=4790, vni=3)


def test_pyroute2_decodes_the_fixed_vectors_the_same_way() -> None:
    # The vectors above are what the kernel would send: pyroute2 agrees on every field.
    msg = rtmsg(ROUTE_DUMP)
    msg.decode()
    assert (msg.get("dst"), msg.get("gateway"), msg.get("oif"), msg.get("proto")) == ("10.9.0.0", "10.9.0.0", 6, 213)
    fdb = ndmsg(FDB_DUMP)
    fdb.decode()
    assert (fdb.get("lladdr"), fdb.get("dst"), fdb.get("port"), fdb.get("vni")) == (
        "02:aa:bb:cc:dd:ee", "198.18.0.99", 4790, 3)


def test_default_route_has_no_dst_attribute() -> None:
    body = bytes.fromhex("02000000fe030001" "00000000" "0800050001020304")
    route = nlwire.parse_route(body)
    assert route is not None and route.dst == net("0.0.0.0/0") and route.gateway == ip("1.2.3.4")


def test_truncated_input_is_dropped_not_raised() -> None:
    assert list(nlwire.split(ROUTE_DUMP[:-3])) == []
    assert nlwire.attributes(bytes.fromhex("ff000100"), 0) == {}
    assert nlwire.parse_neighbour(bytes.fromhex("0a000000060000008000" "0000")) is None


def test_acks_and_errors() -> None:
    ack = nlwire.Message(nlwire.NLMSG_ERROR, 0x100, 7, bytes(4) + bytes(16))
    assert nlwire.parse_ack(ack) == nlwire.Ack(7, 0, None)
    # -EEXIST, capped, with an extended-ack message attribute
    body = (-17).to_bytes(4, "little", signed=True) + bytes(16) + bytes.fromhex("0b000100") + b"exists\0" + b"\0"
    error = nlwire.Message(nlwire.NLMSG_ERROR, 0x300, 8, body)
    assert nlwire.parse_ack(error) == nlwire.Ack(8, 17, "exists")


def test_batch_numbers_requests_and_names_them() -> None:
    batch = nlwire.Batch()
    batch.replace_fdb(5, "02:00:00:00:00:0a", ip("198.18.0.11"))
    batch.delete_route(ROUTE4)
    assert len(batch) == 2
    assert [next(nlwire.split(m)).seq for m in batch.messages] == [1, 2]
    assert batch.operations == ["set FDB entry 02:00:00:00:00:0a -> 198.18.0.11", "delete route 10.1.2.0/24"]
    assert batch.missing_ok == [False, True]
