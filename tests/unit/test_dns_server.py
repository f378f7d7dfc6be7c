"""serve_dns on real loopback sockets (no root): UDP and TCP answers, forwarding to a scripted
upstream, limits, and what the counters say. On-the-wire checks in namespaces, with dnsmasq as
the upstream and scapy as the judge, are in tests/integration/test_dns_server.py."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from overlayd.dns import server as server_module
from overlayd.dns.framing import FrameReader, FrameTooLarge, frame
from overlayd.dns.metrics import DnsMetrics
from overlayd.dns.outcomes import DROP_REASONS, RESULTS
from overlayd.dns.names import ClusterNames
from overlayd.dns.resolver import NamesSource
from overlayd.dns.server import serve_dns

LOOPBACK = IPv4Address("127.0.0.1")
WEB_VIP = IPv4Address("10.96.0.10")
NAMES = ClusterNames(services={"web": WEB_VIP}, pods={"pod1": IPv4Address("10.244.1.2")})
EXTERNAL = "192.0.2.80"


@dataclass
class Upstream:
    """A scripted resolver on 127.0.0.1 (UDP and TCP, one port): `mode` says how UDP behaves."""

    mode: str = "answer"  # answer | spoof_first | silent | truncate
    port: int = 0
    udp_queries: int = 0
    tcp_queries: int = 0
    records: int = 1  # A records in an answer; many make a UDP reply truncated
    seen: list[bytes] = field(default_factory=list)

    def reply(self, data: bytes, *, tcp: bool) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        name = query.question[0].name
        response.answer.append(dns.rrset.from_text_list(
            name, 60, "IN", "A", [f"192.0.2.{80 + i}" for i in range(self.records)]))
        if self.mode == "truncate" and not tcp:
            response.answer.clear()
            response.flags |= dns.flags.TC
        return response.to_wire()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind(("127.0.0.1", 0))
        self.port = udp.getsockname()[1]
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve_tcp, listeners)
            task_status.started()
            while True:
                data, addr = await udp.recvfrom(4096)
                self.udp_queries += 1
                self.seen.append(data)
                if self.mode == "silent":
                    continue
                if self.mode == "spoof_first" and self.udp_queries == 1:
                    wrong = bytearray(self.reply(data, tcp=False))
                    wrong[0] ^= 0xFF  # another ID
                    await udp.sendto(bytes(wrong), addr)
                await udp.sendto(self.reply(data, tcp=False), addr)

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        data = await FrameReader(stream).receive_untrusted(4096)
        assert data is not None
        self.tcp_queries += 1
        await stream.send_all(frame(self.reply(data, tcp=True)))
        await stream.aclose()


@dataclass
class Running:
    port: int
    registry: CollectorRegistry
    source: NamesSource

    def count(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def result(self, result: str) -> float:
        return self.count("overlayd_dns_queries_total", result=result)

    def dropped(self, reason: str) -> float:
        return self.count("overlayd_dns_dropped_total", reason=reason)


@asynccontextmanager
async def running(upstream: Upstream | None = None, *, timeout: float = 1.0,
                  upstreams: list[IPv4Address] | None = None) -> AsyncIterator[Running]:
    registry = CollectorRegistry()
    source = NamesSource(NAMES)
    async with trio.open_nursery() as nursery:
        upstream_port = 53
        if upstream is not None:
            await nursery.start(upstream.serve)
            upstream_port = upstream.port
        servers = upstreams if upstreams is not None else ([LOOPBACK] if upstream is not None else [])
        port = await nursery.start(lambda task_status: serve_dns(
            source, LOOPBACK, 0, servers, DnsMetrics(registry), upstream_port=upstream_port,
            upstream_timeout=timeout, task_status=task_status))
        yield Running(port, registry, source)
        nursery.cancel_scope.cancel()


def run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test)


async def udp_ask(port: int, wire: bytes, timeout: float = 3.0) -> bytes | None:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(wire)
        with trio.move_on_after(timeout):
            return await sock.recv(65535)
    return None


async def tcp_ask(port: int, *wires: bytes) -> list[dns.message.Message]:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"".join(frame(w) for w in wires))  # pipelined in one write
        reader = FrameReader(stream)
        replies = []
        for _ in wires:
            data = await reader.receive_untrusted(65535)
            assert data is not None
            replies.append(dns.message.from_wire(data))
        return replies


def a_records(message: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in message.answer for r in rrset)


# --- answers from memory --------------------------------------------------------------------


def test_udp_answers_names_from_memory_and_counts_them() -> None:
    async def main() -> None:
        async with running() as server:
            q = dns.message.make_query("web.svc.cluster.local", "A")
            reply = dns.message.from_wire(await udp_ask(server.port, q.to_wire()) or b"")
            assert reply.id == q.id and a_records(reply) == [str(WEB_VIP)]
            nx = dns.message.from_wire(await udp_ask(server.port, dns.message.make_query(
                "nope.svc.cluster.local", "A").to_wire()) or b"")
            assert nx.rcode() == dns.rcode.NXDOMAIN
            assert (server.result("answer"), server.result("nxdomain")) == (1, 1)
    run(main)


def test_tcp_answers_pipelined_queries_in_order() -> None:
    async def main() -> None:
        async with running() as server:
            q1 = dns.message.make_query("web.svc.cluster.local", "A")
            q2 = dns.message.make_query("pod1.pod.cluster.local", "AAAA")
            r1, r2 = await tcp_ask(server.port, q1.to_wire(), q2.to_wire())
            assert (r1.id, a_records(r1)) == (q1.id, [str(WEB_VIP)])
            assert (r2.id, r2.rcode(), r2.answer) == (q2.id, dns.rcode.NOERROR, [])
            await trio.testing.wait_all_tasks_blocked()  # a TCP answer is counted once it is sent
            assert (server.result("answer"), server.result("nodata")) == (1, 1)
    run(main)


def test_an_update_is_answered_by_the_next_query() -> None:
    async def main() -> None:
        async with running() as server:
            q = dns.message.make_query("api.svc.cluster.local", "A").to_wire()
            assert dns.message.from_wire(await udp_ask(server.port, q) or b"").rcode() == dns.rcode.NXDOMAIN
            server.source.update(ClusterNames(services={"api": IPv4Address("10.96.0.11")}))
            assert a_records(dns.message.from_wire(await udp_ask(server.port, q) or b"")) == ["10.96.0.11"]
    run(main)


# --- bad input ------------------------------------------------------------------------------


def test_garbage_gets_no_answer_is_counted_and_the_server_goes_on() -> None:
    async def main() -> None:
        async with running() as server:
            loop = bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\xc0\x0c\x00\x01\x00\x01"
            for garbage, reason in ((b"\x00\x01", "malformed"), (loop, "bad_pointer"), (bytes(2000), "oversized")):
                assert await udp_ask(server.port, garbage, timeout=0.2) is None
                assert server.dropped(reason) == 1
            q = dns.message.make_query("web.svc.cluster.local", "A").to_wire()
            assert await udp_ask(server.port, q) is not None
    run(main)


def test_tcp_garbage_or_an_oversized_frame_closes_the_connection() -> None:
    async def main() -> None:
        async with running() as server:
            for payload, reason in ((frame(b"\x00" * 20), "malformed"), (b"\xff\xff", "oversized")):
                async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
                    await stream.send_all(payload)
                    with trio.fail_after(3):
                        assert await stream.receive_some(100) == b""  # closed by the server
                assert server.dropped(reason) == 1
            (reply,) = await tcp_ask(server.port, dns.message.make_query("web.svc.cluster.local", "A").to_wire())
            assert a_records(reply) == [str(WEB_VIP)]
    run(main)


def test_connections_over_the_limit_are_closed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "MAX_TCP_CONNECTIONS", 2)

    async def main() -> None:
        async with running() as server:
            held = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(2)]
            await trio.sleep(0.1)  # the server has taken both
            async with await trio.open_tcp_stream("127.0.0.1", server.port) as third:
                with trio.fail_after(3):
                    assert await third.receive_some(100) == b""
            assert server.dropped("tcp_busy") == 1
            for stream in held:
                await stream.aclose()
            await trio.sleep(0.1)
            assert len(await tcp_ask(server.port, dns.message.make_query("web.svc.cluster.local", "A").to_wire())) == 1
    run(main)


# --- forwarding -----------------------------------------------------------------------------


def test_other_names_are_forwarded_with_a_fresh_id_and_relayed_with_the_clients() -> None:
    async def main() -> None:
        upstream = Upstream()
        async with running(upstream) as server:
            q = dns.message.make_query("www.example.com", "A")
            reply = dns.message.from_wire(await udp_ask(server.port, q.to_wire()) or b"")
            assert reply.id == q.id and a_records(reply) == [EXTERNAL]
            assert upstream.seen[0][2:] == q.to_wire()[2:]  # the query as sent, but for the ID...
            assert server.result("forward") == 1
    run(main)


def test_a_reply_with_another_id_is_ignored_and_counted() -> None:
    async def main() -> None:
        upstream = Upstream(mode="spoof_first")
        async with running(upstream) as server:
            q = dns.message.make_query("www.example.com", "A")
            reply = dns.message.from_wire(await udp_ask(server.port, q.to_wire()) or b"")
            assert a_records(reply) == [EXTERNAL] and server.dropped("bad_upstream") == 1
    run(main)


def test_a_silent_upstream_gives_servfail_after_the_timeout_and_none_gives_it_at_once() -> None:
    async def main() -> None:
        async with running(Upstream(mode="silent"), timeout=0.2) as server:
            q = dns.message.make_query("www.example.com", "A")
            start = trio.current_time()
            reply = dns.message.from_wire(await udp_ask(server.port, q.to_wire()) or b"")
            assert reply.rcode() == dns.rcode.SERVFAIL and reply.id == q.id
            assert 0.2 <= trio.current_time() - start < 1.5 and server.result("servfail") == 1
        async with running() as server:  # no upstreams at all
            reply = dns.message.from_wire(await udp_ask(server.port, q.to_wire(), timeout=0.5) or b"")
            assert reply.rcode() == dns.rcode.SERVFAIL
    run(main)


def test_the_next_upstream_is_asked_when_the_first_refuses() -> None:
    async def main() -> None:
        upstream = Upstream()
        # 127.0.0.2 has no resolver on the upstream port: ICMP port unreachable, then 127.0.0.1.
        async with running(upstream, upstreams=[IPv4Address("127.0.0.2"), LOOPBACK]) as server:
            reply = dns.message.from_wire(await udp_ask(server.port, dns.message.make_query(
                "www.example.com", "A").to_wire()) or b"")
            assert a_records(reply) == [EXTERNAL]
    run(main)


def test_a_tcp_client_gets_the_whole_answer_when_the_udp_reply_is_truncated() -> None:
    async def main() -> None:
        upstream = Upstream(mode="truncate", records=40)
        async with running(upstream) as server:
            q = dns.message.make_query("big.example.com", "A")
            (reply,) = await tcp_ask(server.port, q.to_wire())
            assert reply.id == q.id and len(a_records(reply)) == 40 and not reply.flags & dns.flags.TC
            assert (upstream.udp_queries, upstream.tcp_queries) == (1, 1)
            # A UDP client gets the truncated reply as it is, and retries over TCP itself.
            udp = dns.message.from_wire(await udp_ask(server.port, q.to_wire()) or b"")
            assert udp.flags & dns.flags.TC and upstream.tcp_queries == 1
    run(main)


def test_forwards_over_the_limit_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "MAX_FORWARDS", 2)

    async def main() -> None:
        async with running(Upstream(mode="silent"), timeout=1.0) as server:
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                await sock.connect(("127.0.0.1", server.port))
                for i in range(5):
                    await sock.send(dns.message.make_query(f"n{i}.example.com", "A").to_wire())
                await trio.sleep(0.2)
                assert server.dropped("forward_busy") == 3
    run(main)


def test_our_own_address_is_never_an_upstream() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            await probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_dns(
                NamesSource(NAMES), LOOPBACK, free, [LOOPBACK], DnsMetrics(registry), upstream_port=free,
                upstream_timeout=5, task_status=task_status))
            with trio.fail_after(1):  # a loop through ourselves would take the 5 s timeout
                reply = dns.message.from_wire(await udp_ask(free, dns.message.make_query(
                    "www.example.com", "A").to_wire()) or b"")
            assert reply.rcode() == dns.rcode.SERVFAIL  # at once: no upstream left, no loop
            assert registry.get_sample_value("overlayd_dns_queries_total", {"result": "servfail"}) == 1
            nursery.cancel_scope.cancel()
    run(main)


# --- framing and metrics --------------------------------------------------------------------


class _Chunks(trio.abc.ReceiveStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def test_frames_split_and_joined_in_any_way_are_read_back() -> None:
    async def main() -> None:
        data = frame(b"one") + frame(b"") + frame(b"three")
        for cut in range(len(data) + 1):
            reader = FrameReader(_Chunks([c for c in (data[:cut], data[cut:]) if c]))  # b"" is EOF
            assert [await reader.receive_untrusted(10) for _ in range(4)] == [b"one", b"", b"three", None]
        with pytest.raises(trio.BrokenResourceError):
            await FrameReader(_Chunks([frame(b"three")[:-1]])).receive_untrusted(10)
        with pytest.raises(trio.BrokenResourceError):
            await FrameReader(_Chunks([b"\x00"])).receive_untrusted(10)
        with pytest.raises(FrameTooLarge):
            await FrameReader(_Chunks([frame(b"x" * 11)])).receive_untrusted(10)
    run(main)


def test_every_result_and_reason_shows_from_the_start() -> None:
    registry = CollectorRegistry()
    DnsMetrics(registry)
    for result in RESULTS:
        assert registry.get_sample_value("overlayd_dns_queries_total", {"result": result}) == 0
    for reason in DROP_REASONS:
        assert registry.get_sample_value("overlayd_dns_dropped_total", {"reason": reason}) == 0
