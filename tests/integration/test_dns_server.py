"""Cluster DNS on the wire (issue 11, part 3): the server in a throwaway network namespace.

    client ns  p0 10.244.7.2 --veth-- v0 on br0 (10.244.7.1, the gateway)  server ns
    server ns  u0 198.18.53.1 --veth-- u1 198.18.53.53 dnsmasq             upstream ns

serve_dns runs in a thread of this process that entered the server namespace (as the daemon
runs it in the host's), so its counters are read straight from its registry. Queries are
built with scapy and sent from the client namespace; tcpdump captures there and scapy's DNS
layer decodes what really came back, a judge independent of dnspython, which built the
answers. dnsmasq in a third namespace is the upstream for other names.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from prometheus_client import CollectorRegistry
from scapy.layers.dns import DNS, DNSQR  # type: ignore[import-untyped]
from scapy.layers.inet import IP, TCP, UDP  # type: ignore[import-untyped]

from overlayd.dns.metrics import DnsMetrics
from overlayd.dns.names import ClusterNames
from overlayd.dns.resolver import NamesSource
from overlayd.dns.server import serve_dns
from overlayd.netns import enter_named_netns
from tests.integration.conftest import unique_name
from tests.integration.wire import UnderlayCapture

pytestmark = pytest.mark.integration

GATEWAY, CLIENT = "10.244.7.1", "10.244.7.2"
UPSTREAM_SIDE, UPSTREAM = "198.18.53.1", "198.18.53.53"
WEB_VIP, API_VIP, POD1_IP = "10.96.0.10", "10.96.0.11", "10.244.7.2"
WWW, BIG = "192.0.2.7", [f"192.0.2.{i}" for i in range(100, 140)]  # 40 A records: over 512 bytes
NAMES = ClusterNames(services={"web": IPv4Address(WEB_VIP)}, pods={"pod1": IPv4Address(POD1_IP)})
T = TypeVar("T")


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a thread of its own that entered `ns`: sockets it opens live there."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_named_netns(ns)
            out["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


class ServerThread:
    """serve_dns in a thread that entered the server namespace; stop() cancels it."""

    def __init__(self, netns: str, source: NamesSource, upstreams: list[IPv4Address]) -> None:
        self.netns, self.source, self.upstreams = netns, source, upstreams
        self.registry = CollectorRegistry()
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10) and self.error is None, self.error

    def _run(self) -> None:
        try:
            enter_named_netns(self.netns)
            trio.run(self._main)
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            await nursery.start(lambda task_status: serve_dns(
                self.source, IPv4Address(GATEWAY), 53, self.upstreams, DnsMetrics(self.registry),
                upstream_timeout=1.0, task_status=task_status))
            self._ready.set()

    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def stop(self) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)

    def result(self, result: str) -> float:
        return self.registry.get_sample_value("overlayd_dns_queries_total", {"result": result}) or 0.0

    def dropped(self, reason: str) -> float:
        return self.registry.get_sample_value("overlayd_dns_dropped_total", {"reason": reason}) or 0.0

    def handled(self) -> float:
        """Queries answered plus packets and connections dropped, all reasons."""
        return sum(sample.value for family in self.registry.collect() for sample in family.samples
                   if sample.name in ("overlayd_dns_queries_total", "overlayd_dns_dropped_total"))


class Bed:
    def __init__(self, client: str, host: str, server: ServerThread) -> None:
        self.client = client
        self.host = host
        self.server = server


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    client, host, upstream = unique_name("dnsc"), unique_name("dnss"), unique_name("dnsu")
    work = Path(tempfile.mkdtemp(prefix="ovl-dns-"))
    dnsmasq = None
    server = None
    try:
        for ns in (client, host, upstream):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            ip(ns, "link", "set", "lo", "up")
        ip(host, "link", "add", "br0", "type", "bridge")
        ip(host, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
        ip(host, "link", "add", "v0", "type", "veth", "peer", "name", "p0", "netns", client)
        ip(host, "link", "set", "v0", "master", "br0")
        ip(client, "addr", "add", f"{CLIENT}/24", "dev", "p0")
        ip(host, "link", "add", "u0", "type", "veth", "peer", "name", "u1", "netns", upstream)
        ip(host, "addr", "add", f"{UPSTREAM_SIDE}/24", "dev", "u0")
        ip(upstream, "addr", "add", f"{UPSTREAM}/24", "dev", "u1")
        for ns, link in ((host, "br0"), (host, "v0"), (host, "u0"), (client, "p0"), (upstream, "u1")):
            ip(ns, "link", "set", link, "up")
        conf = work / "dnsmasq.conf"
        conf.write_text("\n".join(["no-resolv", "no-hosts", "bind-interfaces", f"listen-address={UPSTREAM}",
                                   "local=/example.test/", f"host-record=www.example.test,{WWW}",
                                   *[f"host-record=big.example.test,{a}" for a in BIG]]) + "\n")
        dnsmasq = subprocess.Popen(["ip", "netns", "exec", upstream, "dnsmasq", "--keep-in-foreground",
                                    f"--conf-file={conf}", f"--pid-file={work / 'dnsmasq.pid'}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # The first upstream listed is dead (nothing there): forwards must fall through to dnsmasq.
        server = ServerThread(host, NamesSource(NAMES), [IPv4Address("198.18.53.99"), IPv4Address(UPSTREAM)])
        server.start()
        time.sleep(0.3)  # dnsmasq binds at once; and the bridge port leaves its learning state
        assert dnsmasq.poll() is None, dnsmasq.stderr.read() if dnsmasq.stderr else ""
        yield Bed(client, host, server)
    finally:
        if server is not None and server.alive():
            server.stop()
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
        for ns in (client, host, upstream):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


# --- the client side, built and read with scapy -----------------------------------------------


def query(name: str, qtype: str = "A", qid: int | None = None) -> bytes:
    return bytes(DNS(id=qid if qid is not None else secrets.randbits(16), rd=1, qd=DNSQR(qname=name, qtype=qtype)))


def udp_exchange(payloads: list[bytes], timeout: float = 3.0) -> list[bytes | None]:
    """Send each payload from the client namespace, one at a time; the reply or None."""
    replies: list[bytes | None] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for payload in payloads:
            sock.sendto(payload, (GATEWAY, 53))
            try:
                replies.append(sock.recv(65535))
            except TimeoutError:
                replies.append(None)
    return replies


def tcp_exchange(payloads: list[bytes]) -> list[bytes]:
    """All payloads pipelined on one connection, then their replies in order."""
    with socket.create_connection((GATEWAY, 53), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(p)) + p for p in payloads))
        replies = []
        stream = sock.makefile("rb")
        for _ in payloads:
            (length,) = struct.unpack("!H", stream.read(2))
            replies.append(stream.read(length))
        return replies


def from_server(capture: UnderlayCapture, proto: type) -> list[Any]:
    """Scapy's decoding of every DNS message the gateway sent the client, as captured."""
    return [p[DNS] for p in capture.packets
            if p.haslayer(IP) and p[IP].src == GATEWAY and p[IP].dst == CLIENT and p.haslayer(proto)
            and p[proto].sport == 53 and p.haslayer(DNS)]


