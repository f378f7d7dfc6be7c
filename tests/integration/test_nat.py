"""Egress NAT and published ports on a real 2-host lab (issue 10, items 2 and 3).

The lab's outside namespace (198.19.1.1) is a simulated internet: it routes back to the
underlay only, so a pod gets answers from it only when its traffic leaves masqueraded,
and a capture there shows which source address arrived.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.api.client import ControlClient
from overlayd.lab import runner, topology
from overlayd.lab.plan import OUTSIDE_IP, LabHost
from overlayd.nat.ports import parse_publish
from tests.integration.conftest import Lab, running_lab, netns_exec, overlayctl
from tests.integration.labfaults import stop_daemon
from tests.integration.labtools import PingFlow, components, status

pytestmark = pytest.mark.integration

ECHO = str(Path(__file__).with_name("nat_echo.py"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running_lab(tmp_path_factory.mktemp("lab"), 2, "vxlan")


def restart(lab: Lab, host: LabHost, *flags: str) -> dict:
    stop_daemon(host, signal.SIGTERM)
    runner.start_daemon(lab.plan, host, *flags)
    return runner.wait_ready(host)


def table(host: LabHost, *args: str) -> str:
    return netns_exec(host.netns, "nft", *args, "list", "table", "inet", "overlayd").stdout


def ping(netns: str, target: str) -> bool:
    return netns_exec(netns, "ping", "-c", "1", "-W", "2", target, check=False).returncode == 0


def captured_sources(lab: Lab, pod_netns: list[str]) -> set[str]:
    """Ping the outside from each pod while tcpdump listens there; the sources of the echo requests."""
    dump = subprocess.Popen(["ip", "netns", "exec", lab.plan.outside_netns, "tcpdump", "-l", "-n", "-i", "eth0",
                             "-c", str(len(pod_netns)), "icmp[icmptype] == icmp-echo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert dump.stderr is not None
        while "listening on" not in (line := dump.stderr.readline()):
            assert line, "tcpdump did not start"
        for netns in pod_netns:
            assert ping(netns, str(OUTSIDE_IP)), f"{netns} cannot reach the outside"
        out, _ = dump.communicate(timeout=10)
    finally:
        dump.kill()
    return set(re.findall(r"IP (\S+) > ", out))


def ask(netns: str, host: str, port: int, protocol: str) -> str:
    """The source address the echo server behind host:port saw, or 'error: ...'."""
    result = netns_exec(netns, sys.executable, ECHO, "ask", host, str(port), protocol, check=False)
    return result.stdout.strip()


# --- egress ------------------------------------------------------------------------------

def test_every_pod_reaches_the_outside_with_its_hosts_address(lab: Lab) -> None:
    sources = captured_sources(lab, [lab.pod_netns("pod1"), lab.pod_netns("pod2")])
    assert sources == {str(h.underlay_ip) for h in lab.plan.hosts}


def test_pod_to_pod_traffic_keeps_the_pod_address(lab: Lab) -> None:
    server = subprocess.Popen(["ip", "netns", "exec", lab.pod_netns("pod1"), sys.executable, ECHO, "serve", "7000"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        assert ask(lab.pod_netns("pod2"), lab.pod_ip("pod1"), 7000, "tcp") == lab.pod_ip("pod2")
        assert ask(lab.pod_netns("pod2"), lab.pod_ip("pod1"), 7000, "udp") == lab.pod_ip("pod2")
    finally:
        server.kill()
        server.wait()


def test_ip_masq_can_be_switched_off(lab: Lab) -> None:
    h2 = lab.host("h2")
    try:
        restart(lab, h2, "--no-ip-masq")
        assert "masquerade" in table(h2) and "ip daddr != 224.0.0.0/4 masquerade" not in table(h2)
        assert not ping(lab.pod_netns("pod2"), str(OUTSIDE_IP))
        assert ping(lab.pod_netns("pod2"), lab.pod_ip("pod1"))
    finally:
        restart(lab, h2)
    assert ping(lab.pod_netns("pod2"), str(OUTSIDE_IP))


def test_pods_work_on_a_host_whose_forward_policy_is_drop(lab: Lab) -> None:
    """Docker's iptables FORWARD chain: policy drop, in a table not ours."""
    h1 = lab.host("h1")
    netns_exec(h1.netns, "iptables-nft", "-P", "FORWARD", "DROP")
    try:
        restart(lab, h1)
        listing = netns_exec(h1.netns, "iptables-nft-save").stdout
        assert "-A FORWARD -s 10.244.0.0/16 -m comment" in listing, listing  # iptables still reads the chain
        assert ping(lab.pod_netns("pod1"), str(OUTSIDE_IP))
        assert ping(lab.pod_netns("pod1"), lab.pod_ip("pod2"))
        assert ping(lab.pod_netns("pod2"), lab.pod_ip("pod1"))
        assert status(h1)["health"] == "ok"
        # Policy accept again: our accept rules there are strays now, and go at the next convergence.
        netns_exec(h1.netns, "iptables-nft", "-P", "FORWARD", "ACCEPT")
        restart(lab, h1)
        assert "overlayd" not in netns_exec(h1.netns, "iptables-nft-save").stdout
    finally:
        netns_exec(h1.netns, "nft", "delete", "table", "ip", "filter", check=False)


