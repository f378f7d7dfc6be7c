"""A 3-host lab on the WireGuard backend, running our userspace engine
(this machine has no WireGuard module): full matrix, `overlayctl peers`, and
daemon restarts that never touch the data path."""

from __future__ import annotations

import base64
import json
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


def test_every_pod_reaches_every_other_pod_over_wireguard(lab_wg: Lab) -> None:
    matrix = lab_wg.result["matrix"]
    for src, row in matrix.items():
        for dst, result in row.items():
            assert result["icmp"], f"ICMP {src} -> {dst}"
            assert result["tcp"] is True and result["tcp_hostname"] == dst, f"TCP {src} -> {dst}"
    assert len(matrix) == 3


def test_interface_routes_and_mtu(lab_wg: Lab) -> None:
    h1 = lab_wg.host("h1")
    link = json.loads(netns_exec(h1.netns, "ip", "-j", "link", "show", "ovl.wg").stdout)[0]
    assert link["mtu"] == 1500 - 80
    routes = json.loads(netns_exec(h1.netns, "ip", "-j", "route", "show", "proto", "213").stdout)
    subnets = {h["subnet"] for h in lab_wg.result["hosts"] if h["name"] != "h1"}
    assert {r["dst"] for r in routes} == subnets
    assert all(r["dev"] == "ovl.wg" for r in routes)


def test_peers_show_handshakes_and_traffic(lab_wg: Lab) -> None:
    peers = json.loads(overlayctl(lab_wg.host("h1").socket, "--json", "peers", check=True).stdout)
    assert sorted(p["node"] for p in peers) == ["h2", "h3"]
    for peer in peers:
        assert peer["latest_handshake"] is not None
        assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
        assert peer["endpoint"].endswith(":51820")


def test_private_key_stays_private(lab_wg: Lab) -> None:
    h1 = lab_wg.host("h1")
    key_file = h1.dir / "state" / "wireguard.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    private = key_file.read_text().strip()
    hosts = overlayctl(h1.socket, "--json", "hosts", check=True).stdout
    assert private not in hosts
    assert private not in h1.log_path.read_text()
    dump = netns_exec(lab_wg.plan.underlay_netns, "etcdctl", "--endpoints", lab_wg.plan.etcd_endpoint,
                      "get", "--prefix", "/overlayd").stdout
    assert private not in dump and "public_key" in dump


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_daemon_restart_does_not_touch_the_tunnel(lab_wg: Lab, sig: int) -> None:
    h1 = lab_wg.host("h1")
    engine_pids = subprocess.run(["pgrep", "-f", f"overlayd.wireguard.cli ovl.wg .*{h1.dir}/wg"],
                                 capture_output=True, text=True).stdout.split()
    assert len(engine_pids) == 1
    received, out = ping_through_restarts(lab_wg, "pod1", "pod2", ["h1", "h2"], sig)
    assert received == 300, out
    # The same engine process carried the traffic throughout: adopted, not replaced.
    assert subprocess.run(["pgrep", "-f", f"overlayd.wireguard.cli ovl.wg .*{h1.dir}/wg"],
                          capture_output=True, text=True).stdout.split() == engine_pids


def _metrics(lab: Lab, host: str) -> dict[str, float]:
    fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9469/metrics').read().decode())"
    text = netns_exec(lab.host(host).netns, sys.executable, "-c", fetch).stdout
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                     if line and not line.startswith("#"))}


def test_engine_drops_reach_the_daemon_metrics(lab_wg: Lab) -> None:
    # Garbage at h2's WireGuard port, from h1: the engine drops and counts it, the daemon exports it.
    send = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "[s.sendto(bytes([1]) + b'x' * 10, ('198.18.0.12', 51820)) for _ in range(3)]")
    netns_exec(lab_wg.host("h1").netns, sys.executable, "-c", send)
    deadline = time.monotonic() + 15  # the daemon polls its engine every 10 s
    while True:
        drops = {k: v for k, v in _metrics(lab_wg, "h2").items() if k.startswith("overlayd_wireguard_drops_total")}
        if sum(drops.values()) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(drops.values()) >= 3, drops


def test_a_new_key_in_etcd_reaches_every_peer_within_a_second(lab_wg: Lab) -> None:
    from overlayd.backend.wgkeys import load_or_create
    from overlayd.wireguard.uapi_server import UapiClient

    h1, h3 = lab_wg.host("h1"), lab_wg.host("h3")
    key_file = h3.dir / "state" / "wireguard.key"
    old_public = load_or_create(key_file).public
    assert old_public in {p.public_key for p in UapiClient("ovl.wg", h1.dir / "wg").get().peers}
    stop_daemon(h3)
    key_file.unlink()  # h3 comes back with a new identity
    runner.start_daemon(lab_wg.plan, h3)
    runner.wait_ready(h3)
    published = next(h["backend"]["public_key"] for h in json.loads(
        overlayctl(h1.socket, "--json", "hosts", check=True).stdout) if h["node"] == "h3")
    new_public = base64.b64decode(published)
    seen_at = None
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        keys = {p.public_key for p in UapiClient("ovl.wg", h1.dir / "wg").get().peers}
        if new_public in keys:
            seen_at = time.monotonic()
            break
        time.sleep(0.02)
    assert seen_at is not None, "h1 did not pick up h3's new key within 1 s"
    assert len(keys) == 2 and old_public not in keys
    result = netns_exec(_pod_netns(lab_wg, "pod1"), "ping", "-c", "3", "-i", "0.2", "-W", "2",
                        lab_wg.pod_ip("pod3"), check=False)
    assert result.returncode == 0, result.stdout
