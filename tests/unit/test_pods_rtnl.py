"""The rtnetlink client against a scripted socket, and our packed messages decoded by pyroute2."""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from overlayd.pods import links
from overlayd.pods.rtnl import NetlinkError, Rtnl, attr, attr_str, attr_u32, parse_attrs

HEADER = struct.Struct("=IHHII")


class ScriptedSocket:
    """Records what is sent; recv() hands out prepared datagrams."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.replies: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.replies.pop(0)

    def close(self) -> None:
        pass


def nlmsg(msg_type: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    length = HEADER.size + len(payload)
    return HEADER.pack(length, msg_type, flags, seq, 0) + payload + b"\0" * (-length % 4)


def ack(seq: int, err: int = 0, ext_msg: str | None = None) -> bytes:
    payload = struct.pack("=i", -err) + HEADER.pack(HEADER.size, 0, 0, seq, 0)
    flags = 0
    if ext_msg is not None:
        payload += attr(1, ext_msg.encode() + b"\0")
        flags = 0x200  # NLM_F_ACK_TLVS
    return nlmsg(2, seq, payload, flags)


def test_request_frames_the_message_and_waits_for_the_ack() -> None:
    sock = ScriptedSocket()
    rtnl = Rtnl(sock)  # type: ignore[arg-type]
    sock.replies = [ack(1), ack(2)]
    rtnl.request(16, b"abcd", 0x400, what="first")
    rtnl.request(16, b"efgh", what="second")
    length, msg_type, flags, seq, _ = HEADER.unpack_from(sock.sent[0])
    assert (length, msg_type, flags, seq) == (20, 16, 0x1 | 0x4 | 0x400, 1)
    assert sock.sent[0][16:] == b"abcd"
    assert HEADER.unpack_from(sock.sent[1])[3] == 2


def test_error_ack_raises_with_errno_and_kernel_text() -> None:
    sock = ScriptedSocket()
    rtnl = Rtnl(sock)  # type: ignore[arg-type]
    sock.replies = [ack(1, errno.EEXIST, "Link already exists")]
    with pytest.raises(NetlinkError) as info:
        rtnl.request(16, b"", what="create veth ovl1")
    assert info.value.errno == errno.EEXIST
    assert "create veth ovl1" in str(info.value)
    assert "File exists" in str(info.value)
    assert "Link already exists" in str(info.value)


def test_query_skips_stale_answers_and_collects_a_multipart_dump() -> None:
    sock = ScriptedSocket()
    rtnl = Rtnl(sock)  # type: ignore[arg-type]
    sock.replies = [ack(1)]
    rtnl.request(16, b"", what="warm up")
    # A late ack for request 1, then two parts of the dump for request 2 split over two datagrams.
    sock.replies = [ack(1) + nlmsg(16, 2, b"one!"), nlmsg(16, 2, b"two!") + nlmsg(3, 2, struct.pack("=i", 0))]
    assert [bytes(p) for p in rtnl.query(18, b"", what="list", dump=True)] == [b"one!", b"two!"]
    assert HEADER.unpack_from(sock.sent[1])[2] == 0x1 | 0x4 | 0x300


def test_dump_ending_in_error_raises() -> None:
    sock = ScriptedSocket()
    rtnl = Rtnl(sock)  # type: ignore[arg-type]
    sock.replies = [nlmsg(3, 1, struct.pack("=i", -errno.EBUSY))]
    with pytest.raises(NetlinkError) as info:
        rtnl.query(18, b"", what="list", dump=True)
    assert info.value.errno == errno.EBUSY


def test_truncated_reply_is_rejected() -> None:
    sock = ScriptedSocket()
    rtnl = Rtnl(sock)  # type: ignore[arg-type]
    sock.replies = [nlmsg(16, 1, b"x" * 40)[:30]]
    with pytest.raises(Exception, match="malformed"):
        rtnl.query(18, b"", what="get")


def test_attr_is_padded_to_four_bytes() -> None:
    assert attr(3, b"abc") == struct.pack("=HH", 7, 3) + b"abc" + b"\0"
    assert attr_u32(4, 1450) == struct.pack("=HHI", 8, 4, 1450)
    assert attr_str(3, "eth0") == struct.pack("=HH", 9, 3) + b"eth0\0" + b"\0" * 3


@given(st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=40)), max_size=8, unique_by=lambda t: t[0]))
def test_parse_attrs_reads_back_what_attr_wrote(items: list[tuple[int, bytes]]) -> None:
    payload = b"HEAD" + b"".join(attr(kind, value) for kind, value in items)
    assert {k: bytes(v) for k, v in parse_attrs(payload, 4).items()} == dict(items)


class Recorder(Rtnl):
    """An Rtnl that keeps the requests instead of sending them."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, bytes, int]] = []

    def request(self, msg_type: int, body: bytes, flags: int = 0, *, what: str) -> None:
        self.requests.append((msg_type, body, flags))


