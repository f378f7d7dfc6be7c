"""The VXLAN backend against a real kernel: hosts as namespaces on a simulated underlay.

Underlay: a bridge in its own namespace, 198.18.0.1/24. Host i: a namespace with
eth0 = 198.18.0.(10+i) and a default route via the underlay bridge; the backend runs
in a worker thread that joined that namespace (pyroute2 sockets and /proc/sys/net
follow the calling thread). Pod i: a namespace with a veth into host i's bridge.
Kernel state is checked with iproute2's JSON output, independently of pyroute2.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ipaddress
import json
import logging
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute

from overlayd.backend.host import HostNetwork, ensure_host_network
from overlayd.backend.objects import RTPROT_OVERLAYD, IPNetwork
from overlayd.backend.peers import PeerVtep
from overlayd.backend.underlay import Underlay, detect_underlay
from overlayd.backend.contract import ReconcileResult
from overlayd.backend.netlink import Netlink
from overlayd.backend.vxlan import VxlanBackend
from overlayd.backend.vxlan_plan import Observed, programmed_state, vxlan_mtu
from overlayd.errors import ConfigError

pytestmark = pytest.mark.integration

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
BRIDGE, VXLAN = "ovl0", "ovl.vx"
VNI, PORT = 1, 4789
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done


def ip_json(netns: str, *args: str) -> Any:
    out = sh("ip", "-n", netns, "-j", *args).stdout
    return json.loads(out) if out.strip() else []


def _enter_netns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


@dataclass
class Node:
    """One simulated host: its namespace, a worker thread inside it, and the backend objects."""

    index: int
    netns: str
    pod_netns: str
    subnet: IPNetwork
    vtep_mac: str
    worker: concurrent.futures.ThreadPoolExecutor
    ipr: Any = None
    underlay: Underlay | None = None
    host: HostNetwork | None = None
    backend: VxlanBackend | None = None

    @property
    def public_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(f"198.18.0.{10 + self.index}")

    @property
    def pod_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self.subnet.network_address + 2

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn inside this host's network namespace (on its worker thread)."""
        return self.worker.submit(fn, *args, **kwargs).result(timeout=30)

    def new_backend(self, vni: int = VNI) -> VxlanBackend:
        assert self.underlay is not None
        return self.run(VxlanBackend.for_underlay, self.ipr, VXLAN, vni, PORT, self.underlay, self.vtep_mac)

    def reconcile(self, peers: dict[IPNetwork, PeerVtep], *, full: bool = False) -> ReconcileResult:
        assert self.backend is not None
        return self.run(partial(self.backend.reconcile, peers, full=full))

    def vxlan_ifindex(self) -> int:
        return ip_json(self.netns, "link", "show", VXLAN)[0]["ifindex"]

    def our_routes(self) -> list[dict[str, Any]]:
        return ip_json(self.netns, "route", "show", "proto", str(RTPROT_OVERLAYD))

    def vxlan_neighbours(self) -> list[dict[str, Any]]:
        return ip_json(self.netns, "neigh", "show", "dev", VXLAN, "nud", "permanent")

    def vxlan_fdb(self) -> list[dict[str, Any]]:
        out = sh("bridge", "-n", self.netns, "-j", "fdb", "show", "dev", VXLAN).stdout
        return json.loads(out) if out.strip() else []


class Cluster:
    def __init__(self, run_id: str, nodes: list[Node]) -> None:
        self.run_id = run_id
        self.nodes = nodes

    @property
    def underlay_netns(self) -> str:
        return f"{self.run_id}-ul"

    def peers_of(self, node: Node, among: list[Node] | None = None) -> dict[IPNetwork, PeerVtep]:
        return {
            other.subnet: PeerVtep(other.public_ip, other.vtep_mac)
            for other in (among if among is not None else self.nodes)
            if other is not node
        }

    def reconcile_all(self) -> list[ReconcileResult]:
        return [node.reconcile(self.peers_of(node)) for node in self.nodes]


def ping(netns: str, dst: object, count: int = 1) -> bool:
    return sh("ip", "netns", "exec", netns, "ping", "-c", str(count), "-W", "2", str(dst), check=False).returncode == 0


