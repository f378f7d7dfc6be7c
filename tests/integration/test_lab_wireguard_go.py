"""The WireGuard backend on Debian's stock wireguard-go (implementation = "wireguard-go"):
each host's wireguard-go has its UAPI socket in that host's own socket dir, runs in a
session of its own and is adopted, not replaced, when its daemon restarts."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from overlayd.wireguard.uapi_server import UapiClient
from tests.integration.conftest import Lab, netns_exec, ping_through_restarts

pytestmark = pytest.mark.integration


def _wireguard_go_pid(lab: Lab, host: str) -> int:
    """The wireguard-go process inside the host's namespace."""
    ns = os.stat(f"/run/netns/{lab.host(host).netns}")
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry / "comm").read_text().strip() != "wireguard-go":
                continue
            st = (entry / "ns" / "net").stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
            found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def _udp_socket_inodes(lab: Lab, host: str) -> set[int]:
    """The inodes of the UDP sockets bound to the host's WireGuard port: a rebind changes them."""
    port = UapiClient("ovl.wg", lab.host(host).dir / "wg").get().listen_port
    pid = _wireguard_go_pid(lab, host)
    inodes = set()
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    assert inodes
    return inodes


def test_each_host_runs_wireguard_go_with_its_own_socket(lab_wggo: Lab) -> None:
    for host in lab_wggo.plan.hosts:
        pid = _wireguard_go_pid(lab_wggo, host.name)
        assert os.getsid(pid) == pid  # a session of its own: it outlives the daemon
        assert (host.dir / "wg" / "ovl.wg.sock").is_socket()
        link = json.loads(netns_exec(host.netns, "ip", "-j", "link", "show", "ovl.wg").stdout)[0]
        assert link["mtu"] == 1500 - 80
    log = lab_wggo.host("h1").log_path.read_text()
    assert "started wireguard-go on ovl.wg" in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restarted_daemon_adopts_the_running_wireguard_go(lab_wggo: Lab, sig: int) -> None:
    before = {h: _wireguard_go_pid(lab_wggo, h) for h in ("h1", "h2")}
    sockets = {h: _udp_socket_inodes(lab_wggo, h) for h in ("h1", "h2")}
    received, out = ping_through_restarts(lab_wggo, "pod1", "pod2", ["h1", "h2"], sig)
    assert received == 300, out
    assert {h: _wireguard_go_pid(lab_wggo, h) for h in ("h1", "h2")} == before  # the same processes
    # Not rebound: wireguard-go drops what arrives while it reopens its sockets.
    assert {h: _udp_socket_inodes(lab_wggo, h) for h in ("h1", "h2")} == sockets
    assert "adopted running wireguard-go WireGuard engine on ovl.wg" in lab_wggo.host("h1").log_path.read_text()
