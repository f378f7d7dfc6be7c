"""A minimal synchronous rtnetlink client: build a request, send it, read its ack or replies.

Why not pyroute2: pod setup is a handful of small requests, and on this
machine one IPRoute call costs ~0.7 ms of Python, encoding one message with
pyroute2's classes 0.02-0.2 ms, while packing it with struct takes a few
microseconds. The messages pods need are few and fixed, so we pack them here.

A netlink socket belongs to the network namespace it was created in, whatever
thread later uses it: that is how pod-side configuration runs from the host.
"""

from __future__ import annotations

import os
import socket
import struct

from overlayd.errors import KernelError

# linux/netlink.h
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_ACK_TLVS = 0x200
_SOL_NETLINK = 270  # not exported by the socket module
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_NLMSGERR_ATTR_MSG = 1

_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_ATTR = struct.Struct("=HH")  # length, type
_U32 = struct.Struct("=I")
_NLA_TYPE_MASK = 0x3FFF  # without the NESTED and BYTEORDER flag bits
_RECV_SIZE = 1 << 16


class NetlinkError(KernelError):
    """The kernel refused a request; `errno` is kept so callers can tolerate ENODEV, EEXIST..."""

    def __init__(self, what: str, err: int, detail: str = "") -> None:
        extra = f": {detail}" if detail else ""
        super().__init__(f"{what}: {os.strerror(err)} (errno {err}){extra}")
        self.errno = err


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute (type-length-value), padded to 4 bytes."""
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, kind) + value + b"\0" * (-length % 4)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def parse_attrs(payload: bytes, offset: int) -> dict[int, bytes]:
    """The netlink attributes starting at `offset` of a payload: type -> value (last one wins)."""
    attrs: dict[int, bytes] = {}
    while offset + _ATTR.size <= len(payload):
        length, kind = _ATTR.unpack_from(payload, offset)
        if length < _ATTR.size or offset + length > len(payload):
            break
        attrs[kind & _NLA_TYPE_MASK] = payload[offset + _ATTR.size : offset + length]
        offset += (length + 3) & ~3
    return attrs


class Rtnl:
    """One NETLINK_ROUTE socket in the network namespace current at construction.

    `sock` is for tests: anything with send(), recv() and close().
    """

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock if sock is not None else _open_socket()
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, msg_type: int, body: bytes, flags: int = 0, *, what: str) -> None:
        """Send one change request and wait for its ack; `what` names it in errors."""
        self._send(msg_type, body, NLM_F_REQUEST | NLM_F_ACK | flags)
        self._collect(what)

    def request_all(self, requests: list[tuple[int, bytes, int, str]]) -> None:
        """Send change requests (type, body, flags, what) in one datagram and wait for every ack.

        The kernel carries them out in order, acking each, and goes on after a refusal; the first
        refusal is raised once all acks are read.
        """
        first = self._seq + 1
        self._sock.send(b"".join(  # each message starts 4-byte aligned (NLMSG_ALIGN)
            _HEADER.pack(_HEADER.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, first + i, 0)
            + body + b"\0" * (-len(body) % 4)
            for i, (msg_type, body, flags, _what) in enumerate(requests)))
        refused: NetlinkError | None = None
        for i, (_type, _body, _flags, what) in enumerate(requests):
            self._seq = first + i
            try:
                self._collect(what)
            except NetlinkError as exc:
                refused = refused or exc
        if refused is not None:
            raise refused

    def query(self, msg_type: int, body: bytes, *, what: str, dump: bool = False) -> list[bytes]:
        """Send a get (or dump) request and return the replies' payloads (after the netlink header)."""
        self._send(msg_type, body, NLM_F_REQUEST | NLM_F_ACK | (NLM_F_DUMP if dump else 0))
        return self._collect(what)

    def _send(self, msg_type: int, body: bytes, flags: int) -> None:
        self._seq += 1
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), msg_type, flags, self._seq, 0) + body)

    def _collect(self, what: str) -> list[bytes]:
        """Read until the ack (NLMSG_ERROR) or the end of a dump (NLMSG_DONE)."""
        out: list[bytes] = []
        while True:
            data = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, mflags, seq, _port = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size or offset + length > len(data):
                    raise KernelError(f"{what}: malformed netlink reply")
                body = offset + _HEADER.size
                if seq == self._seq:  # anything else is a late answer to an earlier request
                    if mtype in (_NLMSG_DONE, _NLMSG_ERROR):
                        # Both carry an errno (0 or negative): DONE ends a dump, ERROR is the ack.
                        (err,) = struct.unpack_from("=i", data, body) if length >= _HEADER.size + 4 else (0,)
                        if err:
                            payload = data[body : offset + length]
                            detail = _ext_ack_message(payload, mflags) if mtype == _NLMSG_ERROR else ""
                            raise NetlinkError(what, -err, detail)
                        return out
                    out.append(data[body : offset + length])
                offset += (length + 3) & ~3


def _open_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        # Errors come back with the kernel's own text and without an echo of our request.
        sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise KernelError(f"cannot open a netlink socket: {exc}") from exc
    return sock


def _ext_ack_message(payload: bytes, flags: int) -> str:
    """The kernel's explanation (NLMSGERR_ATTR_MSG) in an error reply, if it sent one."""
    if not flags & _NLM_F_ACK_TLVS:
        return ""
    # errno, then only the header of our request (NETLINK_CAP_ACK), then the attributes.
    attrs = parse_attrs(payload, 4 + _HEADER.size)
    return attrs.get(_NLMSGERR_ATTR_MSG, b"").rstrip(b"\0").decode("utf-8", "replace")
