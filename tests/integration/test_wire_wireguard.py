"""On the wire, with scapy: cross-host pod traffic in the WireGuard lab (our userspace engine).

What crosses the simulated underlay is captured in its namespace; attacks are injected from
there (or from a host namespace) with raw sockets. Each check has a positive control where it
can, so "nothing was delivered" cannot pass just because the injection went nowhere.

Order matters only for speed: every test leaves the lab as it found it (routes, addresses,
nftables, endpoints).
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP
from scapy.packet import Raw

from overlayd.lab.plan import PROBE_PORT, UNDERLAY_GATEWAY
from overlayd.wireguard.uapi import PeerState, PeerUpdate, SetRequest
from overlayd.wireguard.uapi_server import UapiClient
from overlayd.wireguard.xchacha import xaead_decrypt
from tests.integration.conftest import Lab, netns_exec
from tests.integration.wg_bed import wait_for
from tests.integration.wg_wire import (
    COOKIE_REPLY,
    COOKIE_REPLY_SIZE,
    INITIATION,
    INITIATION_SIZE,
    MAC_SIZE,
    RESPONSE,
    RESPONSE_SIZE,
    TRANSPORT,
    WG_PORT,
    WgDatagram,
    cookie_key,
    ipv4_udp,
    mac1_of,
    mac1_valid,
    mac2_valid,
    padded_transport_size,
    send_raw,
    spoofed_initiation,
    udp_datagrams,
)
from tests.integration.wire import UnderlayCapture

pytestmark = pytest.mark.integration

POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
WG_IFACE = "ovl.wg"
PING_HEADERS = 28  # IPv4 + ICMP echo header around `ping -s` bytes
ATTACKER = "198.18.0.200"  # an underlay address no lab host uses


# --- lab access ---------------------------------------------------------------

def _pod_netns(lab: Lab, pod: str) -> str:
    return next(p["netns"] for p in lab.result["pods"] if p["name"] == pod)


def _ip(lab: Lab, host: str) -> str:
    return str(lab.host(host).underlay_ip)


def _subnet(lab: Lab, host: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(next(h["subnet"] for h in lab.result["hosts"] if h["name"] == host))


def _uapi(lab: Lab, host: str) -> UapiClient:
    return UapiClient(WG_IFACE, lab.host(host).dir / "wg")


def _peer(lab: Lab, on: str, remote: str) -> PeerState:
    """`on`'s WireGuard peer entry for host `remote` (found by its pod subnet)."""
    subnet = _subnet(lab, remote)
    return next(p for p in _uapi(lab, on).get().peers if subnet in p.allowed_ips)


def _force_handshake(lab: Lab, on: str, remote: str) -> None:
    """Drop every session `on` has with `remote` by removing and re-adding the peer in one UAPI
    set (same endpoint and allowed IPs): the next packet needs a fresh handshake, which `on` starts."""
    peer = _peer(lab, on, remote)
    _uapi(lab, on).set(SetRequest(peers=(
        PeerUpdate(public_key=peer.public_key, remove=True),
        PeerUpdate(public_key=peer.public_key, endpoint=peer.endpoint, replace_allowed_ips=True,
                   allowed_ips=peer.allowed_ips),
    )))
    assert _peer(lab, on, remote).last_handshake_ns == 0


