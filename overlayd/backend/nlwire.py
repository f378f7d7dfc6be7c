"""The rtnetlink wire format for overlayd's bulk paths: requests packed and dumps parsed with struct.

Why not pyroute2 here: at thousands of peers its generic message encoding and decoding
cost seconds per reconcile (about 100 us a message), while packing or parsing the few
fields overlayd uses costs a few microseconds. Pure functions only, no sockets:
netlink.py does the I/O. Layouts from linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from .objects import (
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    FdbEntry,
    IPAddress,
    IPNetwork,
    Neighbour,
    Route,
)

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100  # on an NLMSG_ERROR: the request is not echoed back
NLM_F_ACK_TLVS = 0x200  # on an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
NDA_DST, NDA_LLADDR, NDA_PORT, NDA_VNI, NDA_IFINDEX = 1, 2, 6, 7, 8
AF_BRIDGE = 7

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, (pad), ifindex, state, flags, type
_NLA = struct.Struct("=HH")  # length, type
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_ERRNO = struct.Struct("=i")

_CREATE_OR_REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
_DELETE = NLM_F_REQUEST | NLM_F_ACK


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, value: bytes) -> bytes:
    size = _NLA.size + len(value)
    return _NLA.pack(size, kind) + value + b"\0" * (_align(size) - size)


def _u32_attr(kind: int, value: int) -> bytes:
    return _attr(kind, _U32.pack(value))


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def _family(ip: IPAddress | IPNetwork) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


# -- dump requests (for a socket with NETLINK_GET_STRICT_CHK: the kernel then filters) ---------


def route_dump_request(seq: int, version: int, table: int = RT_TABLE_MAIN) -> bytes:
    """All routes of one table and IP version (strict checking wants every other header field 0)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0) + _u32_attr(RTA_TABLE, table)
    return _message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def neighbour_dump_request(seq: int, version: int, ifindex: int) -> bytes:
    """The neighbours of one IP version on one device (strict checking: the device as NDA_IFINDEX)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    body = _NDMSG.pack(family, 0, 0, 0, 0) + _u32_attr(NDA_IFINDEX, ifindex)
    return _message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def fdb_dump_request(seq: int, ifindex: int) -> bytes:
    """The FDB of one device (strict checking: ndm_ifindex is the port to dump)."""
    body = _NDMSG.pack(AF_BRIDGE, ifindex, 0, 0, 0)
    return _message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


# -- change requests: the same messages pyroute2 builds for netlink.py's single operations ------


def route_replace(seq: int, dst: IPNetwork, gateway: IPAddress, oif: int, protocol: int) -> bytes:
    """`dst via gateway dev <oif> onlink proto <protocol>` in the main table."""
    body = (
        _RTMSG.pack(_family(dst), dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol, 0, RTN_UNICAST, RTNH_F_ONLINK)
        + _attr(RTA_DST, dst.network_address.packed)
        + _attr(RTA_GATEWAY, gateway.packed)
        + _u32_attr(RTA_OIF, oif)
        + _u32_attr(RTA_TABLE, RT_TABLE_MAIN)
    )
    return _message(RTM_NEWROUTE, _CREATE_OR_REPLACE, seq, body)


def route_delete(seq: int, route: Route) -> bytes:
    """Exactly `route`: every key field is given, so a namesake with another metric stays."""
    table_field = route.table if route.table < 256 else 0  # RT_TABLE_UNSPEC: RTA_TABLE says
    body = _RTMSG.pack(_family(route.dst), route.dst.prefixlen, 0, route.tos, table_field, route.protocol,
                       route.scope, route.type, 0)
    body += _attr(RTA_DST, route.dst.network_address.packed)
    if route.gateway is not None:
        body += _attr(RTA_GATEWAY, route.gateway.packed)
    if route.oif is not None:
        body += _u32_attr(RTA_OIF, route.oif)
    body += _u32_attr(RTA_TABLE, route.table) + _u32_attr(RTA_PRIORITY, route.priority)
    return _message(RTM_DELROUTE, _DELETE, seq, body)


def neighbour_replace(seq: int, ifindex: int, ip: IPAddress, mac: str) -> bytes:
    body = _NDMSG.pack(_family(ip), ifindex, NUD_PERMANENT, 0, 0) + _attr(NDA_DST, ip.packed)
    body += _attr(NDA_LLADDR, _mac_bytes(mac))
    return _message(RTM_NEWNEIGH, _CREATE_OR_REPLACE, seq, body)


def neighbour_delete(seq: int, neighbour: Neighbour) -> bytes:
    # The state is ignored by the kernel on delete; NUD_PERMANENT like pyroute2 sends.
    body = _NDMSG.pack(_family(neighbour.ip), neighbour.ifindex, NUD_PERMANENT, 0, 0)
    body += _attr(NDA_DST, neighbour.ip.packed)
    return _message(RTM_DELNEIGH, _DELETE, seq, body)


def fdb_replace(seq: int, ifindex: int, mac: str, dst: IPAddress) -> bytes:
    """Unicast `mac` -> remote `dst` on a VXLAN device (NTF_SELF: the device's own FDB)."""
    body = _NDMSG.pack(AF_BRIDGE, ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
    body += _attr(NDA_LLADDR, _mac_bytes(mac)) + _attr(NDA_DST, dst.packed)
    return _message(RTM_NEWNEIGH, _CREATE_OR_REPLACE, seq, body)


def fdb_delete(seq: int, entry: FdbEntry) -> bytes:
    body = _NDMSG.pack(AF_BRIDGE, entry.ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
    body += _attr(NDA_LLADDR, _mac_bytes(entry.mac))
    if entry.dst is not None:
        body += _attr(NDA_DST, entry.dst.packed)
    if entry.port is not None:
        body += _attr(NDA_PORT, _BE16.pack(entry.port))
    if entry.vni is not None:
        body += _u32_attr(NDA_VNI, entry.vni)
    return _message(RTM_DELNEIGH, _DELETE, seq, body)


# -- a batch of change requests ------------------------------------------------------------------


@dataclass
class Batch:
    """Change requests in order, each with the operation an error names (as netlink.py's single
    operations word it) and whether "already gone" counts as done. Sequence numbers are 1-based
    positions, so an acknowledgement maps back to its request."""

    messages: list[bytes] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    missing_ok: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages)

    def _add(self, message: bytes, operation: str, missing_ok: bool = False) -> None:
        self.messages.append(message)
        self.operations.append(operation)
        self.missing_ok.append(missing_ok)

    def _seq(self) -> int:
        return len(self.messages) + 1

    def replace_onlink_route(self, dst: IPNetwork, gateway: IPAddress, oif: int, protocol: int) -> None:
        self._add(route_replace(self._seq(), dst, gateway, oif, protocol), f"set route {dst} via {gateway}")

    def delete_route(self, route: Route) -> None:
        self._add(route_delete(self._seq(), route), f"delete route {route.dst}", missing_ok=True)

    def replace_neighbour(self, ifindex: int, ip: IPAddress, mac: str) -> None:
        self._add(neighbour_replace(self._seq(), ifindex, ip, mac), f"set neighbour {ip} -> {mac}")

    def delete_neighbour(self, neighbour: Neighbour) -> None:
        self._add(neighbour_delete(self._seq(), neighbour), f"delete neighbour {neighbour.ip}", missing_ok=True)

    def replace_fdb(self, ifindex: int, mac: str, dst: IPAddress) -> None:
        self._add(fdb_replace(self._seq(), ifindex, mac, dst), f"set FDB entry {mac} -> {dst}")

    def delete_fdb(self, entry: FdbEntry) -> None:
        self._add(fdb_delete(self._seq(), entry), f"delete FDB entry {entry.mac} -> {entry.dst}", missing_ok=True)


# -- parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    type: int
    flags: int
    seq: int
    body: bytes


def split(buffer: bytes) -> Iterator[Message]:
    """The messages of one datagram; a truncated tail is dropped (the kernel never sends one)."""
    offset, end = 0, len(buffer)
    while offset + _HEADER.size <= end:
        length, kind, flags, seq, _port = _HEADER.unpack_from(buffer, offset)
        if length < _HEADER.size or offset + length > end:
            return
        yield Message(kind, flags, seq, buffer[offset + _HEADER.size : offset + length])
        offset += _align(length)


def attributes(body: bytes, offset: int) -> dict[int, bytes]:
    """Top-level attributes from `offset` on, by type (nested ones stay packed)."""
    found: dict[int, bytes] = {}
    end = len(body)
    while offset + _NLA.size <= end:
        length, kind = _NLA.unpack_from(body, offset)
        if length < _NLA.size or offset + length > end:
            break
        found[kind & 0x3FFF] = body[offset + _NLA.size : offset + length]  # without NLA_F_NESTED/BYTEORDER
        offset += _align(length)
    return found


def _u32(value: bytes | None) -> int | None:
    return _U32.unpack(value)[0] if value is not None and len(value) == 4 else None


def _ip(value: bytes | None) -> IPAddress | None:
    return ipaddress.ip_address(value) if value is not None and len(value) in (4, 16) else None


def _mac(value: bytes | None) -> str | None:
    return value.hex(":") if value else None


def parse_route(body: bytes) -> Route | None:
    """A route as objects.route_from_msg reads it; None for a family other than IPv4/IPv6."""
    family, dst_len, _src_len, tos, table, protocol, scope, kind, flags = _RTMSG.unpack_from(body)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attrs = attributes(body, _RTMSG.size)
    size = 4 if family == socket.AF_INET else 16
    dst = attrs.get(RTA_DST) or bytes(size)
    if len(dst) != size:
        return None
    network: IPNetwork
    if family == socket.AF_INET:
        network = ipaddress.IPv4Network((dst, dst_len), strict=False)
    else:
        network = ipaddress.IPv6Network((dst, dst_len), strict=False)
    return Route(
        dst=network,
        table=_u32(attrs.get(RTA_TABLE)) or table,
        protocol=protocol,
        type=kind,
        oif=_u32(attrs.get(RTA_OIF)),
        gateway=_ip(attrs.get(RTA_GATEWAY)),
        onlink=bool(flags & RTNH_F_ONLINK),
        priority=_u32(attrs.get(RTA_PRIORITY)) or 0,
        tos=tos,
        scope=scope,
    )


def parse_neighbour(body: bytes) -> Neighbour | None:
    """A neighbour as objects.neighbour_from_msg reads it; None without an IP address."""
    _family_, ifindex, state, _flags, _kind = _NDMSG.unpack_from(body)
    attrs = attributes(body, _NDMSG.size)
    ip = _ip(attrs.get(NDA_DST))
    if ip is None:
        return None
    return Neighbour(ifindex=ifindex, ip=ip, mac=_mac(attrs.get(NDA_LLADDR)), state=state)


def parse_fdb(body: bytes) -> FdbEntry | None:
    """An FDB entry as objects.fdb_from_msg reads it; None without a MAC address."""
    _family_, ifindex, _state, _flags, _kind = _NDMSG.unpack_from(body)
    attrs = attributes(body, _NDMSG.size)
    mac = _mac(attrs.get(NDA_LLADDR))
    if mac is None:
        return None
    port = attrs.get(NDA_PORT)
    return FdbEntry(
        ifindex=ifindex,
        mac=mac,
        dst=_ip(attrs.get(NDA_DST)),
        port=_BE16.unpack(port)[0] if port is not None and len(port) == 2 else None,
        vni=_u32(attrs.get(NDA_VNI)),
    )


@dataclass(frozen=True)
class Ack:
    seq: int
    error: int  # 0, or a positive errno
    detail: str | None  # the kernel's extended-ack message, if any


def parse_ack(message: Message) -> Ack:
    """An NLMSG_ERROR message (an acknowledgement when error is 0), or the status of NLMSG_DONE."""
    (code,) = _ERRNO.unpack_from(message.body)
    detail = None
    if message.type == NLMSG_ERROR and message.flags & NLM_F_ACK_TLVS:
        offset = _ERRNO.size + _HEADER.size
        if not message.flags & NLM_F_CAPPED:
            offset = _ERRNO.size + _align(_HEADER.unpack_from(message.body, _ERRNO.size)[0])
        text = attributes(message.body, offset).get(NLMSGERR_ATTR_MSG)
        detail = text.rstrip(b"\0").decode(errors="replace") if text else None
    return Ack(seq=message.seq, error=-code, detail=detail)
