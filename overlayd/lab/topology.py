"""Build and tear down the lab's simulated underlay with iproute2.

Plain `ip` commands keep this readable for people learning the wiring: it is
exactly what one would type by hand. Every link is created directly inside a
lab namespace; the root namespace is never touched.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from overlayd.errors import KernelError
from overlayd.lab.plan import OUTSIDE_IP, OUTSIDE_LINK, UNDERLAY, UNDERLAY_GATEWAY, LabHost, LabPlan, ETCD_IP

NETNS_DIR = Path("/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")  # per-namespace /etc files (the daemons' pod resolv.conf)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise KernelError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _no_bridge_netfilter(netns: str) -> None:
    """Keep iptables out of bridged frames in a lab namespace.

    When br_netfilter is loaded on the machine (container tools load it),
    every new namespace starts with bridge-nf-call-* = 1, and each frame
    through a bridge then takes a detour through the IP hooks. A simulated
    switch, and simulated hosts with no iptables users, should not pay that:
    it costs about a fifth of the throughput here. The settings are per
    namespace, so the host machine is unaffected.
    """
    for family in ("iptables", "ip6tables", "arptables"):
        subprocess.run(["ip", "netns", "exec", netns, "sh", "-c",
                        f"f=/proc/sys/net/bridge/bridge-nf-call-{family}; [ ! -e $f ] || echo 0 > $f"],
                       check=True)


def create_underlay(plan: LabPlan) -> None:
    ns = plan.underlay_netns
    ip("netns", "add", ns)
    _no_bridge_netfilter(ns)
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "link", "add", "br0", "type", "bridge")
    # The bridge carries the underlay gateway and etcd's address.
    ip("-n", ns, "addr", "add", f"{UNDERLAY_GATEWAY}/{UNDERLAY.prefixlen}", "dev", "br0")
    ip("-n", ns, "addr", "add", f"{ETCD_IP}/{UNDERLAY.prefixlen}", "dev", "br0")
    ip("-n", ns, "link", "set", "br0", "up")


def create_outside(plan: LabPlan) -> None:
    """The simulated internet: a namespace behind the underlay gateway, which routes to it.
    It routes back to the underlay only, never to a pod network, like a real upstream."""
    ul, out = plan.underlay_netns, plan.outside_netns
    near, far = OUTSIDE_LINK.network_address + 1, OUTSIDE_LINK.network_address + 2
    ip("netns", "add", out)
    ip("-n", out, "link", "set", "lo", "up")
    ip("-n", out, "addr", "add", f"{OUTSIDE_IP}/32", "dev", "lo")
    ip("-n", ul, "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", out)
    ip("-n", ul, "addr", "add", f"{near}/{OUTSIDE_LINK.prefixlen}", "dev", "out0")
    ip("-n", ul, "link", "set", "out0", "up")
    ip("-n", out, "addr", "add", f"{far}/{OUTSIDE_LINK.prefixlen}", "dev", "eth0")
    ip("-n", out, "link", "set", "eth0", "up")
    ip("-n", out, "route", "add", str(UNDERLAY), "via", str(near))
    ip("-n", ul, "route", "add", f"{OUTSIDE_IP}/32", "via", str(far))
    subprocess.run(["ip", "netns", "exec", ul, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)


def create_host(plan: LabPlan, host: LabHost) -> None:
    ul = plan.underlay_netns
    ip("netns", "add", host.netns)
    _no_bridge_netfilter(host.netns)
    ip("-n", host.netns, "link", "set", "lo", "up")
    ip("-n", ul, "link", "add", host.underlay_port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
    ip("-n", ul, "link", "set", host.underlay_port, "master", "br0", "up")
    ip("-n", host.netns, "addr", "add", f"{host.underlay_ip}/{UNDERLAY.prefixlen}", "dev", "eth0")
    ip("-n", host.netns, "link", "set", "eth0", "up")
    ip("-n", host.netns, "route", "add", "default", "via", str(UNDERLAY_GATEWAY))


def delete_netns(name: str) -> None:
    if netns_exists(name):
        ip("netns", "del", name, check=False)


def delete_netns_etc(name: str) -> None:
    """The pod resolv.conf a lab daemon wrote for namespace `name` (pods/dns.py), and its directory."""
    (ETC_NETNS_DIR / name / "resolv.conf").unlink(missing_ok=True)
    try:
        (ETC_NETNS_DIR / name).rmdir()
    except OSError:
        pass  # absent, or holding files that are not ours