def _ping(lab: Lab, pod: str, dst: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return netns_exec(_pod_netns(lab, pod), "ping", "-n", *args, dst, check=check)


def _lossless(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and re.search(r"\b0% packet loss", result.stdout) is not None


def _ip_cmd(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=check, timeout=10)


def _between(datagrams: list[WgDatagram], src: str, dst: str, kind: int | None = None) -> list[WgDatagram]:
    return [d for d in datagrams if d.src == src and d.dst == dst and d.data and (kind is None or d.kind == kind)]


# --- 1. only WireGuard crosses the underlay -------------------------------------

def test_pod_traffic_crosses_the_underlay_only_as_wireguard_udp(lab_wg: Lab) -> None:
    host_ips = {_ip(lab_wg, h.name) for h in lab_wg.plan.hosts}
    pod2 = lab_wg.pod_ip("pod2")
    size = 100
    with UnderlayCapture(lab_wg.plan.underlay_netns) as cap:
        _ping(lab_wg, "pod1", pod2, "-c", "5", "-i", "0.05", "-W", "2", "-s", str(size))
        probe = netns_exec(_pod_netns(lab_wg, "pod1"), sys.executable, "-m", "overlayd.lab.probe",
                           "check", str(PROBE_PORT), pod2)
    reached = json.loads(probe.stdout)[pod2]
    assert reached == {"icmp": True, "tcp": True, "tcp_hostname": "pod2"}, reached  # TCP through the tunnel got the server's hello

    assert cap.packets, "nothing captured on the underlay"
    for frame in cap.packets:  # no pod address in the clear, not even in ARP
        if frame.haslayer(IP):
            for addr in (frame[IP].src, frame[IP].dst):
                assert ipaddress.ip_address(addr) not in POD_NETWORK, frame.summary()
        if frame.haslayer(ARP):
            for addr in (frame[ARP].psrc, frame[ARP].pdst):
                assert ipaddress.ip_address(addr) not in POD_NETWORK, frame.summary()

    between_hosts = [d for d in udp_datagrams(cap.packets) if d.src in host_ips and d.dst in host_ips]
    assert between_hosts, "no UDP between the hosts: where did the pod traffic go?"
    for d in between_hosts:
        assert (d.sport, d.dport) == (WG_PORT, WG_PORT), d
        assert d.kind in (INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT) and d.reserved_zero, d
    h1, h2 = _ip(lab_wg, "h1"), _ip(lab_wg, "h2")
    ping_size = padded_transport_size(size + PING_HEADERS)
    assert len([d for d in _between(between_hosts, h1, h2, TRANSPORT) if d.size == ping_size]) >= 5
    assert len([d for d in _between(between_hosts, h2, h1, TRANSPORT) if d.size == ping_size]) >= 5
    # The TCP exchange rode in transport messages too (more of them than the pings alone).
    assert len(_between(between_hosts, h1, h2, TRANSPORT)) > 5


# --- 2. message types and sizes ---------------------------------------------------

def test_handshake_and_transport_messages_have_the_whitepaper_sizes(lab_wg: Lab) -> None:
    h1, h2 = _ip(lab_wg, "h1"), _ip(lab_wg, "h2")
    h1_public = _peer(lab_wg, "h2", "h1").public_key
    h2_public = _peer(lab_wg, "h1", "h2").public_key
    size = 60
    _force_handshake(lab_wg, "h1", "h2")
    with UnderlayCapture(lab_wg.plan.underlay_netns, bpf=f"udp port {WG_PORT}") as cap:
        _ping(lab_wg, "pod1", lab_wg.pod_ip("pod2"), "-c", "3", "-i", "0.1", "-W", "3", "-s", str(size))
    assert _peer(lab_wg, "h1", "h2").last_handshake_ns > 0
    datagrams = udp_datagrams(cap.packets)
    for d in datagrams:
        assert d.reserved_zero, d

    initiations = _between(datagrams, h1, h2, INITIATION)
    assert initiations, "no handshake initiation from h1"
    for d in initiations:
        assert d.size == INITIATION_SIZE == len(d.data)
        assert mac1_valid(d.data, h2_public), "initiation mac1 is not keyed with h2's public key"
        assert d.data[-MAC_SIZE:] == bytes(MAC_SIZE)  # no cookie asked for: mac2 is zero
    responses = _between(datagrams, h2, h1, RESPONSE)
    assert len(responses) == 1
    response = responses[0]
    assert response.size == RESPONSE_SIZE == len(response.data)
    assert mac1_valid(response.data, h1_public)
    assert response.u32(8) in {d.u32(4) for d in initiations}  # receiver = the initiator's sender index
    initiator_index, responder_index = response.u32(8), response.u32(4)

    transport = [d for d in datagrams if d.kind == TRANSPORT]
    assert transport
    for d in transport:  # header + payload padded to 16 + tag (these packets are far below the MTU)
        assert d.size >= 32 and (d.size - 32) % 16 == 0, d
    ping_size = padded_transport_size(size + PING_HEADERS)
    to_h2 = [d for d in _between(datagrams, h1, h2, TRANSPORT) if d.u32(4) == responder_index]
    to_h1 = [d for d in _between(datagrams, h2, h1, TRANSPORT) if d.u32(4) == initiator_index]
    assert len([d for d in to_h2 if d.size == ping_size]) == 3
    assert len([d for d in to_h1 if d.size == ping_size]) == 3
    assert to_h2[0].counter == 0 and to_h1[0].counter == 0  # a fresh session counts from zero
    assert [d.counter for d in to_h2] == sorted(d.counter for d in to_h2)


# --- 3. replayed and corrupted transport packets ---------------------------------

def test_replayed_or_corrupted_transport_packet_is_not_delivered(lab_wg: Lab) -> None:
    """h2 holds back one ping packet from h1 (nftables), so we own a transport message h2 never
    saw. Injected from the underlay: a copy with one flipped ciphertext bit is dropped, the
    original is delivered (the control: our injection works), and further copies are dropped,
    also when sent from another address."""
    ul = lab_wg.plan.underlay_netns
    h1, h2 = _ip(lab_wg, "h1"), _ip(lab_wg, "h2")
    h2_ns = lab_wg.host("h2").netns
    pod1 = lab_wg.pod_ip("pod1")
    wire_size = padded_transport_size(40 + PING_HEADERS)  # small enough to be captured whole
    table = "wgwiretest"
    subprocess.run(["ip", "netns", "exec", h2_ns, "nft", "-f", "-"], check=True, text=True, timeout=10, input=(
        f"table inet {table} {{\n chain input {{\n  type filter hook input priority -300\n"
        f"  ip saddr {h1} udp dport {WG_PORT} udp length {wire_size + 8} counter drop\n }}\n}}\n"))
    try:
        with UnderlayCapture(ul, bpf=f"udp and src host {h1} and dst host {h2}") as cap:
            held_ping = _ping(lab_wg, "pod1", lab_wg.pod_ip("pod2"), "-c", "1", "-W", "1", "-s", "40", check=False)
        rules = netns_exec(h2_ns, "nft", "list", "table", "inet", table).stdout
    finally:
        netns_exec(h2_ns, "nft", "delete", "table", "inet", table, check=False)
    assert held_ping.returncode != 0, "the ping got through: the nftables hold did not work"
    assert "packets 1 " in rules, rules
    held = [d for d in udp_datagrams(cap.packets) if d.kind == TRANSPORT and d.size == wire_size]
    assert len(held) == 1
    original = held[0].data
    assert len(original) == wire_size
    flipped = bytearray(original)
    flipped[24] ^= 0x04  # a bit in the ciphertext
    corrupted = bytes(flipped)

    def rx_from_h1() -> int:
        return _peer(lab_wg, "h2", "h1").rx_bytes

    def h2_has_h1_at_home() -> bool:
        endpoint = _peer(lab_wg, "h2", "h1").endpoint
        return endpoint is not None and (str(endpoint[0]), endpoint[1]) == (h1, WG_PORT)

    # (what, payload, from where): the last one replays from an attacker's own address, which
    # must not move h2's endpoint for h1 either (only authenticated, fresh packets roam).
    phases = (("corrupted", corrupted, (h1, WG_PORT)), ("fresh", original, (h1, WG_PORT)),
              ("replayed", original, (h1, WG_PORT)), ("replayed from elsewhere", original, (ATTACKER, 40000)))
    results: dict[str, tuple[int, int]] = {}
    with UnderlayCapture(ul, bpf=f"udp and src host {h1} and dst host {h2}") as legit_cap:
        for phase, payload, (src, sport) in phases:
            bpf = f"icmp and src host {pod1} and icmp[icmptype] == icmp-echo"
            with UnderlayCapture(h2_ns, bpf=bpf) as inside_h2:  # every interface: TUN, pod bridge, veth
                before = rx_from_h1()
                send_raw(ul, [ipv4_udp(src, sport, h2, WG_PORT, payload)])
                if phase == "fresh":
                    wait_for(lambda: rx_from_h1() > before, timeout=3)
                else:
                    time.sleep(0.5)  # nothing to wait for: give a wrong delivery time to show
                rx_added = rx_from_h1() - before
            results[phase] = (len(inside_h2.packets), rx_added)
    # Any genuine h1 -> h2 traffic meanwhile (keepalives) bounds what rx_bytes may add.
    legit = sum(d.size for d in udp_datagrams(legit_cap.packets) if d.data not in (original, corrupted))

    delivered, rx_added = results.pop("fresh")
    assert delivered >= 1, "the untouched held-back packet was not delivered: the injection does not work"
    assert wire_size <= rx_added <= wire_size + legit
    for phase, (delivered, rx_added) in results.items():
        assert delivered == 0, f"{phase} packet was delivered inside h2"
        assert rx_added <= legit, f"{phase} packet was counted as received ({rx_added} bytes)"
    assert h2_has_h1_at_home(), f"a replayed packet moved h2's endpoint for h1 to {_peer(lab_wg, 'h2', 'h1').endpoint}"


# --- 4. cryptokey routing on receive ----------------------------------------------

def test_inner_source_outside_the_peers_allowed_ips_is_dropped(lab_wg: Lab) -> None:
    """From h1's host namespace, two echo requests to pod2 through ovl.wg: one claiming pod3's
    address (h3's subnet, not h1's allowed IPs on h2), one with pod1's (the control)."""
    h1, h2 = _ip(lab_wg, "h1"), _ip(lab_wg, "h2")
    pod2 = lab_wg.pod_ip("pod2")
    payload = b"allowed-ips-check"
    spoofed_id, control_id = 0x5A01, 0x5A02
    packets = [bytes(IP(src=lab_wg.pod_ip(src), dst=pod2) / ICMP(id=ident, seq=1) / Raw(load=payload))
               for src, ident in (("pod3", spoofed_id), ("pod1", control_id))]
    wire_size = padded_transport_size(len(packets[0]))

    before = _peer(lab_wg, "h2", "h1").rx_bytes
    with UnderlayCapture(lab_wg.plan.underlay_netns, bpf=f"udp and src host {h1} and dst host {h2}") as wire, \
            UnderlayCapture(lab_wg.host("h2").netns, bpf=f"icmp and dst host {pod2}") as inside_h2:
        # Apart in time, so h1 sends two datagrams rather than one GSO batch (which crosses the
        # simulated underlay as one frame: veth does not cut it).
        send_raw(lab_wg.host("h1").netns, packets, per_second=5)
        wait_for(lambda: _peer(lab_wg, "h2", "h1").rx_bytes >= before + 2 * wire_size, timeout=3)
        time.sleep(0.3)
    rx_added = _peer(lab_wg, "h2", "h1").rx_bytes - before

    sent = [d for d in _between(udp_datagrams(wire.packets), h1, h2, TRANSPORT) if d.size == wire_size]
    assert len(sent) == 2, "h1 did not encrypt both packets to h2"
    assert rx_added >= 2 * wire_size, "h2 did not authenticate both transport messages"
    seen = {p[ICMP].id for p in inside_h2.packets if p.haslayer(ICMP) and p[ICMP].type == 8}
    assert control_id in seen, "the control packet (allowed source) was not delivered"
    assert spoofed_id not in seen, "a packet with a source outside h1's allowed IPs was delivered"


# --- 5. roaming ---------------------------------------------------------------------

def test_peer_roaming_to_a_new_underlay_address_keeps_working(lab_wg: Lab) -> None:
    h1_ns = lab_wg.host("h1").netns
    h1, h2 = _ip(lab_wg, "h1"), _ip(lab_wg, "h2")
    roamed = "198.18.0.111"
    pod2 = lab_wg.pod_ip("pod2")

    def h2_sees_h1_at(address: str) -> bool:
        endpoint = _peer(lab_wg, "h2", "h1").endpoint
        return endpoint is not None and (str(endpoint[0]), endpoint[1]) == (address, WG_PORT)

    assert h2_sees_h1_at(h1)
    _ip_cmd(h1_ns, "addr", "add", f"{roamed}/24", "dev", "eth0")
    try:
        _ip_cmd(h1_ns, "route", "replace", f"{h2}/32", "dev", "eth0", "src", roamed)
        with UnderlayCapture(lab_wg.plan.underlay_netns, bpf=f"udp port {WG_PORT}") as cap:
            ping = _ping(lab_wg, "pod1", pod2, "-c", "5", "-i", "0.1", "-W", "2", check=False)
            roamed_seen = h2_sees_h1_at(roamed)
            if not roamed_seen:  # the daemon's periodic resync may just have set the configured endpoint back
                _ping(lab_wg, "pod1", pod2, "-c", "1", "-W", "2", check=False)
                roamed_seen = h2_sees_h1_at(roamed)
        assert _lossless(ping), ping.stdout
        assert roamed_seen, f"h2 still has h1 at {_peer(lab_wg, 'h2', 'h1').endpoint}"
        datagrams = udp_datagrams(cap.packets)
        assert _between(datagrams, roamed, h2, TRANSPORT), "h1's packets did not leave from the new address"
        assert _between(datagrams, h2, roamed, TRANSPORT), "h2 did not answer to the new address"
        assert not _between(datagrams, h1, h2), "h1 still sent from its old address"
    finally:
        _ip_cmd(h1_ns, "route", "del", f"{h2}/32", check=False)
        _ip_cmd(h1_ns, "addr", "del", f"{roamed}/24", "dev", "eth0", check=False)
    # Roam back, so the lab is as it was: h1's next packet comes from its own address.
    assert _lossless(_ping(lab_wg, "pod1", pod2, "-c", "2", "-i", "0.1", "-W", "2", check=False))
    assert h2_sees_h1_at(h1)


# --- 6. handshake flood ---------------------------------------------------------------

FLOOD_PACKETS = 2000
FLOOD_SECONDS = 5.0
# Spoofed sources: the upper half of the underlay /24, where no lab address lives.
SPOOF_NET = ipaddress.ip_network("198.18.0.128/25")


def test_handshake_flood_turns_on_cookies_and_a_real_peer_still_gets_through(lab_wg: Lab) -> None:
    ul = lab_wg.plan.underlay_netns
    h1, h2 = _ip(lab_wg, "h1"), _ip(lab_wg, "h2")
    h2_ns = lab_wg.host("h2").netns
    pod2 = lab_wg.pod_ip("pod2")
    h2_public = _peer(lab_wg, "h1", "h2").public_key
    sources = [str(a) for a in SPOOF_NET.hosts()]
    assert not {h.underlay_ip for h in lab_wg.plan.hosts} & set(map(ipaddress.ip_address, sources))

    sent: dict[tuple[str, int, int], bytes] = {}  # (source, port, sender index) -> initiation

    def spoofed(count: int) -> list[bytes]:
        packets = []
        for _ in range(count):
            source, port, index = random.choice(sources), random.randint(1024, 65535), random.getrandbits(32)
            message = spoofed_initiation(h2_public, index)
            sent[(source, port, index)] = message
            packets.append(ipv4_udp(source, port, h2, WG_PORT, message))
        return packets

    # Nobody owns the spoofed sources, so h2 could not resolve them: a route through the underlay
    # gateway puts h2's answers on the wire, where they die (the underlay namespace does not forward).
    _ip_cmd(h2_ns, "route", "add", str(SPOOF_NET), "via", str(UNDERLAY_GATEWAY), "dev", "eth0")
    try:
        # Control: a few spoofed initiations with a valid mac1 but no load get no cookie reply.
        with UnderlayCapture(ul, bpf=f"udp and src host {h2} and dst net {SPOOF_NET}") as quiet:
            send_raw(ul, spoofed(5), per_second=10)
            time.sleep(0.3)
        assert not quiet.packets, "cookie replies without any load"

        flood = spoofed(FLOOD_PACKETS)
        before = _peer(lab_wg, "h1", "h2").last_handshake_ns
        bystander = subprocess.Popen(["ip", "netns", "exec", _pod_netns(lab_wg, "pod3"), "ping", "-n", "-c", "20",
                                      "-i", "0.2", "-W", "2", pod2], stdout=subprocess.PIPE, text=True)
        try:
            with UnderlayCapture(ul, bpf=f"udp and (src host {h2} or src host {h1})") as cap, \
                    ThreadPoolExecutor(max_workers=1) as pool:
                flooding = pool.submit(send_raw, ul, flood, per_second=FLOOD_PACKETS / FLOOD_SECONDS)
                time.sleep(1.0)  # h2 is well under load by now
                _force_handshake(lab_wg, "h1", "h2")
                _ping(lab_wg, "pod1", pod2, "-c", "1", "-W", "1", check=False)  # makes h1 initiate
                flooding.result(timeout=FLOOD_SECONDS + 5)
                completed = wait_for(lambda: _peer(lab_wg, "h1", "h2").last_handshake_ns > before, timeout=10)
                after_flood = _ping(lab_wg, "pod1", pod2, "-c", "3", "-i", "0.1", "-W", "2", check=False)
                bystander_out, _ = bystander.communicate(timeout=15)
        finally:
            if bystander.poll() is None:
                bystander.kill()
                bystander.wait()
    finally:
        _ip_cmd(h2_ns, "route", "del", str(SPOOF_NET), check=False)

    datagrams = udp_datagrams(cap.packets)
    cookies = [d for d in datagrams if d.src == h2 and d.kind == COOKIE_REPLY
               and ipaddress.ip_address(d.dst) in SPOOF_NET]
    assert len(cookies) >= FLOOD_PACKETS // 2, f"{len(cookies)} cookie replies to {FLOOD_PACKETS} initiations"
    key = cookie_key(h2_public)
    for reply in cookies:
        assert reply.sport == WG_PORT and reply.size == COOKIE_REPLY_SIZE == len(reply.data)
        initiation = sent.get((reply.dst, reply.dport, reply.u32(4)))
        assert initiation is not None, "cookie reply to an initiation nobody sent"
        # The cookie is sealed under h2's cookie key and bound to the initiation's mac1.
        assert xaead_decrypt(key, reply.data[8:32], reply.data[32:64], mac1_of(initiation)) is not None

    # h1 initiated under load: h2 answered with a cookie instead of a response; h1's retry
    # (REKEY_TIMEOUT later) carries mac2 made with that cookie, and the handshake completes.
    assert completed, "h1 never completed a handshake with h2 during/after the flood"
    assert _lossless(after_flood), after_flood.stdout
    initiations = _between(datagrams, h1, h2, INITIATION)
    challenges = _between(datagrams, h2, h1, COOKIE_REPLY)
    assert initiations and challenges, "h2 under load did not ask h1 for a cookie"
    first, challenge = initiations[0], challenges[0]
    assert first.data[-MAC_SIZE:] == bytes(MAC_SIZE) and challenge.u32(4) == first.u32(4)
    cookie = xaead_decrypt(key, challenge.data[8:32], challenge.data[32:64], mac1_of(first.data))
    assert cookie is not None
    retries = [d for d in initiations if d.time > challenge.time]
    assert retries, "h1 did not retry its initiation"
    assert all(mac2_valid(d.data, cookie) for d in retries), "h1's retry does not carry mac2 from h2's cookie"
    responses = _between(datagrams, h2, h1, RESPONSE)
    assert responses and responses[0].time > retries[0].time
    assert re.search(r"\b0% packet loss", bystander_out), f"pod3 -> pod2 lost pings in the flood:\n{bystander_out}"
