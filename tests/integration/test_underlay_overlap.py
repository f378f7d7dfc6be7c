"""A cluster network over the underlay (issue 7, item 6), on real namespaces and etcd.

With `network init --cidr 198.18.0.0/16` on hosts in 198.18.0.0/24, a peer record for
198.18.0.0/24 made the VXLAN backend replace the kernel's connected route with a route
into the tunnel: the host lost etcd and every peer for good. Now the daemon refuses to
start on such a config (before taking a lease), and the backends never replace a route
that is not theirs, whatever the records say.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overlayd.backend.peers import PeerVtep
from overlayd.lab import runner
from overlayd.lab.plan import LabPlan, daemon_config_toml, make_plan
from tests.integration.conftest import netns_exec, unique_name
from tests.integration.labtools import etcdctl
from tests.integration.test_vxlan_backend import Cluster, ip_json, make_cluster, ping  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

UNDERLAY = "198.18.0.0/24"
PREFIX = "/overlayd/network"


def _connected_routes(netns: str) -> list[tuple[str, str, str]]:
    return [(r["dst"], r.get("dev", ""), r.get("protocol", "")) for r in ip_json(netns, "route", "show", UNDERLAY)]


@pytest.fixture
def overlapping_lab(tmp_path: Path) -> Iterator[LabPlan]:
    """One host, etcd and a cluster network containing the underlay; no daemon yet."""
    plan = make_plan(unique_name(), 1, "vxlan", tmp_path)
    try:
        runner.build(plan, network_args=["--cidr", "198.18.0.0/16", "--subnet-len", "24"])
        yield plan
    finally:
        runner.down(plan.name, tmp_path)


def test_daemon_refuses_a_cluster_network_over_its_underlay(overlapping_lab: LabPlan) -> None:
    plan, host = overlapping_lab, overlapping_lab.hosts[0]
    host.dir.mkdir(parents=True, exist_ok=True)
    host.config_path.write_text(daemon_config_toml(plan, host, runner.LAB_LEASE_TTL))
    try:
        done = subprocess.run([sys.executable, "-m", "overlayd.daemon", "--config", str(host.config_path)],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("overlayd kept running on a cluster network that contains its underlay")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cluster network 198.18.0.0/16 overlaps" in errors[0], done.stderr
    assert "198.18.0.0/24 on eth0" in errors[0] and "Traceback" not in done.stderr
    listing = json.loads(etcdctl(plan, "get", "--prefix", f"{PREFIX}/subnets/", "-w", "json"))
    assert not listing.get("kvs"), "a lease was taken"
    assert _connected_routes(host.netns) == [(UNDERLAY, "eth0", "kernel")]


def test_a_peer_record_for_the_underlay_never_replaces_the_connected_route(
    make_cluster: Callable[..., Cluster],  # noqa: F811
) -> None:
    cluster = make_cluster(2)
    n1, n2 = cluster.nodes
    n2.reconcile(cluster.peers_of(n2))
    peers = cluster.peers_of(n1)
    # What a forged (or merely unlucky) record for the underlay's /24 would ask for.
    peers[ipaddress.ip_network(UNDERLAY)] = PeerVtep(ipaddress.ip_address("198.18.0.50"), "02:00:00:00:00:50")
    result = n1.reconcile(peers)
    assert (result.added, len(result.refused)) == (3, 1)
    assert _connected_routes(n1.netns) == [(UNDERLAY, "eth0", "kernel")]
    assert [r["dst"] for r in n1.our_routes()] == [str(n2.subnet)]
    assert ping(n1.netns, "198.18.0.1"), "the host lost its underlay (where etcd lives)"
    assert ping(n1.pod_netns, n2.pod_ip)
    # A wider cluster network must not matter either: a peer overlapping the underlay is refused.
    peers[ipaddress.ip_network("198.18.0.0/23")] = peers.pop(ipaddress.ip_network(UNDERLAY))
    assert len(n1.reconcile(peers).refused) == 1
    assert ping(n1.netns, "198.18.0.12")
    assert netns_exec(n1.netns, "ip", "route", "get", "198.18.0.12").stdout.split()[2] == "eth0"
