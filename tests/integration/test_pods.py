"""Pods in the real kernel: namespaces, veth into a bridge, sharing inside a pod, cleanup, restart.

Each test builds a throwaway "host" network namespace holding a bridge with the
gateway address, runs a PodManager/PodService against it (the host side through
a netlink socket opened inside that namespace) and tears everything down.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from overlayd.errors import KernelError
from overlayd.pods import links, nsfiles
from overlayd.pods.config import PodNamespaces, PodNetworkConfig
from overlayd.pods.manager import PodManager
from overlayd.pods.names import veth_name
from overlayd.pods.records import PodInfo
from overlayd.pods.rtnl import Rtnl
from overlayd.pods.service import PodService
from overlayd.pods.store import PodStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SUBNET = ip_network("10.77.0.0/24")
GATEWAY = ip_address("10.77.0.1")
MTU = 1400


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=20)


@dataclass
class PodNet:
    tag: str
    host: str  # netns name of the simulated host
    config: PodNetworkConfig
    state: Path
    manager: PodManager
    service: PodService

    def restart(self) -> None:
        """What a daemon restart does: drop manager and service, build new ones from config and state."""
        self.service.close()  # closes the manager too
        self.manager = new_manager(self.host, self.config)
        self.service = PodService(self.manager, PodStore(self.state), SUBNET, "node1")

    def host_link(self, name: str) -> dict | None:
        proc = sh("ip", "-n", self.host, "-j", "-d", "link", "show", "dev", name, check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None

    def wait_link_gone(self, name: str, timeout: float = 10.0) -> None:
        """The kernel frees a deleted pod's veth asynchronously, with its namespace."""
        deadline = time.monotonic() + timeout
        while self.host_link(name) is not None:
            assert time.monotonic() < deadline, f"{name} still exists after {timeout} s"
            time.sleep(0.02)


def new_manager(host: str, config: PodNetworkConfig) -> PodManager:
    return nsfiles.call_in_netns(Path("/run/netns") / host, lambda: PodManager(config))


@pytest.fixture
def podnet(tmp_path: Path) -> Iterator[PodNet]:
    tag = f"t{secrets.token_hex(3)}"
    host = f"{tag}h"
    bridge = f"{tag}br"
    sh("ip", "netns", "add", host)
    net = None
    try:
        sh("ip", "-n", host, "link", "add", bridge, "type", "bridge")
        sh("ip", "-n", host, "addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", bridge)
        sh("ip", "-n", host, "link", "set", bridge, "up")
        config = PodNetworkConfig(bridge=bridge, gateway=GATEWAY, prefixlen=SUBNET.prefixlen, link_prefix=tag,
                                  netns_prefix=f"{tag}-", pod_run_dir=tmp_path / "pods", mtu=MTU)
        manager = new_manager(host, config)
        state = tmp_path / "pods.json"
        net = PodNet(tag, host, config, state, manager, PodService(manager, PodStore(state), SUBNET, "node1"))
        yield net
    finally:
        if net is not None:
            net.service.close()
            with new_manager(host, net.config) as manager:
                for name in manager.list_kernel_pods():
                    manager.delete(name)
        sh("ip", "netns", "del", host, check=False)


