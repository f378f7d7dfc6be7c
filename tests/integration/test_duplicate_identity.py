"""Two records with one tunnel identity (issue 7, item 8): the older claimant keeps it.

A host cloned from another's disk carries its host.json, so it announces the same VTEP
MAC (VXLAN) or public key (WireGuard) under a subnet of its own. Refusing both records
would cut the original host off from every peer; the newcomer's record is the younger
key in etcd (create revision), so it alone is refused and reported.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.integration.conftest import Lab, netns_exec, overlayctl
from tests.integration.labtools import etcdctl

pytestmark = pytest.mark.integration

PREFIX = "/overlayd/network"
CLONE_IP = "198.18.0.99"  # nobody's address: the clone's traffic must go nowhere
DEADLINE = 30.0


def _metric(lab: Lab, host: str, name: str) -> float | None:
    fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9469/metrics').read().decode())"
    text = netns_exec(lab.host(host).netns, sys.executable, "-c", fetch).stdout
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return float(samples[name]) if name in samples else None


def _free_subnet(lab: Lab) -> str:
    taken = {h["subnet"] for h in lab.result["hosts"]}
    return next(s for s in (f"10.244.{i}.0/24" for i in range(250, 0, -1)) if s not in taken)


def _pod_netns(lab: Lab, pod: str) -> str:
    return next(p["netns"] for p in lab.result["pods"] if p["name"] == pod)


@pytest.mark.parametrize("lab_fixture", ["lab3", "lab_wg"])
def test_a_clone_of_a_host_is_refused_and_the_original_stays_reachable(
    lab_fixture: str, request: pytest.FixtureRequest
) -> None:
    lab: Lab = request.getfixturevalue(lab_fixture)
    hosts = json.loads(overlayctl(lab.host("h1").socket, "--json", "hosts", check=True).stdout)
    h1 = next(h for h in hosts if h["node"] == "h1")
    subnet = _free_subnet(lab)
    key = f"{PREFIX}/subnets/{subnet.replace('/', '-')}"
    clone = {"node": "h1clone", "public_ip": CLONE_IP, "backend": h1["backend"]}
    etcdctl(lab.plan, "put", key, json.dumps(clone))
    try:
        deadline = time.monotonic() + DEADLINE
        while _metric(lab, "h2", "overlayd_peers_refused") != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(lab, "h2", "overlayd_peers_refused") == 1
        assert _metric(lab, "h2", "overlayd_peers") == 2  # h1 and h3; the clone is not programmed
        route = netns_exec(lab.host("h2").netns, "ip", "route", "show", subnet).stdout
        assert route.strip() == "", route
        ping = netns_exec(_pod_netns(lab, "pod2"), "ping", "-c", "3", "-W", "2", lab.pod_ip("pod1"), check=False)
        assert ping.returncode == 0, ping.stdout
        log = lab.host("h2").log_path.read_text()
        assert "h1clone" in log or subnet in log
    finally:
        etcdctl(lab.plan, "del", key)
