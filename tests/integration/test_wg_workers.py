"""overlayd-wg with worker processes (`--workers 2`) against Debian's wireguard-go.

Each peer's sessions belong to one process (steering.py): every test runs twice, with
wireguard-go's peer placed on the control process (shard 0) and on the worker (shard 1). wireguard-go is the judge of what we send (it drops counters its replay
window refuses, so reordering beyond it would show as a stalled transfer), and replayed
datagrams, from the real source or a spoofed port, must not reach a socket behind our engine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap

from overlayd.wireguard.uapi_server import UapiClient
from tests.integration.wg_bed import WgBed, new_key, wait_for
from tests.integration.wg_wire import in_netns, send_raw

pytestmark = pytest.mark.integration

WORKERS = 2
NBYTES = 4_000_000
ECHO_PORT = 7777
UDP_SEGMENT = 103  # linux/udp.h: a GSO send of datagrams this size


@pytest.fixture(scope="module", params=[0, 1], ids=["peer-on-control", "peer-on-worker"])
def shard(request: pytest.FixtureRequest) -> int:
    """The process of our engine that opens wireguard-go's sessions."""
    return int(request.param)


@pytest.fixture(scope="module")
def bed(shard: int) -> Iterator[WgBed]:
    """A new peer goes to the process with the fewest, the worker first: for the control, a
    peer that carries nothing takes the worker, then wireguard-go's is added again."""
    with WgBed("ours", "go", ours_args=("--workers", str(WORKERS))) as bed:
        if shard == 0:
            bed.wg("set", bed.a.ifname, "peer", bed.b.public, "remove", netns=bed.a.netns)
            bed.wg("set", bed.a.ifname, "peer", new_key()[1], "allowed-ips", "10.99.9.9/32", netns=bed.a.netns)
            bed.configure(bed.a, bed.b)
        yield bed


def test_ping_and_tcp_both_ways(bed: WgBed) -> None:
    bed.ping(bed.a, bed.b.tunnel_ip)
    bed.ping(bed.b, bed.a.tunnel_ip6)
    bed.tcp_transfer(bed.a, bed.b, NBYTES)
    bed.tcp_transfer(bed.b, bed.a, NBYTES)


@pytest.mark.parametrize("reverse", [False, True], ids=["ours-to-go", "go-to-ours"])
def test_parallel_flows_spread_over_the_queues(bed: WgBed, reverse: bool) -> None:
    """Several flows at once: what each process seals draws counters from one shared slot, and
    wireguard-go's replay window takes the mix (a refused lease would stall the run)."""
    client, server = (bed.b, bed.a) if reverse else (bed.a, bed.b)
    report = bed.iperf(client, server, seconds=2, streams=4)
    assert report["end"]["sum_received"]["bytes"] > 10_000_000


def test_rekey_by_wireguard_go_reaches_the_worker(bed: WgBed) -> None:
    bed.ping(bed.a, bed.b.tunnel_ip, count=1)
    before = bed.latest_handshake(bed.a, bed.b)
    time.sleep(1.1)
    bed.readd_peer(bed.b, bed.a)  # wireguard-go starts over: a new session from its side
    bed.ping(bed.b, bed.a.tunnel_ip)
    assert bed.latest_handshake(bed.a, bed.b) > before
    bed.tcp_transfer(bed.b, bed.a, NBYTES)
    bed.tcp_transfer(bed.a, bed.b, NBYTES)


def _echo_socket(bed: WgBed) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((bed.a.tunnel_ip, ECHO_PORT))
        sock.settimeout(0.2)
        return sock
    return in_netns(bed.a.netns, make)


def _drain(sock: socket.socket, seconds: float) -> list[bytes]:
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(2048))
        except TimeoutError:
            pass
    return got


