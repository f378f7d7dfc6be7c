"""Interoperability of overlayd-wg with Debian's wireguard-go across two namespaces.

Our engine runs in ns A, wireguard-go in ns B, both configured with `wg`. ICMP and TCP (IPv4 and
IPv6 inside the tunnel) both ways, with our engine as initiator and as responder, and rekeys.
A rekey is forced by removing and re-adding the peer with `wg set` (every session of that peer
is dropped, so the next packet needs a fresh handshake) rather than by waiting 120 s for
REKEY_AFTER_TIME; which side re-adds decides which side initiates.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap

from tests.integration.wg_bed import WgBed, wait_for

pytestmark = pytest.mark.integration

NBYTES = 4_000_000


@pytest.fixture(scope="module")
def bed() -> Iterator[WgBed]:
    with WgBed("ours", "go") as bed:
        yield bed


def check_tcp(bed: WgBed, *, reverse: bool, v6: bool = False) -> None:
    """A TCP stream through the tunnel arrives intact (our TSO cutting and GRO gluing included)."""
    sender, receiver = (bed.b, bed.a) if reverse else (bed.a, bed.b)
    bed.tcp_transfer(sender, receiver, NBYTES, v6=v6)


def test_our_engine_initiates_and_ping_works_both_ways(bed: WgBed) -> None:
    assert bed.latest_handshake(bed.a, bed.b) == 0
    bed.ping(bed.a, bed.b.tunnel_ip)  # the first packet makes our engine initiate
    bed.ping(bed.b, bed.a.tunnel_ip)
    bed.ping(bed.a, bed.b.tunnel_ip6)
    assert bed.latest_handshake(bed.a, bed.b) > 0
    assert bed.latest_handshake(bed.b, bed.a) > 0


@pytest.mark.parametrize("reverse", [False, True], ids=["ours-to-go", "go-to-ours"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_tcp(bed: WgBed, reverse: bool, v6: bool) -> None:
    check_tcp(bed, reverse=reverse, v6=v6)


def test_rekey_initiated_by_our_engine(bed: WgBed) -> None:
    bed.ping(bed.a, bed.b.tunnel_ip, count=1)
    before = bed.latest_handshake(bed.b, bed.a)
    time.sleep(1.1)  # handshake times have one-second resolution
    bed.readd_peer(bed.a, bed.b)
    assert bed.latest_handshake(bed.a, bed.b) == 0  # a fresh peer: no session
    bed.ping(bed.a, bed.b.tunnel_ip)
    assert bed.latest_handshake(bed.b, bed.a) > before  # wireguard-go accepted a newer initiation
    check_tcp(bed, reverse=False)


def test_rekey_initiated_by_wireguard_go(bed: WgBed) -> None:
    """Our engine answers an initiation while it still holds a live session (key rotation)."""
    bed.ping(bed.a, bed.b.tunnel_ip, count=1)
    before = bed.latest_handshake(bed.a, bed.b)
    time.sleep(1.1)
    bed.readd_peer(bed.b, bed.a)
    bed.ping(bed.b, bed.a.tunnel_ip)
    assert bed.latest_handshake(bed.a, bed.b) > before
    check_tcp(bed, reverse=True)
    check_tcp(bed, reverse=False)


def test_traffic_on_the_underlay_is_wireguard(bed: WgBed) -> None:
    capture = bed.tmp / "underlay.pcap"
    tcpdump = subprocess.Popen(["ip", "netns", "exec", bed.a.netns, "tcpdump", "-U", "-i", f"{bed.prefix}va",
                                "-w", str(capture), "-c", "10", "udp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(capture.exists, timeout=5)
        time.sleep(0.3)
        bed.ping(bed.a, bed.b.tunnel_ip, count=6)
        tcpdump.wait(10)
    finally:
        if tcpdump.poll() is None:
            tcpdump.kill()
    packets = [p for p in rdpcap(str(capture)) if p.haslayer(UDP)]
    assert len(packets) >= 10
    for packet in packets:
        assert {packet[IP].src, packet[IP].dst} == {bed.a.underlay_ip, bed.b.underlay_ip}
        assert packet[UDP].sport == packet[UDP].dport == 51820
        payload = bytes(packet[UDP].payload)
        assert payload[:4] == b"\x04\0\0\0"  # transport data
        assert b"\x0a\x63\x00\x01\x0a\x63\x00\x02" not in payload  # no inner header in the clear
        assert b"\x0a\x63\x00\x02\x0a\x63\x00\x01" not in payload


def test_our_engine_as_responder_from_scratch() -> None:
    """A fresh pair where wireguard-go sends first: our engine only ever answers."""
    with WgBed("ours", "go") as bed:
        bed.ping(bed.b, bed.a.tunnel_ip)
        assert bed.latest_handshake(bed.a, bed.b) > 0
        check_tcp(bed, reverse=False)
        check_tcp(bed, reverse=True)


def test_plain_tun_without_offload() -> None:
    """`--no-offload`: one packet per TUN read and write, no virtio-net headers."""
    with WgBed("ours", "go", offload=False) as bed:
        bed.ping(bed.a, bed.b.tunnel_ip)
        check_tcp(bed, reverse=False)
        check_tcp(bed, reverse=True, v6=True)


def test_our_engine_at_both_ends() -> None:
    """Between two of ours the UDP side carries GSO sends and GRO receives (wireguard-go uses neither)."""
    with WgBed("ours", "ours") as bed:
        bed.ping(bed.a, bed.b.tunnel_ip6)
        for reverse in (False, True):
            check_tcp(bed, reverse=reverse)
        check_tcp(bed, reverse=False, v6=True)
        _, received, sent = bed.wg("show", bed.a.ifname, "transfer").split()
        assert int(received) > NBYTES and int(sent) > 2 * NBYTES
