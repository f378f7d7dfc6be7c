"""A 3-host lab on host-gw: plain routes via the peers' underlay addresses, pod packets
on the underlay as they are (scapy), and a peer that is not on-link refused."""

from __future__ import annotations

import ipaddress
import json
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from tests.integration.conftest import Lab, netns_exec, overlayctl
from tests.integration.labtools import etcdctl, free_subnet
from tests.integration.wire import UnderlayCapture

pytestmark = pytest.mark.integration

POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
UNDERLAY = ipaddress.ip_network("198.18.0.0/24")
PREFIX = "/overlayd/network"


def _status(lab: Lab, host: str) -> dict:
    """The status report; `overlayctl status` exits 1 when the host is degraded, and says why."""
    result = overlayctl(lab.host(host).socket, "--json", "status")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_routes_point_at_the_peers_underlay_addresses(lab_hostgw: Lab) -> None:
    h1 = lab_hostgw.host("h1")
    routes = json.loads(netns_exec(h1.netns, "ip", "-j", "route", "show", "proto", "213").stdout)
    want = {h["subnet"]: h["underlay_ip"] for h in lab_hostgw.result["hosts"] if h["name"] != "h1"}
    assert {r["dst"]: r["gateway"] for r in routes} == want
    assert all(r["dev"] == "eth0" for r in routes)
    links = {link["ifname"] for link in json.loads(netns_exec(h1.netns, "ip", "-j", "link", "show").stdout)}
    assert not links & {"ovl.vx", "ovl.wg"}  # no tunnel device at all
    assert _status(lab_hostgw, "h1")["backend"] == "host-gw"


def test_pod_packets_cross_the_underlay_as_plain_ip(lab_hostgw: Lab) -> None:
    src, dst = lab_hostgw.pod_ip("pod1"), lab_hostgw.pod_ip("pod2")
    with UnderlayCapture(lab_hostgw.plan.underlay_netns) as cap:
        netns_exec(lab_hostgw.pod_netns("pod1"), "ping", "-c", "5", "-i", "0.05", "-W", "2", dst)
        netns_exec(lab_hostgw.pod_netns("pod1"), sys.executable, "-m", "overlayd.lab.probe", "check", "7777", dst)

    pod_frames = [p for p in cap.packets if p.haslayer(IP) and ipaddress.ip_address(p[IP].src) in POD_NETWORK]
    icmp = [p for p in pod_frames if p.haslayer(ICMP) and {p[IP].src, p[IP].dst} == {src, dst}]
    tcp = [p for p in pod_frames if p.haslayer(TCP) and 7777 in (p[TCP].sport, p[TCP].dport)]
    assert len(icmp) >= 10  # 5 requests + 5 replies, each seen on two bridge ports
    assert tcp
    for frame in pod_frames:
        # The pods' own addresses in the only IP header: nothing wraps them.
        assert ipaddress.ip_address(frame[IP].dst) in POD_NETWORK, frame.summary()
        assert not frame.haslayer(UDP) or frame[UDP].dport not in (4789, 51820), frame.summary()
    # And nothing on the underlay carries them inside UDP (no VXLAN, no WireGuard).
    assert not [p for p in cap.packets if p.haslayer(UDP) and p[UDP].dport in (4789, 8472, 51820)]


def test_a_peer_that_is_not_on_link_is_refused(lab_hostgw: Lab) -> None:
    subnet = free_subnet(lab_hostgw.plan)
    key = f"{PREFIX}/subnets/{subnet.replace('/', '-')}"
    # 203.0.113.5 (TEST-NET-3) is on no network of the lab's underlay segment.
    record = {"node": "far", "public_ip": "203.0.113.5", "backend": {"type": "host-gw"}}
    etcdctl(lab_hostgw.plan, "put", key, json.dumps(record))
    try:
        deadline = time.monotonic() + 15
        while (status := _status(lab_hostgw, "h2"))["health"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status["health"] == "degraded", status
        assert status["refused_peers"] == 1 and status["peers"] == 3, status
        assert any(p.startswith("peers: 1 of 3 peers refused") for p in status["problems"]), status
        assert netns_exec(lab_hostgw.host("h2").netns, "ip", "route", "show", subnet).stdout.strip() == ""
        log = lab_hostgw.host("h2").log_path.read_text()
        assert f"refusing peer {subnet}: public IP 203.0.113.5 is not on-link" in log
        ping = netns_exec(lab_hostgw.pod_netns("pod2"), "ping", "-c", "2", "-W", "2", lab_hostgw.pod_ip("pod1"),
                          check=False)
        assert ping.returncode == 0, ping.stdout  # the others are unaffected
    finally:
        etcdctl(lab_hostgw.plan, "del", key)
    deadline = time.monotonic() + 15
    while _status(lab_hostgw, "h2")["health"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _status(lab_hostgw, "h2")["health"] == "ok"
