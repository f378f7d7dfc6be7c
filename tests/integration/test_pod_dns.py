"""Pods resolve names with the host's resolvers they can reach (issue 10, part 4).

dnsmasq is the judge: it serves `web.lab.test` on h1's underlay address. h1's daemon is
given a resolv.conf that lists a systemd-resolved-style loopback stub first (unreachable
from a pod's own network namespace) and then dnsmasq, with a search domain. Pods must get
only the reachable one, keep the search domain, and resolve through `ip netns exec` and
through `overlayctl pod exec`; pods made before the daemon restarted get it too; `lab down`
leaves no /etc/netns entry behind.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
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


def test_pods_get_the_reachable_resolvers_and_resolve_names(lab: Lab, dnsmasq: str) -> None:
    h1 = lab.host("h1")
    restart_with_resolv_conf(lab, f"nameserver 127.0.0.53\nnameserver {dnsmasq}\nsearch lab.test\n")
    ControlClient(h1.socket).call("pod.add", name="fresh", labels={})
    for pod in ("fresh", "pod1"):  # made after the restart, and before it
        netns = h1.pod_netns_prefix + pod
        written = (ETC_NETNS_DIR / netns / "resolv.conf").read_text()
        assert [line for line in written.splitlines() if not line.startswith("#")] == [
            f"nameserver {dnsmasq}", "search lab.test"]
        assert resolve(netns, "web") == ANSWER  # the search domain at work
    cli = subprocess.run([sys.executable, "-m", "overlayd.cli.main", "--socket", str(h1.socket), "pod", "exec",
                          "fresh", "--", "getent", "hosts", "web.lab.test"], capture_output=True, text=True,
                         timeout=30)
    assert cli.returncode == 0 and cli.stdout.split(" ")[0] == ANSWER, cli.stderr
    ControlClient(h1.socket).call("pod.del", name="fresh")
    assert not (ETC_NETNS_DIR / (h1.pod_netns_prefix + "fresh")).exists()


def test_loopback_only_resolvers_are_reported(lab: Lab) -> None:
    h1 = lab.host("h1")
    restart_with_resolv_conf(lab, "nameserver 127.0.0.53\n")
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