def _build(run_id: str, hosts: int, pod_version: int, namespaces: list[str], nodes: list[Node]) -> None:
    ul = f"{run_id}-ul"
    sh("ip", "netns", "add", ul)
    namespaces.append(ul)
    sh("ip", "-n", ul, "link", "add", "ulbr", "type", "bridge")
    sh("ip", "-n", ul, "addr", "add", "198.18.0.1/24", "dev", "ulbr")
    sh("ip", "-n", ul, "link", "set", "ulbr", "up")
    for i in range(1, hosts + 1):
        hns, pns = f"{run_id}-h{i}", f"{run_id}-p{i}"
        for ns in (hns, pns):
            sh("ip", "netns", "add", ns)
            namespaces.append(ns)
        sh("ip", "-n", ul, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", hns)
        sh("ip", "-n", ul, "link", "set", f"v{i}", "master", "ulbr", "up")
        sh("ip", "-n", hns, "addr", "add", f"198.18.0.{10 + i}/24", "dev", "eth0")
        sh("ip", "-n", hns, "link", "set", "eth0", "up")
        sh("ip", "-n", hns, "link", "set", "lo", "up")
        sh("ip", "-n", hns, "route", "add", "default", "via", "198.18.0.1")
        subnet = (
            ipaddress.ip_network(f"10.244.{i}.0/24")
            if pod_version == 4
            else ipaddress.ip_network(f"fd00:10:244:{i}::/64")
        )
        worker = concurrent.futures.ThreadPoolExecutor(1, initializer=_enter_netns, initargs=(hns,))
        nodes.append(Node(i, hns, pns, subnet, f"02:00:00:00:00:{i:02x}", worker))

    for node in nodes:
        def bring_up(node: Node = node) -> None:
            node.ipr = IPRoute()
            node.underlay = detect_underlay(node.ipr)
            node.host = ensure_host_network(
                node.ipr, bridge=BRIDGE, subnet=node.subnet, mtu=vxlan_mtu(node.underlay.mtu, 4)
            )
            node.backend = VxlanBackend.for_underlay(node.ipr, VXLAN, VNI, PORT, node.underlay, node.vtep_mac)
            node.backend.setup(node.subnet)

        node.run(bring_up)
        _add_pod(node)


def _add_pod(node: Node) -> None:
    hns, pns = node.netns, node.pod_netns
    mtu = str(node.host.mtu if node.host else 1450)
    sh("ip", "-n", hns, "link", "add", "pod0", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", pns)
    sh("ip", "-n", hns, "link", "set", "pod0", "master", BRIDGE, "up")
    prefix = f"/{node.subnet.prefixlen}"
    gateway = str(node.subnet.network_address + 1)
    extra = ["nodad"] if node.subnet.version == 6 else []
    sh("ip", "-n", pns, "addr", "add", f"{node.pod_ip}{prefix}", "dev", "eth0", *extra)
    sh("ip", "-n", pns, "link", "set", "eth0", "mtu", mtu, "up")
    sh("ip", "-n", pns, "link", "set", "lo", "up")
    sh("ip", "-n", pns, "route", "add", "default", "via", gateway)


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    namespaces: list[str] = []
    nodes: list[Node] = []

    def make(hosts: int = 3, pod_version: int = 4) -> Cluster:
        run_id = f"t{secrets.token_hex(3)}"
        first = len(nodes)
        _build(run_id, hosts, pod_version, namespaces, nodes)
        return Cluster(run_id, nodes[first:])

    try:
        yield make
    finally:
        for node in nodes:
            if node.ipr is not None:
                node.worker.submit(node.ipr.close).result(timeout=30)
            node.worker.shutdown()
        for ns in reversed(namespaces):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def root_forwarding() -> Iterator[None]:
    """Guard: nothing here may touch the root namespace's forwarding switch."""
    path = Path("/proc/sys/net/ipv4/ip_forward")
    before = path.read_text()
    yield
    assert path.read_text() == before


def test_pods_reach_each_other_across_hosts(make_cluster: Callable[..., Cluster], root_forwarding: None) -> None:
    cluster = make_cluster(3)
    results = cluster.reconcile_all()
    # per node: two peers x (route, neighbour, FDB entry)
    assert results == [ReconcileResult(added=6)] * 3
    n1, n2, n3 = cluster.nodes
    for src in cluster.nodes:
        for dst in cluster.nodes:
            if src is not dst:
                assert ping(src.pod_netns, dst.pod_ip), f"pod {src.index} -> pod {dst.index}"
    assert ping(n1.netns, n3.pod_ip), "host 1 -> pod 3 (sourced from the VXLAN device address)"
    assert sh("ip", "netns", "exec", n1.netns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"

    link = ip_json(n1.netns, "-d", "link", "show", VXLAN)[0]
    info = link["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["local"], info["link"]) == (VNI, PORT, "198.18.0.11", "eth0")
    assert info["learning"] is False
    assert link["mtu"] == 1450 and link["address"] == n1.vtep_mac
    addrs = ip_json(n1.netns, "addr", "show", VXLAN)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [("10.244.1.0", 32)]
    bridge = ip_json(n1.netns, "addr", "show", BRIDGE)[0]
    assert bridge["mtu"] == 1450
    assert [(a["local"], a["prefixlen"]) for a in bridge["addr_info"] if a["family"] == "inet"] == [("10.244.1.1", 24)]

    routes = {r["dst"]: r for r in n1.our_routes()}
    assert set(routes) == {"10.244.2.0/24", "10.244.3.0/24"}
    assert routes["10.244.2.0/24"]["gateway"] == "10.244.2.0"
    assert routes["10.244.2.0/24"]["dev"] == VXLAN and "onlink" in routes["10.244.2.0/24"]["flags"]
    assert {(n["dst"], n["lladdr"]) for n in n1.vxlan_neighbours()} == {
        ("10.244.2.0", n2.vtep_mac),
        ("10.244.3.0", n3.vtep_mac),
    }
    assert {(f["mac"], f["dst"]) for f in n1.vxlan_fdb()} == {
        (n2.vtep_mac, "198.18.0.12"),
        (n3.vtep_mac, "198.18.0.13"),
    }


def test_second_reconcile_changes_nothing(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    cluster.reconcile_all()
    n1 = cluster.nodes[0]
    before = (n1.our_routes(), n1.vxlan_neighbours(), n1.vxlan_fdb())
    assert cluster.reconcile_all() == [ReconcileResult()] * 3
    assert (n1.our_routes(), n1.vxlan_neighbours(), n1.vxlan_fdb()) == before


def test_removed_peer_loses_route_neighbour_and_fdb(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    cluster.reconcile_all()
    n1, n2, n3 = cluster.nodes
    assert n1.reconcile(cluster.peers_of(n1, among=[n1, n2])) == ReconcileResult(removed=3)
    assert [r["dst"] for r in n1.our_routes()] == ["10.244.2.0/24"]
    assert [n["dst"] for n in n1.vxlan_neighbours()] == ["10.244.2.0"]
    assert [f["mac"] for f in n1.vxlan_fdb()] == [n2.vtep_mac]
    assert ping(n1.pod_netns, n2.pod_ip)
    assert not ping(n1.pod_netns, n3.pod_ip)


def test_strays_are_removed_and_desired_state_kept(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(2)
    cluster.reconcile_all()
    n1, n2 = cluster.nodes
    ns = n1.netns
    proto = str(RTPROT_OVERLAYD)
    sh("ip", "-n", ns, "route", "add", "10.244.99.0/24", "via", "10.244.99.0", "dev", VXLAN, "onlink", "proto", proto)
    sh("ip", "-n", ns, "route", "add", "10.244.98.0/24", "dev", VXLAN)  # on our device, any protocol
    sh("ip", "-n", ns, "route", "add", "10.244.97.0/24", "via", "198.18.0.1", "proto", proto)  # our mark, eth0
    sh("ip", "-n", ns, "route", "add", "10.244.2.0/24", "via", "10.244.2.0", "dev", VXLAN, "onlink",
       "proto", proto, "metric", "7")  # a second copy of a desired route with another metric
    sh("ip", "-n", ns, "neigh", "add", "10.244.99.0", "lladdr", "02:00:00:00:00:99", "dev", VXLAN, "nud", "permanent")
    sh("bridge", "-n", ns, "fdb", "append", "02:00:00:00:00:99", "dev", VXLAN, "dst", "198.18.0.99")
    sh("bridge", "-n", ns, "fdb", "append", "00:00:00:00:00:00", "dev", VXLAN, "dst", "198.18.0.98")  # flooding
    sh("ip", "-n", ns, "route", "add", "10.250.0.0/24", "via", "198.18.0.1")  # not ours: must stay

    # Only a full reconcile (start-up, the daemon's periodic resync) reads the kernel again.
    assert n1.reconcile(cluster.peers_of(n1)) == ReconcileResult()
    assert n1.reconcile(cluster.peers_of(n1), full=True) == ReconcileResult(removed=7)
    assert [(r["dst"], r.get("metric", 0)) for r in n1.our_routes()] == [("10.244.2.0/24", 0)]
    assert [r["dst"] for r in ip_json(ns, "route", "show", "dev", VXLAN)] == ["10.244.2.0/24"]
    assert [n["dst"] for n in n1.vxlan_neighbours()] == ["10.244.2.0"]
    assert [(f["mac"], f["dst"]) for f in n1.vxlan_fdb()] == [(n2.vtep_mac, "198.18.0.12")]
    assert ip_json(ns, "route", "show", "10.250.0.0/24"), "a route that is not ours was deleted"
    assert ping(n1.pod_netns, n2.pod_ip)


def test_wrong_entries_are_changed_in_place(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(2)
    cluster.reconcile_all()
    n1, n2 = cluster.nodes
    ns = n1.netns
    sh("ip", "-n", ns, "route", "replace", "10.244.2.0/24", "dev", VXLAN, "proto", str(RTPROT_OVERLAYD))
    sh("ip", "-n", ns, "neigh", "replace", "10.244.2.0", "lladdr", "02:00:00:00:00:77", "dev", VXLAN,
       "nud", "permanent")
    sh("bridge", "-n", ns, "fdb", "replace", n2.vtep_mac, "dev", VXLAN, "dst", "198.18.0.77")
    assert not ping(n1.pod_netns, n2.pod_ip)

    assert n1.reconcile(cluster.peers_of(n1), full=True) == ReconcileResult(changed=3)
    assert [(r["dst"], r["gateway"]) for r in n1.our_routes()] == [("10.244.2.0/24", "10.244.2.0")]
    assert [(n["dst"], n["lladdr"]) for n in n1.vxlan_neighbours()] == [("10.244.2.0", n2.vtep_mac)]
    assert [(f["mac"], f["dst"]) for f in n1.vxlan_fdb()] == [(n2.vtep_mac, "198.18.0.12")]
    assert ping(n1.pod_netns, n2.pod_ip)


def test_restarted_backend_adopts_device_without_changes(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(2)
    cluster.reconcile_all()
    n1, n2 = cluster.nodes
    ifindex = n1.vxlan_ifindex()
    fresh = n1.new_backend()  # as a restarted daemon would
    n1.run(fresh.setup, n1.subnet)
    assert fresh.backend_data() == {"type": "vxlan", "vtep_mac": n1.vtep_mac}
    assert n1.vxlan_ifindex() == ifindex
    assert n1.run(fresh.reconcile, cluster.peers_of(n1)) == ReconcileResult()
    assert ping(n1.pod_netns, n2.pod_ip)


def test_device_with_other_vni_is_recreated(
    make_cluster: Callable[..., Cluster], caplog: pytest.LogCaptureFixture
) -> None:
    cluster = make_cluster(2)
    cluster.reconcile_all()
    n1, n2 = cluster.nodes
    ifindex = n1.vxlan_ifindex()
    n1.backend = n1.new_backend(vni=2)
    n2.backend = n2.new_backend(vni=2)
    with caplog.at_level(logging.WARNING, logger="overlayd.backend"):
        n1.run(n1.backend.setup, n1.subnet)
    assert "recreating VXLAN device ovl.vx: VNI 1 -> 2" in caplog.text
    assert n1.vxlan_ifindex() != ifindex
    assert ip_json(n1.netns, "-d", "link", "show", VXLAN)[0]["linkinfo"]["info_data"]["id"] == 2
    n2.run(n2.backend.setup, n2.subnet)
    assert cluster.reconcile_all() == [ReconcileResult(added=3)] * 2
    assert ping(n1.pod_netns, n2.pod_ip)


def test_reconcile_recreates_a_deleted_device(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(2)
    cluster.reconcile_all()
    n1, n2 = cluster.nodes
    sh("ip", "-n", n1.netns, "link", "del", VXLAN)
    assert n1.reconcile(cluster.peers_of(n1)) == ReconcileResult(added=3)
    assert ping(n1.pod_netns, n2.pod_ip)


def test_a_device_set_down_and_up_gets_its_routes_back_at_the_next_event(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Setting a link down makes the kernel drop its routes and neighbours; an event-driven
    (not full) reconcile must notice the device was repaired and program everything again."""
    cluster = make_cluster(2)
    cluster.reconcile_all()
    n1, n2 = cluster.nodes
    sh("ip", "-n", n1.netns, "link", "set", VXLAN, "down")
    sh("ip", "-n", n1.netns, "link", "set", VXLAN, "up")
    assert n1.our_routes() == []
    assert n1.reconcile(cluster.peers_of(n1)).added >= 2  # route and neighbour (the FDB entry survives)
    assert [r["dst"] for r in n1.our_routes()] == [str(n2.subnet)]
    assert ping(n1.pod_netns, n2.pod_ip)


def test_a_route_not_ours_is_never_taken_over_between_full_reconciles(
    make_cluster: Callable[..., Cluster],
) -> None:
    """After a full reconcile the backend plans from what it programmed; a route the operator
    added since must still not be replaced by a new peer's."""
    cluster = make_cluster(2)
    cluster.reconcile_all()
    n1, _ = cluster.nodes
    sh("ip", "-n", n1.netns, "route", "add", "10.244.200.0/24", "via", "198.18.0.1")
    peers = cluster.peers_of(n1)
    peers[ipaddress.ip_network("10.244.200.0/24")] = PeerVtep(ipaddress.ip_address("198.18.0.50"), "02:00:00:00:00:50")
    result = n1.reconcile(peers)
    assert [str(r.subnet) for r in result.refused] == ["10.244.200.0/24"]
    (route,) = ip_json(n1.netns, "route", "show", "10.244.200.0/24")
    assert route.get("gateway") == "198.18.0.1" and route.get("protocol") != str(RTPROT_OVERLAYD)


def test_unsafe_peers_are_refused_not_programmed(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(2)
    n1, n2 = cluster.nodes
    peers = cluster.peers_of(n1)
    peers[ipaddress.ip_network("10.244.1.128/25")] = PeerVtep(ipaddress.ip_address("198.18.0.50"), "02:00:00:00:00:50")
    peers[ipaddress.ip_network("10.244.60.0/24")] = PeerVtep(n1.public_ip, "02:00:00:00:00:60")
    result = n1.reconcile(peers)
    assert (result.added, len(result.refused)) == (3, 2)
    assert {str(r.subnet) for r in result.refused} == {"10.244.1.128/25", "10.244.60.0/24"}
    assert [r["dst"] for r in n1.our_routes()] == ["10.244.2.0/24"]
    assert [f["mac"] for f in n1.vxlan_fdb()] == [n2.vtep_mac]


def test_teardown_removes_device_and_routes(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(2)
    cluster.reconcile_all()
    n1 = cluster.nodes[0]
    sh("ip", "-n", n1.netns, "route", "add", "10.244.97.0/24", "via", "198.18.0.1", "proto", str(RTPROT_OVERLAYD))
    assert n1.backend is not None
    n1.run(n1.backend.teardown)
    assert sh("ip", "-n", n1.netns, "link", "show", VXLAN, check=False).returncode != 0
    assert n1.our_routes() == []


def test_host_network_is_idempotent_and_follows_a_subnet_change(
    make_cluster: Callable[..., Cluster], root_forwarding: None
) -> None:
    cluster = make_cluster(1)
    n1 = cluster.nodes[0]
    assert n1.host is not None
    sh("ip", "-n", n1.netns, "addr", "add", "10.99.0.1/24", "dev", BRIDGE)  # an admin's, not ours
    again = n1.run(ensure_host_network, n1.ipr, bridge=BRIDGE, subnet=n1.subnet, mtu=1450)
    assert again == n1.host

    moved = n1.run(ensure_host_network, n1.ipr, bridge=BRIDGE, subnet=ipaddress.ip_network("10.244.50.0/24"), mtu=1400)
    assert moved.ifindex == n1.host.ifindex
    bridge = ip_json(n1.netns, "addr", "show", BRIDGE)[0]
    assert bridge["mtu"] == 1400
    assert sorted(a["local"] for a in bridge["addr_info"] if a["family"] == "inet") == ["10.244.50.1", "10.99.0.1"]


def test_bridge_name_held_by_another_kind_of_link_is_replaced(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(1)
    n1 = cluster.nodes[0]
    sh("ip", "-n", n1.netns, "link", "add", "ovl9", "type", "veth", "peer", "name", "ovl9p")
    host = n1.run(ensure_host_network, n1.ipr, bridge="ovl9", subnet=n1.subnet, mtu=1450)
    link = ip_json(n1.netns, "-d", "link", "show", "ovl9")[0]
    assert link["linkinfo"]["info_kind"] == "bridge" and link["ifindex"] == host.ifindex


def test_underlay_detection(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(1)
    n1 = cluster.nodes[0]
    eth0 = ip_json(n1.netns, "link", "show", "eth0")[0]
    expected = Underlay(n1.public_ip, "eth0", eth0["ifindex"], eth0["mtu"])
    assert n1.underlay == expected  # from the default route
    assert n1.run(detect_underlay, n1.ipr, interface="eth0") == expected
    assert n1.run(detect_underlay, n1.ipr, public_ip=n1.public_ip) == expected
    with pytest.raises(ConfigError, match="not assigned"):
        n1.run(detect_underlay, n1.ipr, public_ip=ipaddress.ip_address("198.18.0.200"))
    with pytest.raises(ConfigError, match="not found"):
        n1.run(detect_underlay, n1.ipr, interface="nosuch0")
    sh("ip", "-n", n1.netns, "route", "del", "default")
    with pytest.raises(ConfigError, match="no default route"):
        n1.run(detect_underlay, n1.ipr)


def test_ipv6_pod_network_over_ipv4_underlay(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(2, pod_version=6)
    assert cluster.reconcile_all() == [ReconcileResult(added=3)] * 2
    assert cluster.reconcile_all() == [ReconcileResult()] * 2
    n1, n2 = cluster.nodes
    assert ping(n1.pod_netns, n2.pod_ip)
    assert ping(n2.pod_netns, n1.pod_ip)
    forwarding = sh("ip", "netns", "exec", n1.netns, "cat", "/proc/sys/net/ipv6/conf/all/forwarding")
    assert forwarding.stdout.strip() == "1"


@pytest.mark.parametrize("pod_version", [4, 6])
def test_programmed_state_is_what_the_kernel_dump_shows(make_cluster: Callable[..., Cluster],
                                                        pod_version: int) -> None:
    """plan_peer_changes plans from programmed_state instead of a dump: it must model the
    kernel's own report of what a reconcile programmed, field by field."""
    cluster = make_cluster(3, pod_version=pod_version)
    cluster.reconcile_all()
    n1 = cluster.nodes[0]
    ifindex = n1.vxlan_ifindex()

    def ours(nl: Netlink) -> Observed:
        routes = [r for r in nl.main_routes(pod_version) if r.protocol == RTPROT_OVERLAYD]
        neighbours = [n for n in nl.neighbours(pod_version, ifindex) if n.permanent]
        return Observed(routes, neighbours, nl.fdb(ifindex))

    dumped = n1.run(lambda: ours(Netlink(n1.ipr)))
    modelled = programmed_state(cluster.peers_of(n1), ifindex=ifindex, protocol=RTPROT_OVERLAYD)
    assert len(dumped.routes) == 2
    assert sorted(dumped.routes, key=str) == sorted(modelled.routes, key=str)
    assert sorted(dumped.neighbours, key=str) == sorted(modelled.neighbours, key=str)
    assert sorted(dumped.fdb, key=str) == sorted(modelled.fdb, key=str)