def decoded(cls, msg_type: int, body: bytes):
    msg = cls(HEADER.pack(HEADER.size + len(body), msg_type, 0, 1, 0) + body)
    msg.decode()
    return msg


def test_veth_request_decodes_as_intended() -> None:
    rec = Recorder()
    links.create_veth(rec, "ovl01234567", "eth0", mtu=1450, master_index=7, peer_netns_fd=9)
    ((msg_type, body, flags),) = rec.requests
    assert msg_type == links.RTM_NEWLINK and flags == 0x400 | 0x200  # CREATE | EXCL
    msg = decoded(ifinfmsg, msg_type, body)
    assert (msg["flags"], msg["change"]) == (1, 1)
    assert msg.get_attr("IFLA_IFNAME") == "ovl01234567"
    assert msg.get_attr("IFLA_MTU") == 1450
    assert msg.get_attr("IFLA_MASTER") == 7
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "eth0"
    assert peer.get_attr("IFLA_MTU") == 1450
    assert peer.get_attr("IFLA_NET_NS_FD") == 9


def test_detach_request_takes_link_down_and_out_of_its_bridge() -> None:
    rec = Recorder()
    links.detach_link(rec, "ovl01234567")
    msg = decoded(ifinfmsg, *rec.requests[0][:2])
    assert (msg["flags"], msg["change"]) == (0, 1)
    assert msg.get_attr("IFLA_IFNAME") == "ovl01234567"
    assert msg.get_attr("IFLA_MASTER") == 0


def test_address_and_route_requests_decode_as_intended() -> None:
    rec = Recorder()
    links.replace_address(rec, 2, ip_address("10.244.3.7"), 24)
    links.replace_default_route(rec, ip_address("10.244.3.1"), 2)
    addr = decoded(ifaddrmsg, *rec.requests[0][:2])
    assert (addr["family"], addr["prefixlen"], addr["index"]) == (socket.AF_INET, 24, 2)
    assert addr.get_attr("IFA_LOCAL") == addr.get_attr("IFA_ADDRESS") == "10.244.3.7"
    route = decoded(rtmsg, *rec.requests[1][:2])
    assert (route["family"], route["dst_len"], route["table"]) == (socket.AF_INET, 0, 254)
    assert route.get_attr("RTA_GATEWAY") == "10.244.3.1"
    assert route.get_attr("RTA_OIF") == 2
    assert rec.requests[1][2] == 0x400 | 0x100  # CREATE | REPLACE


def test_ipv6_address_request() -> None:
    rec = Recorder()
    links.replace_address(rec, 3, ip_address("fd00::7"), 64)
    addr = decoded(ifaddrmsg, *rec.requests[0][:2])
    assert (addr["family"], addr["prefixlen"]) == (socket.AF_INET6, 64)
    assert addr.get_attr("IFA_LOCAL") == "fd00::7"


def test_link_replies_are_parsed() -> None:
    sock = ScriptedSocket()
    rtnl = Rtnl(sock)  # type: ignore[arg-type]
    reply = (
        struct.pack("=BxHiII", 0, 1, 12, 0x1043, 0)
        + attr_str(3, "ovl01234567")
        + attr_u32(10, 4)
        + attr(18, attr_str(1, "veth"))
    )
    sock.replies = [nlmsg(16, 1, reply) + ack(1)]
    link = links.get_link(rtnl, "ovl01234567")
    assert link == links.Link(index=12, name="ovl01234567", kind="veth", up=True, master=4)


def test_missing_link_is_none() -> None:
    sock = ScriptedSocket()
    sock.replies = [ack(1, errno.ENODEV)]
    assert links.get_link(Rtnl(sock), "nope") is None  # type: ignore[arg-type]
    sock.replies = [ack(1, errno.EPERM)]
    with pytest.raises(NetlinkError):
        links.get_link(Rtnl(sock), "nope")  # type: ignore[arg-type]
