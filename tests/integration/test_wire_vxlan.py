"""On the wire: cross-host pod traffic is VXLAN with the configured VNI and
port, the pod addresses are inside, and nothing from a pod crosses the
underlay unencapsulated."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.vxlan import VXLAN

from tests.integration.conftest import Lab, netns_exec
from tests.integration.wire import UnderlayCapture

pytestmark = pytest.mark.integration

POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
VNI, PORT = 1, 4789


def _pod_netns(lab: Lab, pod: str) -> str:
    return next(p["netns"] for p in lab.result["pods"] if p["name"] == pod)


def test_cross_host_pod_traffic_is_vxlan_with_pod_ips_inside(lab3: Lab) -> None:
    src, dst = lab3.pod_ip("pod1"), lab3.pod_ip("pod2")
    with UnderlayCapture(lab3.plan.underlay_netns) as cap:
        netns_exec(_pod_netns(lab3, "pod1"), "ping", "-c", "5", "-i", "0.05", "-W", "2", dst)
        netns_exec(_pod_netns(lab3, "pod1"), "python3", "-m", "overlayd.lab.probe", "check", "7777", dst)

    vxlan = [p for p in cap.packets if p.haslayer(VXLAN)]
    assert vxlan, "no VXLAN frames captured"
    inner_icmp = inner_tcp = 0
    for frame in vxlan:
        outer = frame[IP]
        assert frame[UDP].dport == PORT
        assert frame[VXLAN].vni == VNI
        assert ipaddress.ip_address(outer.src) in ipaddress.ip_network("198.18.0.0/24")
        inner = frame[VXLAN].payload[IP]
        assert ipaddress.ip_address(inner.src) in POD_NETWORK, frame.summary()
        assert ipaddress.ip_address(inner.dst) in POD_NETWORK, frame.summary()
        inner_icmp += inner.haslayer(ICMP) and {inner.src, inner.dst} == {src, dst}
        inner_tcp += inner.haslayer(TCP) and inner[TCP].dport == 7777
    assert inner_icmp >= 10  # 5 requests + 5 replies, each seen on two bridge ports
    assert inner_tcp >= 1

    # Nothing with a pod address travels the underlay in the clear.
    for frame in cap.packets:
        if frame.haslayer(IP) and not frame.haslayer(VXLAN):
            outer = frame[IP]
            assert ipaddress.ip_address(outer.src) not in POD_NETWORK, frame.summary()
            assert ipaddress.ip_address(outer.dst) not in POD_NETWORK, frame.summary()
