"""The cluster DNS server: trio UDP and TCP on one address, answers from memory.

UDP is read straight from a non-blocking socket in batches (wait until readable, then
recvfrom until the queue is empty or a batch is done): trio's per-call bookkeeping would
otherwise cost more than answering a cached query. Replies go out with a non-blocking
sendto; a full send buffer drops the reply, as a router would. Forwards run as tasks, at
most MAX_FORWARDS at once (more are dropped: the client retries). TCP connections are
served one message at a time, at most MAX_TCP_CONNECTIONS at once, each closed after
TCP_IDLE_TIMEOUT without a complete message and at the first message that is dropped.

No packet stops the server: the resolver never raises for any bytes, and any other error
while handling one packet or connection is logged and counted as internal_error (a bug to
fix), because DNS for every pod on the host depends on this loop.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address

import trio

from overlayd.dns.framing import FrameReader, FrameTooLarge, frame
from overlayd.dns.metrics import DnsMetrics
from overlayd.dns.outcomes import (DROP_FORWARD_BUSY, DROP_INTERNAL, DROP_OVERSIZED, DROP_SEND_FAILED, DROP_TCP_BUSY,
                                   FORWARD, SERVFAIL)
from overlayd.dns.resolver import MAX_QUERY_BYTES, Answer, Forward, NamesSource
from overlayd.dns.upstream import DNS_PORT, UPSTREAM_TIMEOUT, Upstreams

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
Address = tuple[str, int]

UDP_BATCH = 64  # datagrams handled between two looks at the rest of the trio loop
MAX_FORWARDS = 256
MAX_TCP_CONNECTIONS = 64
TCP_IDLE_TIMEOUT = 10.0  # seconds for a whole message in, or a reply out


async def serve_dns(source: NamesSource, listen: IPv4Address, port: int, upstreams: Sequence[IPAddress],
                    metrics: DnsMetrics, *, upstream_port: int = DNS_PORT,
                    upstream_timeout: float = UPSTREAM_TIMEOUT,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve DNS on listen:port (UDP and TCP) until cancelled.

    source: the names to answer (NamesSource.update() takes effect with the next query).
    upstreams: where other names go (port upstream_port), tried in order; with none, they
    get SERVFAIL. Our own address is left out, so a host whose resolv.conf points at us
    cannot make queries loop. `task_status.started(port)` once both sockets listen (port 0:
    the one the kernel chose for UDP, also used for TCP). OSError if the address cannot be
    bound (the address must exist: bind after the bridge is up).
    """
    servers = [s for s in upstreams if not (s == listen and upstream_port == port)]
    if len(servers) != len(upstreams):
        log.warning("cluster DNS: %s is our own address, not used as an upstream", listen)
    server = _Server(source, Upstreams(servers, metrics, port=upstream_port, timeout=upstream_timeout), metrics)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        udp.setblocking(False)
        udp.bind((str(listen), port))
        bound = udp.getsockname()[1]
        listeners = await trio.open_tcp_listeners(bound, host=str(listen))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.serve_udp, udp, nursery)
                nursery.start_soon(trio.serve_listeners, server.serve_tcp_connection, listeners)
                log.info("cluster DNS on %s:%d (UDP and TCP), upstreams %s", listen, bound,
                         ", ".join(map(str, servers)) or "none")
                task_status.started(bound)
        finally:
            for listener in listeners:  # free the port now, so a restarted server can bind it at once
                listener.socket.close()


class _Server:
    def __init__(self, source: NamesSource, upstreams: Upstreams, metrics: DnsMetrics) -> None:
        self._source = source
        self._upstreams = upstreams
        self._metrics = metrics
        self._forwards = trio.Semaphore(MAX_FORWARDS)
        self._tcp_open = 0

    async def serve_udp(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(UDP_BATCH):
                try:
                    data, addr = sock.recvfrom(MAX_QUERY_BYTES + 1)  # one more: tells an oversized datagram
                except BlockingIOError:
                    break
                except OSError:  # e.g. an ICMP error queued on the socket: nothing to answer
                    continue
                try:
                    self._handle_datagram(sock, data, addr, nursery)
                except Exception:
                    log.exception("cluster DNS: handling a %d-byte query from %s failed", len(data), addr)
                    self._metrics.drop(DROP_INTERNAL)

    def _handle_datagram(self, sock: socket.socket, data: bytes, addr: Address, nursery: trio.Nursery) -> None:
        decision = self._source.resolver.resolve_untrusted(data)
        if isinstance(decision, Answer):
            self._send(sock, decision.wire, addr, decision.result)
        elif isinstance(decision, Forward):
            try:
                self._forwards.acquire_nowait()
            except trio.WouldBlock:
                self._metrics.drop(DROP_FORWARD_BUSY)
                return
            nursery.start_soon(self._forward_udp, sock, decision, addr)
        else:
            self._metrics.drop(decision.reason)

    async def _forward_udp(self, sock: socket.socket, forward: Forward, addr: Address) -> None:
        try:
            reply, result = await self._forward(forward, tcp_client=False)
            self._send(sock, reply, addr, result)
        except Exception:
            log.exception("cluster DNS: forwarding a query from %s failed", addr)
            self._metrics.drop(DROP_INTERNAL)
        finally:
            self._forwards.release()

    async def _forward(self, forward: Forward, *, tcp_client: bool) -> tuple[bytes, str]:
        reply = await self._upstreams.ask(forward, tcp_client=tcp_client)
        return (reply, FORWARD) if reply is not None else (forward.servfail, SERVFAIL)

    def _send(self, sock: socket.socket, reply: bytes, addr: Address, result: str) -> None:
        try:
            sock.sendto(reply, addr)
        except OSError:  # full buffer, no route, filtered: the client retries
            self._metrics.drop(DROP_SEND_FAILED)
            return
        self._metrics.count(result)

    async def serve_tcp_connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._tcp_open >= MAX_TCP_CONNECTIONS:
                self._metrics.drop(DROP_TCP_BUSY)
                return
            self._tcp_open += 1
            try:
                await self._serve_tcp(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # reset by the client, or the stream ended inside a message
            except FrameTooLarge:
                self._metrics.drop(DROP_OVERSIZED)
            except Exception:
                log.exception("cluster DNS: serving a TCP connection failed")
                self._metrics.drop(DROP_INTERNAL)
            finally:
                self._tcp_open -= 1

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        reader = FrameReader(stream)
        while True:
            query: bytes | None = None
            with trio.move_on_after(TCP_IDLE_TIMEOUT):
                query = await reader.receive_untrusted(MAX_QUERY_BYTES)
            if query is None:  # end of stream, or idle too long
                return
            decision = self._source.resolver.resolve_untrusted(query)
            if isinstance(decision, Answer):
                reply, result = decision.wire, decision.result
            elif isinstance(decision, Forward):
                async with self._forwards:
                    reply, result = await self._forward(decision, tcp_client=True)
            else:
                self._metrics.drop(decision.reason)
                return  # a client that sends garbage gets no more of our time
            with trio.move_on_after(TCP_IDLE_TIMEOUT) as sending:
                await stream.send_all(frame(reply))
            if sending.cancelled_caught:
                self._metrics.drop(DROP_SEND_FAILED)
                return
            self._metrics.count(result)