@pytest.mark.parametrize("spoof_port", [False, True], ids=["same-source", "spoofed-source-port"])
def test_replayed_datagrams_never_reach_a_socket(bed: WgBed, shard: int, spoof_port: bool) -> None:
    bed.ping(bed.b, bed.a.tunnel_ip, count=1)
    capture = bed.tmp / f"replay-{spoof_port}.pcap"
    tcpdump = subprocess.Popen(["ip", "netns", "exec", bed.a.netns, "tcpdump", "-U", "-i", f"{bed.prefix}va",
                                "-w", str(capture), "udp", "and", "src", bed.b.underlay_ip],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = _echo_socket(bed)
    try:
        assert wait_for(capture.exists, timeout=5)
        time.sleep(0.3)
        payloads = [f"message {i} {spoof_port}".encode() for i in range(20)]
        script = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" + "".join(
            f"s.sendto({p!r},('{bed.a.tunnel_ip}',{ECHO_PORT}))\n" for p in payloads)
        bed.sh(bed.b, "python3", "-c", script)
        assert sorted(_drain(sock, 1.0)) == sorted(payloads)
        time.sleep(0.3)
    finally:
        tcpdump.terminate()
        tcpdump.wait(10)
    datagrams = [p for p in rdpcap(str(capture)) if p.haslayer(UDP) and bytes(p[UDP].payload)[:1] == b"\x04"]
    assert len(datagrams) >= len(payloads)
    # The receiver index names the process that owns the session (steering.py).
    assert {bytes(p[UDP].payload)[4] % WORKERS for p in datagrams} == {shard}
    replays = []
    for packet in datagrams:
        ip = packet[IP].copy()
        if spoof_port:  # another 4-tuple: reuseport's hash would pick another socket, steering must not
            ip[UDP].sport = 40000
        del ip.chksum, ip[UDP].chksum
        replays.append(bytes(ip))
    try:
        send_raw(bed.b.netns, replays * 3)
        assert _drain(sock, 1.0) == [], "a replayed transport message was delivered"
    finally:
        sock.close()


def _send_gso(bed: WgBed, datagrams: list[bytes], source_port: int, port: int) -> None:
    """One UDP GSO send of equal-size datagrams from B's own address and port (wireguard-go has
    moved off it): it crosses the veth whole and reaches our port as one GRO receive, steered
    by its first datagram."""
    def work() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((bed.b.underlay_ip, source_port))
            sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, len(datagrams[0]))
            sock.sendto(b"".join(datagrams), (bed.a.underlay_ip, port))
    in_netns(bed.b.netns, work)


