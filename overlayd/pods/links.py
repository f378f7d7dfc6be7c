"""The rtnetlink requests pod networking needs: veth, link state, address, default route.

Each function is one request on an Rtnl socket; the socket decides which
network namespace it acts in. Constants are from linux/rtnetlink.h,
linux/if_link.h, linux/if_addr.h and linux/veth.h.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from overlayd.pods.rtnl import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NetlinkError,
    Rtnl,
    attr,
    attr_str,
    attr_u32,
    parse_attrs,
)

IPAddress = IPv4Address | IPv6Address

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE = 24
IFF_UP = 0x1
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_OIF = 4
RTA_GATEWAY = 5
RTEXT_FILTER_SKIP_STATS = 1 << 3  # the kernel leaves out the counters we would not read
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

LOOPBACK_INDEX = 1  # the kernel gives "lo" ifindex 1 in every network namespace

_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND: "veth", "bridge"...; None for plain devices like lo
    up: bool
    master: int | None  # ifindex of the bridge this link is a port of


def family_of(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _text(raw: bytes) -> str:
    return bytes(raw).rstrip(b"\0").decode("ascii", "replace")


def _link(payload: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload, _IFINFOMSG.size)
    kind = parse_attrs(attrs.get(IFLA_LINKINFO, b""), 0).get(IFLA_INFO_KIND)
    master = attrs.get(IFLA_MASTER)
    return Link(
        index=index,
        name=_text(attrs.get(IFLA_IFNAME, b"")),
        kind=_text(kind) if kind is not None else None,
        up=bool(flags & IFF_UP),
        master=(struct.unpack("=I", master)[0] or None) if master is not None else None,
    )


def _request_unless_gone(rtnl: Rtnl, msg_type: int, body: bytes, *, what: str) -> bool:
    """Send a request about a link; False when the link does not exist (ENODEV)."""
    try:
        rtnl.request(msg_type, body, what=what)
    except NetlinkError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise
    return True


def get_link(rtnl: Rtnl, ifname: str) -> Link | None:
    """The link called `ifname`, or None when there is none."""
    body = _ifinfomsg() + attr_str(IFLA_IFNAME, ifname) + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    try:
        (reply,) = rtnl.query(RTM_GETLINK, body, what=f"look up link {ifname}")
    except NetlinkError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    return _link(reply)


def list_links(rtnl: Rtnl) -> list[Link]:
    """Every link in the socket's namespace."""
    body = _ifinfomsg() + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    return [_link(reply) for reply in rtnl.query(RTM_GETLINK, body, what="list links", dump=True)]


def create_veth(
    rtnl: Rtnl, host_name: str, peer_name: str, *, mtu: int, master_index: int, peer_netns_fd: int,
    host_mac: bytes | None = None, peer_mac: bytes | None = None,
) -> None:
    """Create a veth pair in one request: host end up in the bridge, peer (still down) in another netns.

    The peer cannot be brought up in the same request: the kernel opens it before the pair is linked (ENOTCONN).
    MACs not given are the kernel's random ones.
    """
    peer = _ifinfomsg() + attr_str(IFLA_IFNAME, peer_name) + attr_u32(IFLA_MTU, mtu) + attr_u32(
        IFLA_NET_NS_FD, peer_netns_fd
    )
    if peer_mac is not None:
        peer += attr(IFLA_ADDRESS, peer_mac)
    linkinfo = attr_str(IFLA_INFO_KIND, "veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))
    body = (
        _ifinfomsg(flags=IFF_UP, change=IFF_UP)
        + attr_str(IFLA_IFNAME, host_name)
        + attr_u32(IFLA_MTU, mtu)
        + attr_u32(IFLA_MASTER, master_index)
        + attr(IFLA_LINKINFO, linkinfo)
        + (attr(IFLA_ADDRESS, host_mac) if host_mac is not None else b"")
    )
    rtnl.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL, what=f"create veth {host_name}")


def set_link(rtnl: Rtnl, index: int, *, mtu: int | None = None, master_index: int | None = None) -> None:
    """Bring a link up, optionally setting its MTU and bridge (idempotent)."""
    body = _ifinfomsg(index=index, flags=IFF_UP, change=IFF_UP)
    if mtu is not None:
        body += attr_u32(IFLA_MTU, mtu)
    if master_index is not None:
        body += attr_u32(IFLA_MASTER, master_index)
    rtnl.request(RTM_NEWLINK, body, what=f"set link {index} up")


def detach_link(rtnl: Rtnl, ifname: str) -> bool:
    """Take a link down and out of its bridge in one request; False when it does not exist."""
    body = _ifinfomsg(flags=0, change=IFF_UP) + attr_str(IFLA_IFNAME, ifname) + attr_u32(IFLA_MASTER, 0)
    return _request_unless_gone(rtnl, RTM_NEWLINK, body, what=f"detach link {ifname}")


def delete_link(rtnl: Rtnl, ifname: str) -> bool:
    """Delete a link by name (slow: the kernel waits for an RCU barrier); False when it was already gone."""
    body = _ifinfomsg() + attr_str(IFLA_IFNAME, ifname)
    return _request_unless_gone(rtnl, RTM_DELLINK, body, what=f"delete link {ifname}")


def _ifaddrmsg(ip: IPAddress, prefixlen: int, index: int) -> bytes:
    return _IFADDRMSG.pack(family_of(ip), prefixlen, 0, RT_SCOPE_UNIVERSE, index)


def replace_address(rtnl: Rtnl, index: int, ip: IPAddress, prefixlen: int) -> None:
    """Add ip/prefixlen to a link, or leave it as is when already there."""
    body = _ifaddrmsg(ip, prefixlen, index) + attr(IFA_LOCAL, ip.packed) + attr(IFA_ADDRESS, ip.packed)
    rtnl.request(RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_REPLACE, what=f"add address {ip}/{prefixlen}")


def addresses(rtnl: Rtnl, index: int, family: int) -> list[tuple[IPAddress, int]]:
    """The (address, prefixlen) pairs on one link."""
    body = _IFADDRMSG.pack(family, 0, 0, 0, 0)
    out: list[tuple[IPAddress, int]] = []
    for reply in rtnl.query(RTM_GETADDR, body, what="list addresses", dump=True):
        reply_family, prefixlen, _flags, _scope, reply_index = _IFADDRMSG.unpack_from(reply)
        attrs = parse_attrs(reply, _IFADDRMSG.size)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if reply_index == index and reply_family == family and raw is not None:
            out.append((ip_address(bytes(raw)), prefixlen))
    return out


def delete_address(rtnl: Rtnl, index: int, ip: IPAddress, prefixlen: int) -> None:
    body = _ifaddrmsg(ip, prefixlen, index) + attr(IFA_LOCAL, ip.packed)
    rtnl.request(RTM_DELADDR, body, what=f"delete address {ip}/{prefixlen}")


def replace_default_route(rtnl: Rtnl, gateway: IPAddress, index: int) -> None:
    """Point the default route of the socket's namespace at `gateway` through link `index`."""
    header = _RTMSG.pack(family_of(gateway), 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body = header + attr(RTA_GATEWAY, gateway.packed) + attr_u32(RTA_OIF, index)
    rtnl.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_REPLACE, what=f"set default route via {gateway}")