def test_restart_adopts_the_table_and_loses_no_egress_packet(lab: Lab) -> None:
    h1 = lab.host("h1")
    before = table(h1, "-a")  # with handles: a rewrite would renumber them
    with PingFlow(lab.pod_netns("pod1"), str(OUTSIDE_IP)) as flow:
        restart(lab, h1)
    assert flow.result is not None and flow.result.lost == 0, flow.result.summary()
    assert table(h1, "-a") == before
    print(f"FIGURE nat restart: {flow.result.summary()}")


def test_strays_in_our_table_are_removed_atomically_under_traffic(lab: Lab) -> None:
    h1 = lab.host("h1")
    want = table(h1)
    netns_exec(h1.netns, "nft", "add", "rule", "inet", "overlayd", "postrouting", "ip", "daddr", "192.0.2.9", "drop")
    netns_exec(h1.netns, "nft", "add", "chain", "inet", "overlayd", "stray")
    netns_exec(h1.netns, "nft", "flush", "chain", "inet", "overlayd", "prerouting")
    assert table(h1) != want
    with PingFlow(lab.pod_netns("pod1"), str(OUTSIDE_IP)) as flow:
        restart(lab, h1)
    assert table(h1) == want
    assert flow.result is not None and flow.result.lost == 0, flow.result.summary()


def test_a_table_of_that_name_not_ours_is_left_alone(lab: Lab) -> None:
    h2 = lab.host("h2")
    netns_exec(h2.netns, "nft", "add", "table", "inet", "theirs")
    netns_exec(h2.netns, "nft", "add", "chain", "inet", "theirs", "keep")
    try:
        restart(lab, h2, "--nft-table", "theirs")
        assert "nat" in components(status(h2))
        assert netns_exec(h2.netns, "nft", "list", "table", "inet", "theirs").stdout.count("chain") == 1
        # A pod with published ports is still made, and says its ports are not in place.
        added = ControlClient(h2.socket).call("pod.add", name="blocked", labels={},
                                              ports=[parse_publish("9090:80/tcp").to_dict()])
        assert any("published ports not in place" in w for w in added.get("warnings", [])), added
        ControlClient(h2.socket).call("pod.del", name="blocked")
    finally:
        restart(lab, h2)
        netns_exec(h2.netns, "nft", "delete", "table", "inet", "theirs", check=False)
    assert "nat" not in components(status(h2))


# --- published ports ---------------------------------------------------------------------