def test_a_forged_first_datagram_cannot_take_a_batch_from_its_process(bed: WgBed, shard: int) -> None:
    """A datagram forged with the peer's address, first in a GRO receive with the peer's genuine
    ones, steers the whole receive to the process its index names. That process hands the
    genuine ones to their own (plane.py): all are delivered, once."""
    bed.ping(bed.b, bed.a.tunnel_ip, count=1)
    port = int(bed.wg("show", bed.a.ifname, "listen-port", netns=bed.a.netns))
    b_port = int(bed.wg("show", bed.b.ifname, "listen-port", netns=bed.b.netns))
    capture = bed.tmp / "batch.pcap"
    tcpdump = subprocess.Popen(["ip", "netns", "exec", bed.b.netns, "tcpdump", "-U", "--immediate-mode",
                                "-i", f"{bed.prefix}vb", "-w", str(capture), "udp", "and", "dst", "port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = _echo_socket(bed)
    payloads = [b"genuine %02d" % i for i in range(12)]  # one size: one size of datagram
    try:
        assert wait_for(capture.exists, timeout=5)
        time.sleep(0.3)
        # wireguard-go seals them; our side never sees them (yet).
        bed.sh(bed.a, "nft", "add table inet held; add chain inet held in { type filter hook input priority 0; }; "
               f"add rule inet held in udp dport {port} drop")
        script = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n" + "".join(
            f"s.sendto({p!r},('{bed.a.tunnel_ip}',{ECHO_PORT}))\n" for p in payloads)
        bed.sh(bed.b, "python3", "-c", script)
        time.sleep(0.3)
    finally:
        tcpdump.terminate()
        tcpdump.wait(10)
        bed.sh(bed.a, "nft", "delete table inet held", check=False)
    genuine = [bytes(p[UDP].payload) for p in rdpcap(str(capture))
               if p.haslayer(UDP) and bytes(p[UDP].payload)[:1] == b"\x04"][-len(payloads):]
    assert len(genuine) == len(payloads) and len({len(d) for d in genuine}) == 1
    assert {d[4] % WORKERS for d in genuine} == {shard}
    other = 1 - shard
    forged = b"\x04\x00\x00\x00" + bytes([other]) + os.urandom(len(genuine[0]) - 5)
    # Passed on by the worker in its report, or by the control over the worker's pipe.
    counter = "forwarded_from_workers" if shard == 0 else "forwarded_to_workers"
    before = UapiClient(bed.a.ifname).counters().get(counter, 0)
    bed.wg("set", bed.b.ifname, "listen-port", str(b_port + 1), netns=bed.b.netns)  # frees B's address for the forger
    try:
        _send_gso(bed, [forged, *genuine], b_port, port)
        assert sorted(_drain(sock, 1.0)) == sorted(payloads)
        # They did go the long way: the kernel merged the batch and steered it by the forgery.
        assert UapiClient(bed.a.ifname).counters().get(counter, 0) - before == len(genuine)
        _send_gso(bed, [forged, *genuine], b_port, port)  # once only: the owner's window saw them
        assert _drain(sock, 0.5) == []
    finally:
        sock.close()
        bed.wg("set", bed.b.ifname, "listen-port", str(b_port), netns=bed.b.netns)
        bed.ping(bed.b, bed.a.tunnel_ip, count=1)


def test_a_dead_worker_stops_the_engine_with_one_line() -> None:
    """A worker's sessions cannot move to another process (its replay windows die with it):
    the engine stops with an error the service manager sees, and leaves nothing behind."""
    with WgBed("ours", "go", ours_args=("--workers", str(WORKERS))) as bed:
        bed.ping(bed.a, bed.b.tunnel_ip)
        engine = bed.a.proc
        assert engine is not None
        children = [int(c) for c in Path(f"/proc/{engine.pid}/task/{engine.pid}/children").read_text().split()]
        workers = [pid for pid in children if "overlayd.wireguard.cli" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == WORKERS - 1
        os.kill(workers[0], signal.SIGKILL)
        assert engine.wait(10) == 1
        log = (bed.tmp / f"{bed.a.ifname}.log").read_text()
        assert f"overlayd-wg: overlayd-wg worker 1 killed by signal {int(signal.SIGKILL)}\n" in log
        assert "Traceback" not in log
        assert bed.a.ifname not in bed.sh(bed.a, "ip", "-o", "link").stdout


def test_a_stalled_worker_never_blocks_the_control() -> None:
    """Snapshots pile up for a worker that does not read (stopped here; slow in life): `wg set`
    and the control's own traffic go on, and SIGTERM still stops the engine in bounded time."""
    with WgBed("ours", "go", ours_args=("--workers", str(WORKERS))) as bed:
        # wireguard-go's peer on the control, as in the fixture above.
        bed.wg("set", bed.a.ifname, "peer", bed.b.public, "remove", netns=bed.a.netns)
        bed.wg("set", bed.a.ifname, "peer", new_key()[1], "allowed-ips", "10.99.9.9/32", netns=bed.a.netns)
        bed.configure(bed.a, bed.b)
        bed.ping(bed.b, bed.a.tunnel_ip)
        engine = bed.a.proc
        assert engine is not None
        worker = int(Path(f"/proc/{engine.pid}/task/{engine.pid}/children").read_text().split()[0])
        os.kill(worker, signal.SIGSTOP)
        try:
            # 400 peers of 32 networks each: about 16 KB of update per `wg set`, together more
            # than the pipe to the worker holds (213 KB), so the control's writer must block.
            for batch in range(20):
                args = []
                for i in range(20):
                    networks = ",".join(f"10.{100 + batch}.{i}.{j}/32" for j in range(32))
                    args += ["peer", new_key()[1], "allowed-ips", networks]
                subprocess.run(["ip", "netns", "exec", bed.a.netns, "wg", "set", bed.a.ifname, *args],
                               check=True, timeout=10)
            bed.ping(bed.b, bed.a.tunnel_ip)
            start = time.monotonic()
            engine.terminate()
            assert engine.wait(20) == 0
            assert time.monotonic() - start < 15
        finally:
            try:
                os.kill(worker, signal.SIGCONT)
            except ProcessLookupError:
                pass
