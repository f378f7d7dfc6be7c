"""Services on a 3-host lab: the pod registry in etcd, VIPs programmed with nftables on every
host, endpoints following pods and hosts, rejection without endpoints.

Backends run tests/integration/whoami.py, which answers "<pod> <client address>", so each
connection says which pod the VIP led to.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.lab import runner
from tests.integration.conftest import Lab, netns_exec, overlayctl, running_lab
from tests.integration.labfaults import cut_etcd, heal_etcd, stop_daemon
from tests.integration.labtools import PREFIX, etcdctl, status, wait_for

WHOAMI = str(Path(__file__).with_name("whoami.py"))
PORT = 8080


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running_lab(tmp_path_factory.mktemp("lab"), 3, "vxlan")


def _pod(lab: Lab, host: str, name: str, *labels: str) -> dict:
    args = [arg for label in labels for arg in ("--label", label)]
    return json.loads(overlayctl(lab.host(host).socket, "-o", "json", "pod", "add", name, *args, check=True).stdout)


def _serve(pod: dict) -> subprocess.Popen[str]:
    server = subprocess.Popen(["ip", "netns", "exec", pod["netns"], sys.executable, WHOAMI, "serve", str(PORT),
                               pod["name"]], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "up"
    return server


def _ask(netns: str, address: str, port: int, count: int, protocol: str = "tcp") -> list[str]:
    out = netns_exec(netns, sys.executable, WHOAMI, "ask", address, str(port), protocol, str(count), timeout=120)
    return out.stdout.splitlines()


def _service(lab: Lab, *args: str) -> dict:
    return json.loads(overlayctl(lab.host("h1").socket, "-o", "json", "service", *args, check=True).stdout)


def _programmed(lab: Lab, host: str) -> str:
    return netns_exec(lab.host(host).netns, "nft", "list", "table", "inet", "overlayd").stdout


@pytest.fixture(scope="module")
def web(lab: Lab) -> Iterator[dict]:
    """Backends web-1..3 (one per host), clients c-1..3 (one per host), service `web`."""
    pods = {f"web-{i}": _pod(lab, f"h{i}", f"web-{i}", "app=web") for i in (1, 2, 3)}
    pods |= {f"c-{i}": _pod(lab, f"h{i}", f"c-{i}", "role=client") for i in (1, 2, 3)}
    servers = [_serve(pods[f"web-{i}"]) for i in (1, 2, 3)]
    try:
        service = _service(lab, "add", "web", "--selector", "app=web", "--port", f"80:{PORT}/tcp",
                           "--port", f"53:{PORT}/udp")
        for host in ("h1", "h2", "h3"):
            wait_for(f"{host} programs 3 endpoints", lambda h=host: _programmed(lab, h).count(f". {PORT}") >= 6, 10)
        yield {"pods": pods, "vip": service["vip"]}
    finally:
        for server in servers:
            server.kill()
            server.wait()


def test_pod_records_are_in_etcd_on_the_hosts_lease(lab: Lab, web: dict) -> None:
    doc = json.loads(etcdctl(lab.plan, "get", "--prefix", f"{PREFIX}/pods/h2/", "-w", "json"))
    values = {json.loads(base64.b64decode(kv["value"]))["name"]: kv for kv in doc["kvs"]}
    assert {"web-2", "c-2"} <= set(values)
    assert json.loads(base64.b64decode(values["web-2"]["value"]))["labels"] == {"app": "web"}
    assert all(kv.get("lease") for kv in values.values()), "pod records must hang on the host's lease"


def test_service_get_shows_vip_ports_and_endpoints_on_every_host(lab: Lab, web: dict) -> None:
    for host in ("h1", "h2", "h3"):
        row = json.loads(overlayctl(lab.host(host).socket, "-o", "json", "service", "get", "web", check=True).stdout)
        assert row["vip"] == web["vip"]
        assert {(e["pod"], e["node"]) for e in row["endpoints"]} == {("web-1", "h1"), ("web-2", "h2"),
                                                                     ("web-3", "h3")}
        assert {(p["port"], p["protocol"]) for p in row["ports"]} == {(80, "tcp"), (53, "udp")}


def test_cluster_dns_gives_the_vip_and_pod_addresses(lab: Lab, web: dict) -> None:
    netns = web["pods"]["c-2"]["netns"]
    for name in ("web", "web.svc.cluster.local"):
        assert netns_exec(netns, "getent", "hosts", name).stdout.split()[0] == web["vip"]
    assert netns_exec(netns, "getent", "hosts", "web-3.pod.cluster.local").stdout.split()[0] == \
        web["pods"]["web-3"]["ip"]
    assert netns_exec(netns, "getent", "hosts", "nothing.svc.cluster.local", check=False).returncode == 2


def test_60_connections_by_name_from_each_host_reach_pods_on_several_hosts(lab: Lab, web: dict) -> None:
    for i in (1, 2, 3):
        answers = _ask(web["pods"][f"c-{i}"]["netns"], "web", 80, 60)  # `web`: the search list finds the service
        assert not [a for a in answers if a.startswith("error")], answers
        backends = Counter(a.split()[0] for a in answers)
        assert len(backends) >= 2, backends
        # The client's own address arrives: no NAT between pods of different hosts.
        client_ip = web["pods"][f"c-{i}"]["ip"]
        remote = [a for a in answers if a.split()[0] != f"web-{i}"]
        assert remote and all(a.split()[1] == client_ip for a in remote)


def test_udp_service_port(lab: Lab, web: dict) -> None:
    answers = _ask(web["pods"]["c-1"]["netns"], web["vip"], 53, 20, "udp")
    assert not [a for a in answers if a.startswith("error")], answers
    assert len({a.split()[0] for a in answers}) >= 2


def test_hairpin_and_the_host_itself_reach_the_service(lab: Lab, web: dict) -> None:
    answers = _ask(web["pods"]["web-1"]["netns"], web["vip"], 80, 30)  # a backend reaching its own service
    assert not [a for a in answers if a.startswith("error")], answers
    assert "web-1" in {a.split()[0] for a in answers}, "hairpin: the backend itself must be reachable"
    answers = _ask(lab.host("h2").netns, web["vip"], 80, 30)  # the host, not a pod
    assert not [a for a in answers if a.startswith("error")], answers
    assert len({a.split()[0] for a in answers}) >= 2


def test_a_service_without_endpoints_refuses_at_once(lab: Lab, web: dict) -> None:
    empty = _service(lab, "add", "nobody", "--selector", "app=none", "--port", "80")
    try:
        wait_for("h2 knows the service", lambda: empty["vip"] in _programmed(lab, "h2"), 10)
        start = time.monotonic()
        answers = _ask(web["pods"]["c-2"]["netns"], empty["vip"], 80, 3)
        elapsed = time.monotonic() - start
        assert all("refused" in a for a in answers), answers
        assert elapsed < 1.5, f"rejected, not black-holed: took {elapsed:.2f}s"
        answers = _ask(lab.host("h2").netns, empty["vip"], 80, 1)
        assert "refused" in answers[0], answers
    finally:
        overlayctl(lab.host("h1").socket, "service", "del", "nobody", check=True)


def test_endpoints_follow_pods_and_established_connections_survive(lab: Lab, web: dict) -> None:
    client = web["pods"]["c-3"]["netns"]
    # A long-lived connection through the VIP, kept open across the rule changes below.
    keeper = subprocess.Popen(["ip", "netns", "exec", client, sys.executable, "-c",
                               "import socket,sys\n"
                               f"s=socket.create_connection(('{web['vip']}', 80), timeout=5)\n"
                               "print(s.recv(100).decode().strip(), flush=True)\n"
                               "sys.stdin.readline()\n"
                               "s.sendall(b'still here\\n'); print(s.recv(100).decode().strip(), flush=True)\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert keeper.stdout is not None and keeper.stdin is not None
    first = keeper.stdout.readline().split()[0]
    added = _pod(lab, "h2", "web-4", "app=web")
    server = _serve(added)
    try:
        wait_for("web-4 becomes an endpoint everywhere",
                 lambda: all(added["ip"] in _programmed(lab, h) for h in ("h1", "h2", "h3")), 5)
        answers = _ask(client, web["vip"], 80, 60)
        assert "web-4" in {a.split()[0] for a in answers}
        overlayctl(lab.host("h2").socket, "pod", "del", "web-4", check=True)
        wait_for("web-4's record leaves etcd", lambda: "web-4" not in etcdctl(
            lab.plan, "get", "--prefix", "--keys-only", f"{PREFIX}/pods/h2/"), 5, interval=0.02)
        gone = time.monotonic()
        wait_for("web-4 leaves every host's rules",
                 lambda: all(added["ip"] not in _programmed(lab, h) for h in ("h1", "h2", "h3")), 5, interval=0.02)
        assert time.monotonic() - gone < 1.0
        assert "web-4" not in {a.split()[0] for a in _ask(client, web["vip"], 80, 30)}
        keeper.stdin.write("\n")
        keeper.stdin.flush()
        assert keeper.stdout.readline().strip() == "still here", f"the connection to {first} broke"
    finally:
        keeper.kill()
        server.kill()
        server.wait()


def test_service_rules_survive_a_restart_without_etcd(lab: Lab, web: dict) -> None:
    """The daemon restarts while etcd is unreachable: VIPs keep working (services.json cache)."""
    host = lab.host("h1")
    stop_daemon(host, signal.SIGKILL)
    before = _programmed(lab, "h1")
    cut_etcd(lab.plan, [host])
    try:
        runner.start_daemon(lab.plan, host)
        runner.wait_ready(host)
        assert _programmed(lab, "h1") == before
        answers = _ask(web["pods"]["c-1"]["netns"], web["vip"], 80, 10)
        assert not [a for a in answers if a.startswith("error")], answers
    finally:
        heal_etcd(lab.plan)
    wait_for("h1 follows the registry again", lambda: "registry" not in " ".join(status(host)["problems"]), 30)


def test_a_dead_hosts_endpoints_go_with_its_lease(lab: Lab, web: dict) -> None:
    host = lab.host("h3")
    stop_daemon(host, signal.SIGKILL)
    lease = json.loads(etcdctl(lab.plan, "get", "--prefix", f"{PREFIX}/pods/h3/", "-w", "json"))["kvs"][0]["lease"]
    try:
        etcdctl(lab.plan, "lease", "revoke", f"{lease:x}")  # what its expiry does, without the wait
        web3 = web["pods"]["web-3"]["ip"]
        wait_for("h1 and h2 drop web-3", lambda: all(web3 not in _programmed(lab, h) for h in ("h1", "h2")), 5)
        assert "web-3" not in {a.split()[0] for a in _ask(web["pods"]["c-1"]["netns"], web["vip"], 80, 30)}
    finally:
        runner.start_daemon(lab.plan, host)
        runner.wait_ready(host)
    wait_for("h3 publishes its pods again under its new lease",
             lambda: web["pods"]["web-3"]["ip"] in _programmed(lab, "h1"), 30)


def test_service_cli_errors_are_one_line(lab: Lab) -> None:
    socket = lab.host("h1").socket
    for args, needle in [(("service", "add", "Bad_Name", "--selector", "a=b", "--port", "80"), "invalid"),
                         (("service", "add", "x", "--selector", "a", "--port", "80"), "KEY=VALUE"),
                         (("service", "add", "x", "--selector", "a=b", "--port", "99999"), "port"),
                         (("service", "add", "web", "--selector", "a=b", "--port", "80"), "exists"),
                         (("service", "get", "missing"), "no service"),
                         (("service", "del", "missing"), "no service")]:
        result = overlayctl(socket, *args)
        assert result.returncode != 0
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
