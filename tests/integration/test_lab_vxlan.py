"""A 3-host lab over VXLAN: real etcd, real daemons, real namespaces.

Tests run in file order on one lab; the destructive ones come last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from overlayd.lab import runner
from tests.integration.conftest import Lab, netns_exec, overlayctl, ping_through_restarts
from tests.integration.labfaults import stop_daemon

pytestmark = pytest.mark.integration


def _pod_netns(lab: Lab, pod: str) -> str:
    return next(p["netns"] for p in lab.result["pods"] if p["name"] == pod)


def test_every_pod_reaches_every_other_pod(lab3: Lab) -> None:
    matrix = lab3.result["matrix"]
    pods = [p["name"] for p in lab3.result["pods"]]
    assert len(pods) == 3
    for src in pods:
        for dst in pods:
            if src != dst:
                assert matrix[src][dst]["icmp"], f"ICMP {src} -> {dst}"
                # The probe server answers with its hostname: the pod's own name.
                assert matrix[src][dst]["tcp"] is True, f"TCP {src} -> {dst}"
                assert matrix[src][dst]["tcp_hostname"] == dst, f"TCP {src} -> {dst}"
                # One type per field, so JSON consumers need no special cases.
                assert {k: type(v) for k, v in matrix[src][dst].items()} == {
                    "icmp": bool, "tcp": bool, "tcp_hostname": str}
    subnets = [h["subnet"] for h in lab3.result["hosts"]]
    assert len(set(subnets)) == 3


def test_status_and_hosts_report_the_cluster(lab3: Lab) -> None:
    h1 = lab3.host("h1")
    status = json.loads(overlayctl(h1.socket, "--json", "status", check=True).stdout)
    assert status["node"] == "h1"
    assert status["backend"] == "vxlan"
    assert status["peers"] == 2
    assert status["pods"] >= 1
    assert status["etcd"] == "ok"
    assert 0 < status["lease_ttl_left"] <= runner.LAB_LEASE_TTL
    hosts = json.loads(overlayctl(h1.socket, "--json", "hosts", check=True).stdout)
    assert sorted(h["node"] for h in hosts) == ["h1", "h2", "h3"]
    table = overlayctl(h1.socket, "hosts", check=True).stdout
    assert "NODE" in table and "h3" in table


def test_metrics_are_served_on_localhost(lab3: Lab) -> None:
    fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9469/metrics').read().decode())"
    text = netns_exec(lab3.host("h1").netns, sys.executable, "-c", fetch).stdout
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples["overlayd_peers"]) == 2
    assert float(samples["overlayd_ready"]) == 1
    assert float(samples['overlayd_reconcile_runs_total{result="ok"}']) >= 1
    assert float(samples["overlayd_event_to_kernel_seconds_count"]) >= 0
    assert "overlayd_reconcile_duration_seconds_bucket" in text


def _exec(lab: Lab, host: str, pod: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return overlayctl(lab.host(host).socket, "pod", "exec", pod, "--", *cmd, check=check)


def test_containers_of_one_pod_share_localhost_hostname_and_ipc(lab3: Lab) -> None:
    sock = lab3.host("h1").socket
    for name in ("alpha", "beta"):
        overlayctl(sock, "pod", "add", name, check=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "overlayd.cli.main", "--socket", str(sock), "pod", "exec", "alpha", "--",
         sys.executable, "-c",
         "import socket; s=socket.create_server(('127.0.0.1', 9000)); print('up', flush=True);"
         "c,_=s.accept(); c.sendall(b'same-pod'); c.close()"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "up"
        connect = ("import socket,sys\ntry:\n s=socket.create_connection(('127.0.0.1',9000),timeout=2)\n"
                   " print(s.recv(64).decode())\nexcept OSError as e:\n print('refused')")
        assert _exec(lab3, "h1", "beta", sys.executable, "-c", connect).stdout.strip() == "refused"
        assert _exec(lab3, "h1", "alpha", sys.executable, "-c", connect).stdout.strip() == "same-pod"
    finally:
        server.kill()
        server.wait()

    assert _exec(lab3, "h1", "alpha", "hostname").stdout.strip() == "alpha"
    assert _exec(lab3, "h1", "beta", "hostname").stdout.strip() == "beta"

    shm_id = re.search(r"(\d+)", _exec(lab3, "h1", "alpha", "ipcmk", "-M", "4096").stdout).group(1)
    assert shm_id in _exec(lab3, "h1", "alpha", "ipcs", "-m").stdout
    assert shm_id not in _exec(lab3, "h1", "beta", "ipcs", "-m").stdout.split()
    for name in ("alpha", "beta"):
        overlayctl(sock, "pod", "del", name, check=True)


def _links(netns: str) -> set[str]:
    out = netns_exec(netns, "ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_pod_del_leaves_nothing_behind(lab3: Lab) -> None:
    h2 = lab3.host("h2")
    before_links = _links(h2.netns)
    pod = json.loads(overlayctl(h2.socket, "--json", "pod", "add", "gamma", "--label", "tier=test", check=True).stdout)
    assert pod["labels"] == {"tier": "test"}
    assert pod["node"] == "h2"
    assert f"{pod['netns']}" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert _links(h2.netns) - before_links  # a veth appeared
    ping = netns_exec(pod["netns"], "ping", "-c", "1", "-W", "2", lab3.pod_ip("pod1"), check=False)
    assert ping.returncode == 0, ping.stdout

    overlayctl(h2.socket, "pod", "del", "gamma", check=True)
    assert _links(h2.netns) == before_links
    assert pod["netns"] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mounts = open("/proc/self/mountinfo").read()
    assert "/gamma/" not in mounts
    for path in pod["namespaces"].values():
        assert not os.path.exists(path)
    pods = json.loads(overlayctl(h2.socket, "--json", "pod", "ls", check=True).stdout)
    assert "gamma" not in [p["name"] for p in pods]
    assert overlayctl(h2.socket, "pod", "get", "gamma").returncode == 1


@pytest.mark.parametrize("args", [
    ["pod", "add", "Bad_Name"],
    ["pod", "add", "-leading-dash"],
    ["pod", "add", "x" * 64],
    ["pod", "add", "ok", "--label", "novalue"],
    ["pod", "add", "ok", "--label", "=v"],
    ["pod", "del", "../etc"],
    ["pod", "exec", "pod1"],
    ["no-such-command"],
    ["lab", "up", "--hosts", "0"],
])
def test_bad_cli_input_is_refused_with_exit_2_and_no_change(lab3: Lab, args: list[str]) -> None:
    sock = lab3.host("h1").socket
    before = overlayctl(sock, "--json", "pod", "ls", check=True).stdout
    result = overlayctl(sock, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert overlayctl(sock, "--json", "pod", "ls", check=True).stdout == before


def _kernel_objects(netns: str) -> tuple[str, str, str]:
    routes = netns_exec(netns, "ip", "route", "show", "proto", "213").stdout
    neigh = netns_exec(netns, "ip", "neigh", "show", "dev", "ovl.vx").stdout
    fdb = netns_exec(netns, "bridge", "fdb", "show", "dev", "ovl.vx").stdout
    return routes, neigh, fdb


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_daemon_restart_keeps_subnet_and_pod_traffic(lab3: Lab, sig: int) -> None:
    h1 = lab3.host("h1")
    subnet_before = json.loads(overlayctl(h1.socket, "--json", "status", check=True).stdout)["subnet"]
    objects_before = _kernel_objects(h1.netns)
    # 300 pings at 100/s from pod1 (h1) to pod2 (h2) while both daemons restart.
    received, out = ping_through_restarts(lab3, "pod1", "pod2", ["h1", "h2"], sig)
    assert received == 300, out
    assert json.loads(overlayctl(h1.socket, "--json", "status", check=True).stdout)["subnet"] == subnet_before
    assert _kernel_objects(h1.netns) == objects_before  # nothing duplicated, nothing lost


def test_removed_host_disappears_from_every_peer(lab3: Lab) -> None:
    h3 = lab3.host("h3")
    subnet = json.loads(overlayctl(h3.socket, "--json", "status", check=True).stdout)["subnet"]
    stop_daemon(h3)
    key = f"/overlayd/network/subnets/{subnet.replace('/', '-')}"
    deleted = netns_exec(lab3.plan.underlay_netns, "etcdctl", "--endpoints", lab3.plan.etcd_endpoint,
                         "del", key, check=False)
    assert deleted.stdout.strip() == "1", deleted
    for peer in (lab3.host("h1"), lab3.host("h2")):
        deadline = time.monotonic() + 5
        while True:
            routes, neigh, fdb = _kernel_objects(peer.netns)
            gone = subnet not in routes and str(h3.underlay_ip) not in fdb and \
                subnet.split("/")[0] not in neigh
            if gone or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert gone, (peer.name, routes, neigh, fdb)
