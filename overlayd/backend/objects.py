"""Kernel objects as plain frozen values, parsed from pyroute2 netlink messages.

The planners only ever see these values, never netlink messages, so they can be
tested without a kernel. Parsers take anything with pyroute2's `.get(name)`.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Our mark on every route and address overlayd adds (rtm_protocol / IFA_PROTO): what
# carries it is ours to change or delete. 213 is unassigned in linux/rtnetlink.h and in
# iproute2's rt_protos (which uses 0-18, 42, 99, 186-192); `ip route show proto 213`.
RTPROT_OVERLAYD = 213

# Kernel constants we compare against (linux/rtnetlink.h, linux/neighbour.h, linux/if_addr.h).
RTPROT_KERNEL = 2
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x04
RT_SCOPE_LINK = 253
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02  # FDB entry of the device itself (VXLAN), not of a bridge master
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFF_UP = 0x01
# An IPv6 route added without a metric gets this one; IPv4 routes get 0.
IP6_RT_PRIO_USER = 1024


class NetlinkMessage(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class VxlanAttrs:
    """The VXLAN settings we care about (IFLA_INFO_DATA of a vxlan link)."""

    vni: int
    port: int
    local: IPAddress | None
    link: int | None  # ifindex of the underlay device
    learning: bool


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # None for links without IFLA_LINKINFO (lo, physical NICs)
    mac: str | None
    mtu: int
    up: bool  # administratively up (IFF_UP)
    vxlan: VxlanAttrs | None = None  # set for VXLAN links only


@dataclass(frozen=True)
class Address:
    ifindex: int
    interface: IPInterface  # address with its prefix length
    protocol: int  # IFA_PROTO, 0 when the kernel reports none
    scope: int


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    table: int
    protocol: int
    type: int
    oif: int | None
    gateway: IPAddress | None
    onlink: bool
    priority: int
    tos: int
    scope: int


@dataclass(frozen=True)
class Neighbour:
    ifindex: int
    ip: IPAddress
    mac: str | None
    state: int

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


@dataclass(frozen=True)
class FdbEntry:
    """One remote of a VXLAN FDB entry; port/vni are None when they equal the device's."""

    ifindex: int
    mac: str
    dst: IPAddress | None
    port: int | None = None
    vni: int | None = None


def link_from_msg(msg: NetlinkMessage) -> Link:
    info = msg.get("linkinfo")
    kind = info.get("kind") if info is not None else None
    mac = msg.get("address")
    return Link(
        index=msg.get("index"),
        name=msg.get("ifname"),
        kind=kind,
        mac=mac.lower() if mac else None,
        mtu=msg.get("mtu") or 0,
        up=bool((msg.get("flags") or 0) & IFF_UP),
        vxlan=_vxlan_attrs(info.get("data")) if kind == "vxlan" else None,
    )


def _vxlan_attrs(data: NetlinkMessage | None) -> VxlanAttrs | None:
    if data is None:
        return None
    local = data.get("vxlan_local") or data.get("vxlan_local6")
    return VxlanAttrs(
        vni=data.get("vxlan_id"),
        port=data.get("vxlan_port"),
        local=ipaddress.ip_address(local) if local else None,
        link=data.get("vxlan_link") or None,
        learning=bool(data.get("vxlan_learning")),
    )


def address_from_msg(msg: NetlinkMessage) -> Address:
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    ip = msg.get("local") or msg.get("address")
    return Address(
        ifindex=msg.get("index"),
        interface=ipaddress.ip_interface(f"{ip}/{msg.get('prefixlen')}"),
        protocol=msg.get("proto") or 0,
        scope=msg.get("scope") or 0,
    )


def route_from_msg(msg: NetlinkMessage) -> Route:
    family_any = "0.0.0.0" if msg.get("family") == socket.AF_INET else "::"
    dst = msg.get("dst") or family_any
    gateway = msg.get("gateway")
    return Route(
        dst=ipaddress.ip_network(f"{dst}/{msg.get('dst_len')}", strict=False),
        table=msg.get("table") or 0,
        protocol=msg.get("proto") or 0,
        type=msg.get("type") or 0,
        oif=msg.get("oif"),
        gateway=ipaddress.ip_address(gateway) if gateway else None,
        onlink=bool((msg.get("flags") or 0) & RTNH_F_ONLINK),
        priority=msg.get("priority") or 0,
        tos=msg.get("tos") or 0,
        scope=msg.get("scope") or 0,
    )


def neighbour_from_msg(msg: NetlinkMessage) -> Neighbour:
    mac = msg.get("lladdr")
    return Neighbour(
        ifindex=msg.get("ifindex"),
        ip=ipaddress.ip_address(msg.get("dst")),
        mac=mac.lower() if mac else None,
        state=msg.get("state") or 0,
    )


def fdb_from_msg(msg: NetlinkMessage) -> FdbEntry:
    dst = msg.get("dst")
    return FdbEntry(
        ifindex=msg.get("ifindex"),
        mac=msg.get("lladdr").lower(),
        dst=ipaddress.ip_address(dst) if dst else None,
        port=msg.get("port"),
        vni=msg.get("vni"),
    )