@pytest.fixture
def web(lab: Lab) -> Iterator[str]:
    """Pod web on h1 publishing 8080->80/tcp, 5353->53/udp and 198.18.0.11:8081->80/tcp, serving both."""
    h1 = lab.host("h1")
    result = overlayctl(h1.socket, "--json", "pod", "add", "web", "--publish", "8080:80/tcp",
                        "--publish", "5353:53/udp", "--publish", f"{h1.underlay_ip}:8081:80/tcp")
    assert result.returncode == 0, result.stderr
    netns = ControlClient(h1.socket).call("pod.get", name="web")["netns"]
    servers = [subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, ECHO, "serve", port],
                                stdout=subprocess.PIPE, text=True) for port in ("80", "53")]
    try:
        for server in servers:
            assert server.stdout is not None and server.stdout.readline().strip() == "up"
        yield netns
    finally:
        for server in servers:
            server.kill()
            server.wait()
        overlayctl(h1.socket, "pod", "del", "web")


def test_published_port_from_other_hosts_the_host_itself_and_its_pods(lab: Lab, web: str) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    h1_ip, h2_ip, gateway = str(h1.underlay_ip), str(h2.underlay_ip), status(h1)["subnet"].replace(".0/", ".1/")
    gateway = gateway.split("/")[0]
    for protocol, port in (("tcp", 8080), ("udp", 5353)):
        assert ask(h2.netns, h1_ip, port, protocol) == h2_ip  # another host
        assert ask(lab.pod_netns("pod2"), h1_ip, port, protocol) == h2_ip  # a pod of another host (masqueraded)
        assert ask(h1.netns, h1_ip, port, protocol) == h1_ip  # the host itself, by its address
        assert ask(h1.netns, "127.0.0.1", port, protocol) == gateway  # the host itself over localhost
        assert ask(lab.pod_netns("pod1"), h1_ip, port, protocol) == gateway  # hairpin: a pod of the same host
    # Bound to the host address: reachable there, not on localhost.
    assert ask(h2.netns, h1_ip, 8081, "tcp") == h2_ip
    assert ask(h1.netns, "127.0.0.1", 8081, "tcp").startswith("error")
    # route_localnet is on for the bridge: pods still cannot open connections to the host's loopback.
    assert ask(lab.pod_netns("pod1"), "127.0.0.1", 8080, "tcp").startswith("error")


def test_conflicting_host_port_is_a_usage_error(lab: Lab, web: str) -> None:
    h1 = lab.host("h1")
    result = overlayctl(h1.socket, "pod", "add", "other", "--publish", "8080:9000/tcp")
    assert result.returncode == 2 and "already published by pod web" in result.stderr, result
    result = overlayctl(h1.socket, "pod", "add", "other", "--publish", f"{h1.underlay_ip}:5353:1/udp")
    assert result.returncode == 2 and "already published by pod web" in result.stderr, result
    result = overlayctl(h1.socket, "pod", "add", "other", "--publish", "8080:80/sctp")
    assert result.returncode == 2 and "tcp or udp" in result.stderr, result
    assert "other" not in {p["name"] for p in ControlClient(h1.socket).call("pod.list")}
    # The same port on another protocol, or another host address, is free.
    result = overlayctl(h1.socket, "pod", "add", "other", "--publish", "8080:80/udp")
    assert result.returncode == 0, result.stderr
    overlayctl(h1.socket, "pod", "del", "other")


def test_published_ports_survive_a_restart_and_go_with_the_pod(lab: Lab, web: str) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    restart(lab, h1)
    assert ControlClient(h1.socket).call("pod.get", name="web")["ports"] == [
        "8080:80/tcp", f"{h1.underlay_ip}:8081:80/tcp", "5353:53/udp"]
    assert ask(h2.netns, str(h1.underlay_ip), 8080, "tcp") == str(h2.underlay_ip)
    overlayctl(h1.socket, "pod", "del", "web", check=True)
    assert "dnat ip to" not in table(h1)
    assert ask(h2.netns, str(h1.underlay_ip), 8080, "tcp").startswith("error")


def test_lab_down_leaves_no_namespace(tmp_path: Path) -> None:
    """The outside namespace is the lab's too; our table lives in host namespaces, which go."""
    lab_run = running_lab(tmp_path, 1, "vxlan")
    small = next(lab_run)  # lab up
    try:
        assert topology.netns_exists(small.plan.outside_netns)
        assert "managed by overlayd" in table(small.plan.hosts[0])
    finally:
        lab_run.close()  # lab down
    assert not any(topology.netns_exists(n) for n in small.plan.netns_names)