def addresses(reply: Any) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.an if rr.type == 1)


def by_id(replies: list[Any]) -> dict[int, Any]:
    return {r.id: r for r in replies}


# --- the tests ----------------------------------------------------------------------------------


def test_udp_answers_on_the_wire(bed: Bed) -> None:
    asked = {1: ("web.svc.cluster.local", "A"), 2: ("POD1.Pod.Cluster.Local", "A"),
             3: ("nope.svc.cluster.local", "A"), 4: ("web.svc.cluster.local", "AAAA"),
             5: ("www.example.test", "A"), 6: ("nope.example.test", "A")}
    with UnderlayCapture(bed.client, "port 53", snaplen=2048) as capture:
        got = in_netns(bed.client, udp_exchange, [query(n, t, i) for i, (n, t) in asked.items()])
    assert all(got), got
    wire = by_id(from_server(capture, UDP))
    assert sorted(wire) == [1, 2, 3, 4, 5, 6]
    web, pod, nx, nodata, www, upstream_nx = (wire[i] for i in range(1, 7))
    assert (web.rcode, web.aa, web.qr, addresses(web)) == (0, 1, 1, [WEB_VIP])
    assert web.an[0].ttl == 5 and web.qd[0].qname == b"web.svc.cluster.local."
    assert addresses(pod) == [POD1_IP] and pod.qd[0].qname == b"POD1.Pod.Cluster.Local."  # case kept
    assert (nx.rcode, nx.aa, nx.ancount, [rr.type for rr in nx.ns]) == (3, 1, 0, [6])  # NXDOMAIN + SOA
    assert (nodata.rcode, nodata.ancount, [rr.type for rr in nodata.ns]) == (0, 0, [6])  # NODATA + SOA
    assert (www.rcode, addresses(www)) == (0, [WWW])  # forwarded to dnsmasq, past the dead upstream
    assert (upstream_nx.rcode, upstream_nx.aa) == (3, 0)  # dnsmasq's NXDOMAIN, relayed as it was sent
    assert bed.server.alive()


