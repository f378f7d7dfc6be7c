"""Forwarding names that are not ours to the host's resolvers (trio).

Each forward uses a fresh connected UDP socket, so the kernel picks a random source port and
drops datagrams from anyone but the upstream, and a random 16-bit ID from `secrets`: an
off-path spoofer must guess both (RFC 5452). A reply counts only if it is a response with our
ID and our question (dnspython reads the header and question; the rest is relayed as sent).
Upstreams are tried in order, each for `timeout` seconds. A TCP client's query whose UDP
reply is truncated (TC) is asked again over TCP, so the client gets the whole answer.
"""

from __future__ import annotations

import secrets
import socket
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import trio

from overlayd.dns.framing import FrameReader, FrameTooLarge, frame
from overlayd.dns.metrics import DnsMetrics
from overlayd.dns.outcomes import DROP_BAD_UPSTREAM
from overlayd.dns.resolver import Forward, Question

IPAddress = IPv4Address | IPv6Address

DNS_PORT = 53
UPSTREAM_TIMEOUT = 2.0  # seconds per upstream; glibc waits 5 s per try
MAX_REPLY_BYTES = 65535
_ID = struct.Struct("!H")


def reply_matches_untrusted(data: bytes, query_id: int, question: Question) -> dns.message.Message | None:
    """The reply's header and question (parsed by dnspython) if `data` answers our query, else None."""
    try:
        reply = dns.message.from_wire(data, question_only=True)
    except dns.exception.DNSException:
        return None
    if reply.id != query_id or not reply.flags & dns.flags.QR or reply.opcode() != dns.opcode.QUERY:
        return None
    if len(reply.question) != 1:
        return None
    asked = reply.question[0]
    if (asked.name, asked.rdtype, asked.rdclass) != (question.name, question.rdtype, question.rdclass):
        return None
    return reply


class Upstreams:
    def __init__(self, servers: Sequence[IPAddress], metrics: DnsMetrics, *, port: int = DNS_PORT,
                 timeout: float = UPSTREAM_TIMEOUT) -> None:
        self.servers = tuple(servers)
        self._metrics = metrics
        self._port = port
        self._timeout = timeout

    async def ask(self, forward: Forward, *, tcp_client: bool) -> bytes | None:
        """An upstream's reply to forward.query, with the client's ID; None if none answered."""
        for server in self.servers:
            reply: bytes | None = None
            with trio.move_on_after(self._timeout):
                try:
                    reply = await self._ask_udp(server, forward, tcp_client)
                except (OSError, trio.BrokenResourceError, FrameTooLarge):
                    pass  # refused, unreachable, reset: try the next one
            if reply is not None:
                return forward.query[:2] + reply[2:]
        return None

    async def _ask_udp(self, server: IPAddress, forward: Forward, tcp_client: bool) -> bytes:
        family = socket.AF_INET6 if server.version == 6 else socket.AF_INET
        query_id = secrets.randbits(16)
        with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
            await sock.connect((str(server), self._port))
            await sock.send(_ID.pack(query_id) + forward.query[2:])
            while True:
                data = await sock.recv(MAX_REPLY_BYTES)
                reply = reply_matches_untrusted(data, query_id, forward.question)
                if reply is None:
                    self._metrics.drop(DROP_BAD_UPSTREAM)
                    continue
                if tcp_client and reply.flags & dns.flags.TC:
                    return await self._ask_tcp(server, forward)
                return data

    async def _ask_tcp(self, server: IPAddress, forward: Forward) -> bytes:
        query_id = secrets.randbits(16)
        async with await trio.open_tcp_stream(str(server), self._port) as stream:
            await stream.send_all(frame(_ID.pack(query_id) + forward.query[2:]))
            data = await FrameReader(stream).receive_untrusted(MAX_REPLY_BYTES)
        if data is None or reply_matches_untrusted(data, query_id, forward.question) is None:
            self._metrics.drop(DROP_BAD_UPSTREAM)
            raise trio.BrokenResourceError(f"no usable TCP reply from {server}")
        return data
