"""Pods resolve every name through cluster DNS on their gateway (issues 10 and 11).

dnsmasq is the judge: it serves `web.lab.test` on h1's underlay address. h1's daemon is
given a resolv.conf that lists a systemd-resolved-style loopback stub first (nothing
answers there in the lab) and then dnsmasq, with a search domain. Pods must get the
cluster resolver with the cluster's search domains before the host's, and resolve an
outside name through it (the daemon forwards to the host's resolvers, past the dead stub)
through `ip netns exec` and `overlayctl pod exec`; pods made before the daemon restarted
get it too; `lab down` leaves no /etc/netns entry behind.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest

from overlayd.api.client import ControlClient
from overlayd.lab import runner
from overlayd.lab.plan import make_plan
from overlayd.lab.topology import ETC_NETNS_DIR
from tests.integration.conftest import Lab, netns_exec, running_lab, unique_name
from tests.integration.labfaults import stop_daemon

pytestmark = pytest.mark.integration

ANSWER = "10.1.2.3"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running_lab(tmp_path_factory.mktemp("dns"), 2, "vxlan")


@pytest.fixture(scope="module")
def dnsmasq(lab: Lab) -> Iterator[str]:
    h1 = lab.host("h1")
    address = str(h1.underlay_ip)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", h1.netns, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
         "--bind-interfaces", f"--listen-address={address}", f"--address=/web.lab.test/{ANSWER}",
         f"--pid-file={h1.dir / 'dnsmasq.pid'}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def restart_with_resolv_conf(lab: Lab, text: str) -> None:
    h1 = lab.host("h1")
    resolv = h1.dir / "host-resolv.conf"
    resolv.write_text(text)
    stop_daemon(h1)
    runner.start_daemon(lab.plan, h1, extra_config=f'\n[dns]\nresolv_conf = "{resolv}"\n'
                                                     f'upstream_resolv_conf = "{h1.dir / "absent"}"\n')
    runner.wait_ready(h1)


def resolve(netns: str, name: str) -> str:
    return netns_exec(netns, "getent", "hosts", name, check=False).stdout.split(" ")[0]


def test_pods_ask_cluster_dns_which_forwards_other_names_to_the_hosts_resolvers(lab: Lab, dnsmasq: str) -> None:
    h1 = lab.host("h1")
    restart_with_resolv_conf(lab, f"nameserver 127.0.0.53\nnameserver {dnsmasq}\nsearch lab.test\n")
    gateway = ip_network(ControlClient(h1.socket).call("status")["subnet"])[1]
    ControlClient(h1.socket).call("pod.add", name="fresh", labels={})
    for pod in ("fresh", "pod1"):  # made after the restart, and before it
        netns = h1.pod_netns_prefix + pod
        written = (ETC_NETNS_DIR / netns / "resolv.conf").read_text()
        assert [line for line in written.splitlines() if not line.startswith("#")] == [
            f"nameserver {gateway}", "search svc.cluster.local pod.cluster.local lab.test"]
        assert resolve(netns, "web") == ANSWER  # not a cluster name: the host's search domain, forwarded
        assert resolve(netns, "pod1.pod.cluster.local") == lab.pod_ip("pod1")  # a cluster name, from memory
    cli = subprocess.run([sys.executable, "-m", "overlayd.cli.main", "--socket", str(h1.socket), "pod", "exec",
                          "fresh", "--", "getent", "hosts", "web.lab.test"], capture_output=True, text=True,
                         timeout=30)
    assert cli.returncode == 0 and cli.stdout.split(" ")[0] == ANSWER, cli.stderr
    ControlClient(h1.socket).call("pod.del", name="fresh")
    assert not (ETC_NETNS_DIR / (h1.pod_netns_prefix + "fresh")).exists()


def test_a_host_without_resolvers_is_reported(lab: Lab) -> None:
    h1 = lab.host("h1")
    restart_with_resolv_conf(lab, "search lab.test\n")
    report = ControlClient(h1.socket).call("status")
    assert report["health"] == "degraded" and any(p.startswith("dns:") for p in report["problems"]), report


def test_lab_down_leaves_no_pod_resolv_conf(tmp_path: Path) -> None:
    plan = make_plan(unique_name(), 1, "vxlan", tmp_path)
    try:
        result = runner.up(plan)
        netns = result["pods"][0]["netns"]
        assert (ETC_NETNS_DIR / netns / "resolv.conf").exists()
    finally:
        runner.down(plan.name, tmp_path)
    assert not (ETC_NETNS_DIR / netns).exists()