def test_tcp_answers_and_the_tc_fallback_on_the_wire(bed: Bed) -> None:
    with UnderlayCapture(bed.client, "tcp port 53", snaplen=4096) as capture:
        replies = in_netns(bed.client, tcp_exchange, [query("web.svc.cluster.local", qid=11),
                                                      query("big.example.test", qid=12),
                                                      query("nope.pod.cluster.local", qid=13)])
    assert len(replies) == 3
    wire = by_id(from_server(capture, TCP))
    assert addresses(wire[11]) == [WEB_VIP]
    # Over UDP dnsmasq's answer is truncated (no EDNS: 512 bytes); we asked again over TCP.
    assert (wire[12].tc, addresses(wire[12])) == (0, sorted(BIG))
    assert wire[13].rcode == 3
    udp = in_netns(bed.client, udp_exchange, [query("big.example.test", qid=14)])[0]
    assert udp is not None and DNS(udp).tc == 1  # a UDP client gets TC and retries over TCP itself


def test_bad_packets_get_nothing_back_and_are_counted(bed: Bed) -> None:
    web = query("web.svc.cluster.local", qid=0x2222)
    compression_loop = bytes.fromhex("3333 0100 0001 0000 0000 0000") + b"\xc0\x0c\x00\x01\x00\x01"
    response = bytes(DNS(id=0x4444, qr=1, qd=DNSQR(qname="web.svc.cluster.local")))
    notify = bytes(DNS(id=0x5555, opcode=4, qd=DNSQR(qname="cluster.local", qtype="SOA")))
    bad = {"malformed": [web[:-3], web + b"junk", b"\x66"], "bad_pointer": [compression_loop],
           "oversized": [web + bytes(1300)], "response": [response], "not_query": [notify]}
    before = {reason: bed.server.dropped(reason) for reason in bad}
    with UnderlayCapture(bed.client, "port 53") as capture:
        got = in_netns(bed.client, udp_exchange, [p for payloads in bad.values() for p in payloads], 0.3)
    assert got == [None] * 7
    assert from_server(capture, UDP) == [] and not [p for p in capture.packets if p[IP].src == GATEWAY]
    assert {reason: bed.server.dropped(reason) - before[reason] for reason in bad} == {
        reason: len(payloads) for reason, payloads in bad.items()}
    assert in_netns(bed.client, udp_exchange, [web])[0] is not None and bed.server.alive()


def _flood(count: int) -> int:
    """Garbage, loops and queries as fast as one socket sends them; how many went out."""
    web = query("web.svc.cluster.local")
    loop = bytes.fromhex("3333 0100 0001 0000 0000 0000") + b"\xc0\x0c\x00\x01\x00\x01"
    payloads = [os.urandom(40), loop, web[:-2], web, bytes(1500)]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for i in range(count):
            try:
                sock.sendto(payloads[i % len(payloads)], (GATEWAY, 53))
                sent += 1
            except BlockingIOError:
                time.sleep(0.0005)
    return sent