def in_pod(ns: PodNamespaces | PodInfo, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in a pod through the exec helper (what `overlayctl pod exec` does)."""
    paths = ns.namespaces if isinstance(ns, PodInfo) else ns
    proc = subprocess.run(pod_argv(paths, *cmd), capture_output=True, text=True, timeout=20,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} in pod failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


def pod_argv(ns: PodNamespaces, *cmd: str) -> list[str]:
    return [sys.executable, "-m", "overlayd.pods.exec", str(ns.net), str(ns.uts), str(ns.ipc), "--", *cmd]


def spawn_in_pod(info: PodInfo, *cmd: str) -> subprocess.Popen[str]:
    return subprocess.Popen(pod_argv(info.namespaces, *cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def ping(src: PodInfo, dst: object) -> bool:
    return in_pod(src, "ping", "-c", "1", "-W", "2", str(dst), check=False).returncode == 0


def mounts_under(*paths: Path) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if any(p == str(path) or p.startswith(f"{path}/") for path in paths)]


def test_pods_reach_each_other_and_the_gateway(podnet: PodNet) -> None:
    a = podnet.service.add("a", {"app": "web"})
    b = podnet.service.add("b", {})
    assert (a.ip, b.ip) == (ip_address("10.77.0.2"), ip_address("10.77.0.3"))
    assert ping(a, b.ip) and ping(b, a.ip) and ping(a, GATEWAY)

    eth0 = json.loads(in_pod(a, "ip", "-j", "addr", "show", "dev", "eth0").stdout)[0]
    assert eth0["mtu"] == MTU and "UP" in eth0["flags"]
    assert [(x["local"], x["prefixlen"]) for x in eth0["addr_info"] if x["family"] == "inet"] == [("10.77.0.2", 24)]
    routes = json.loads(in_pod(a, "ip", "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [(str(GATEWAY), "eth0")]
    lo = json.loads(in_pod(a, "ip", "-j", "link", "show", "dev", "lo").stdout)[0]
    assert "UP" in lo["flags"]

    host_end = podnet.host_link(a.namespaces.host_veth)
    assert host_end is not None and host_end["master"] == podnet.config.bridge and host_end["mtu"] == MTU
    assert a.namespaces.host_veth == veth_name(podnet.tag, "a") and len(a.namespaces.host_veth) <= 15
    # The net namespace is where `ip netns` looks for it.
    assert sh("ip", "netns", "exec", a.netns, "ip", "-br", "addr", "show", "dev", "eth0").stdout.count("10.77.0.2/24")


def test_hostname_is_the_pod_name(podnet: PodNet) -> None:
    web = podnet.service.add("web-1", {})
    assert in_pod(web, "hostname").stdout.strip() == "web-1"
    assert in_pod(web, "python3", "-c", "import socket; print(socket.gethostname())").stdout.strip() == "web-1"
    assert os.uname().nodename != "web-1"


def test_loopback_is_shared_inside_a_pod_only(podnet: PodNet) -> None:
    a = podnet.service.add("a", {})
    b = podnet.service.add("b", {})
    server = spawn_in_pod(a, "python3", "-c", (
        "import socket\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 5555)); s.listen()\n"
        "print('ready', flush=True)\n"
        "c, _ = s.accept(); c.sendall(b'hello from a'); c.close()\n"))
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = ("import socket, sys\n"
                  "try:\n"
                  "    print(socket.create_connection(('127.0.0.1', 5555), timeout=3).recv(100).decode())\n"
                  "except ConnectionRefusedError:\n"
                  "    sys.exit(3)\n")
        assert in_pod(b, "python3", "-c", client, check=False).returncode == 3
        assert in_pod(a, "python3", "-c", client).stdout.strip() == "hello from a"
        assert server.wait(timeout=10) == 0
    finally:
        server.kill()
        server.wait()


def shm_segments(*cmd: str) -> dict[str, str]:
    """shmid -> key from `ipcs -m` (rows: key shmid owner perms bytes nattch status)."""
    rows = subprocess.run([*cmd, "ipcs", "-m"], capture_output=True, text=True, check=True, timeout=20,
                          env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.splitlines()
    return {row.split()[1]: row.split()[0] for row in rows if row.startswith("0x")}


def test_sysv_shared_memory_is_shared_inside_a_pod_only(podnet: PodNet) -> None:
    a = podnet.service.add("a", {})
    b = podnet.service.add("b", {})
    shmid = in_pod(a, "ipcmk", "-M", "4096").stdout.strip().rsplit(":", 1)[1].strip()
    in_a = shm_segments(*pod_argv(a.namespaces))
    assert list(in_a) == [shmid]  # another process in pod a sees the segment
    assert shm_segments(*pod_argv(b.namespaces)) == {}
    assert in_a[shmid] not in shm_segments().values()  # nor does the host
    in_pod(a, "ipcrm", "-m", shmid)
    assert shm_segments(*pod_argv(a.namespaces)) == {}


def test_delete_leaves_nothing_behind(podnet: PodNet) -> None:
    a = podnet.service.add("a", {})
    ns = a.namespaces
    assert len(mounts_under(ns.net, ns.pod_dir)) == 3
    podnet.service.delete("a")
    assert not ns.net.exists() and not ns.pod_dir.exists()
    assert mounts_under(ns.net, ns.pod_dir) == []
    assert a.netns not in sh("ip", "netns", "list").stdout
    assert podnet.service.pool.allocations == {}
    # At once the host end is cut off; the kernel frees it with the namespace.
    host_end = podnet.host_link(ns.host_veth)
    assert host_end is None or ("master" not in host_end and "UP" not in host_end["flags"])
    podnet.wait_link_gone(ns.host_veth)
    assert podnet.manager.list_kernel_pods() == set()


def test_delete_while_a_process_still_runs_in_the_pod(podnet: PodNet) -> None:
    a = podnet.service.add("a", {})
    b = podnet.service.add("b", {})
    sleeper = spawn_in_pod(a, "sh", "-c", "echo inside; exec sleep 60")
    try:
        assert sleeper.stdout is not None and sleeper.stdout.readline().strip() == "inside"
        assert ping(b, a.ip)
        podnet.service.delete("a")
        time.sleep(0.2)
        # The sleeper keeps the namespace (and so the veth) alive, but the pod is off the bridge.
        host_end = podnet.host_link(a.namespaces.host_veth)
        assert host_end is not None and "master" not in host_end and "UP" not in host_end["flags"]
        assert not ping(b, a.ip)
        report = podnet.service.reconcile()
        assert report.stray_links == [a.namespaces.host_veth]
        assert podnet.host_link(a.namespaces.host_veth) is None
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_failed_setup_is_rolled_back(podnet: PodNet, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise KernelError("injected failure after the veth exists")

    monkeypatch.setattr(links, "replace_default_route", fail)
    with pytest.raises(KernelError, match="injected"):
        podnet.service.add("a", {})
    ns = podnet.manager.paths("a")
    assert not ns.net.exists() and not ns.pod_dir.exists() and mounts_under(ns.net, ns.pod_dir) == []
    assert podnet.service.list() == [] and podnet.service.pool.allocations == {}
    podnet.wait_link_gone(ns.host_veth)
    monkeypatch.undo()
    assert podnet.service.add("a", {}).ip == ip_address("10.77.0.3")  # round robin moved on


def test_missing_bridge_fails_cleanly(podnet: PodNet) -> None:
    sh("ip", "-n", podnet.host, "link", "del", podnet.config.bridge)
    with pytest.raises(KernelError, match="bridge .* does not exist"):
        podnet.service.add("a", {})
    ns = podnet.manager.paths("a")
    assert not ns.net.exists() and not ns.pod_dir.exists() and mounts_under(ns.net, ns.pod_dir) == []
    assert podnet.service.pool.allocations == {}


def test_half_created_pods_can_be_deleted(podnet: PodNet) -> None:
    # Files without namespaces, as a crash during create could leave them.
    ns = podnet.manager.paths("half")
    ns.pod_dir.mkdir(parents=True)
    nsfiles.create_placeholder(ns.net)
    nsfiles.create_placeholder(ns.uts)
    assert podnet.manager.list_kernel_pods() == {"half"} and not podnet.manager.exists("half")
    podnet.manager.delete("half")
    assert not ns.net.exists() and not ns.pod_dir.exists()
    # Namespaces without a veth.
    full = podnet.manager.create("full", ip_address("10.77.0.50"))
    with nsfiles.call_in_netns(Path("/run/netns") / podnet.host, Rtnl) as host:
        assert links.delete_link(host, full.host_veth)
    podnet.manager.delete("full")
    podnet.manager.delete("full")  # twice is fine
    assert podnet.manager.list_kernel_pods() == set() and mounts_under(full.net, full.pod_dir) == []


def test_restart_reconciles_store_and_kernel(podnet: PodNet) -> None:
    a = podnet.service.add("a", {"app": "a"})
    b = podnet.service.add("b", {})
    c = podnet.service.add("c", {})
    # While the daemon is down: b's namespaces vanish, a loses its veth,
    # a pod nobody stored appears, and a stray veth with our prefix.
    podnet.manager.delete("b")
    with nsfiles.call_in_netns(Path("/run/netns") / podnet.host, Rtnl) as host:
        assert links.delete_link(host, a.namespaces.host_veth)
    podnet.manager.create("x", ip_address("10.77.0.60"))
    stray = f"{podnet.tag}deadbeef"
    sh("ip", "-n", podnet.host, "link", "add", stray, "type", "veth", "peer", "name", f"{podnet.tag}peer")

    podnet.restart()
    assert [p.name for p in podnet.service.list()] == ["a", "b", "c"]
    report = podnet.service.reconcile()
    # x is a complete pod the store forgot: it is taken back with the address it has, never deleted.
    assert (report.kept, report.dropped, report.adopted, report.removed, report.failed) == (
        ["a", "c"], ["b"], ["x"], [], {})
    assert stray in report.stray_links
    assert set(report.stray_links) <= {stray, b.namespaces.host_veth}
    assert podnet.host_link(stray) is None
    assert [p.name for p in podnet.service.list()] == ["a", "c", "x"]
    assert podnet.service.get("a") == a and podnet.service.pool.lookup("b") is None
    x = podnet.service.get("x")
    assert x is not None and x.ip == ip_address("10.77.0.60")
    assert podnet.manager.list_kernel_pods() == {"a", "c", "x"}
    assert ping(a, c.ip) and ping(c, a.ip) and ping(a, x.ip)

    podnet.restart()  # the reconciled state was saved
    assert [p.name for p in podnet.service.list()] == ["a", "c", "x"]
    assert podnet.service.add("d", {}).ip == ip_address("10.77.0.5")


def test_reconcile_repairs_a_drifted_pod(podnet: PodNet) -> None:
    a = podnet.service.add("a", {})
    b = podnet.service.add("b", {})
    veth = a.namespaces.host_veth
    sh("ip", "-n", podnet.host, "link", "set", veth, "nomaster", "mtu", "1300")
    in_pod(a, "ip", "addr", "add", "10.77.0.99/24", "dev", "eth0")
    in_pod(a, "ip", "route", "del", "default")
    assert not ping(b, a.ip)
    assert podnet.service.reconcile().kept == ["a", "b"]
    host_end = podnet.host_link(veth)
    assert host_end is not None and host_end["master"] == podnet.config.bridge and host_end["mtu"] == MTU
    eth0 = json.loads(in_pod(a, "ip", "-j", "addr", "show", "dev", "eth0").stdout)[0]
    assert [x["local"] for x in eth0["addr_info"] if x["family"] == "inet"] == ["10.77.0.2"]
    assert ping(b, a.ip) and ping(a, GATEWAY)