def _hold_tcp(count: int, hold: float) -> tuple[int, bytes | None]:
    """Open `count` idle connections at once: (how many the server closed within `hold`
    seconds, the reply to a UDP query sent meanwhile)."""
    conns = [socket.create_connection((GATEWAY, 53), timeout=5) for _ in range(count)]
    time.sleep(hold)
    reply = udp_exchange([query("web.svc.cluster.local")])[0]
    closed = 0
    for conn in conns:
        conn.setblocking(False)
        try:
            closed += conn.recv(1) == b""
        except BlockingIOError:
            pass
        conn.close()
    return closed, reply


def udp_delivered() -> int:
    """The kernel's count of UDP datagrams handed to sockets in this thread's namespace."""
    lines = [line.split() for line in Path("/proc/thread-self/net/snmp").read_text().splitlines()
             if line.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1]))["InDatagrams"])


def settled(value: Callable[[], float], quiet: float = 0.5, timeout: float = 30) -> float:
    """value() once it has not changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = value()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = value()
        if now == last:
            return now
        last = now
    raise AssertionError("still changing")


def test_the_server_keeps_answering_through_floods(bed: Bed) -> None:
    handled_before, delivered_before = bed.server.handled(), in_netns(bed.host, udp_delivered)
    sent = in_netns(bed.client, _flood, 50_000)
    assert sent >= 40_000
    handled = settled(bed.server.handled) - handled_before
    delivered = in_netns(bed.host, udp_delivered) - delivered_before
    # Every datagram the kernel gave the server was answered or counted as dropped (the rest
    # overflowed the socket's buffer: the kernel's RcvbufErrors, not ours to count).
    assert handled == delivered and delivered >= 5_000, (handled, delivered, sent)
    with UnderlayCapture(bed.client, "udp port 53") as capture:
        got = in_netns(bed.client, udp_exchange, [query("web.svc.cluster.local", qid=0x7777)], 2.0)
    assert got[0] is not None and addresses(by_id(from_server(capture, UDP))[0x7777]) == [WEB_VIP]
    # 100 idle TCP connections: those over the limit (64) are closed at once, UDP still answers,
    # and TCP answers again once they are gone.
    busy_before = bed.server.dropped("tcp_busy")
    closed, reply = in_netns(bed.client, _hold_tcp, 100, 0.5)
    assert closed == 36 and reply is not None and addresses(DNS(reply)) == [WEB_VIP]
    assert bed.server.dropped("tcp_busy") - busy_before == 36
    assert in_netns(bed.client, tcp_exchange, [query("web.svc.cluster.local")]) and bed.server.alive()


def test_an_update_is_on_the_wire_with_the_next_query(bed: Bed) -> None:
    bed.server.source.update(ClusterNames(services={"web": IPv4Address(WEB_VIP), "api": IPv4Address(API_VIP)},
                                          pods={"pod1": IPv4Address(POD1_IP)}))
    with UnderlayCapture(bed.client, "udp port 53") as capture:
        in_netns(bed.client, udp_exchange, [query("api.svc.cluster.local", qid=0x0A0A)])
    assert addresses(by_id(from_server(capture, UDP))[0x0A0A]) == [API_VIP]


def test_glibc_resolves_through_the_search_list(bed: Bed) -> None:
    """A pod's view: resolv.conf naming the gateway with `search svc.<domain> pod.<domain>`."""
    etc = Path("/etc/netns") / bed.client
    etc.mkdir(parents=True, exist_ok=True)
    try:
        (etc / "resolv.conf").write_text(f"nameserver {GATEWAY}\nsearch svc.cluster.local pod.cluster.local\n")

        def resolve(name: str) -> str:
            out = subprocess.run(["ip", "netns", "exec", bed.client, "getent", "hosts", name],
                                 capture_output=True, text=True, timeout=20)
            return out.stdout.split(" ")[0]

        assert resolve("web") == WEB_VIP  # web.svc.cluster.local through the search list
        assert resolve("pod1") == POD1_IP  # not a service: NXDOMAIN there, then pod.cluster.local
        assert resolve("www.example.test") == WWW  # forwarded
        assert resolve("nothing-here") == ""
    finally:
        shutil.rmtree(etc, ignore_errors=True)
