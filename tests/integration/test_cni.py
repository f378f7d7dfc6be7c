"""overlayd-cni, driven as a container runtime drives it, in a 2-host VXLAN lab.

The reference plugins Debian ships (portmap, bandwidth, tuning, firewall) are
chained after overlayd-cni: they parse our result with the CNI project's Go
library, so a malformed result fails them. Tests run in file order on one lab,
once with the plugin `overlayctl cni install` builds (the C front,
overlayd/cni/shim.c) and once with the Python client alone (`--plugin
python`, which is also the C front's fallback).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.api.client import ControlClient
from overlayd.lab import runner
from overlayd.lab.plan import LabHost
from overlayd.lab.topology import ETC_NETNS_DIR
from overlayd.pods.dns import cni_dns
from tests.integration.cni_runtime import REFERENCE_PLUGINS, Container, PluginFailed, Runtime, add, check, delete
from tests.integration.conftest import Lab, netns_exec, overlayctl, running_lab, unique_name
from tests.integration.labfaults import stop_daemon
from tests.integration.labtools import wait_for

pytestmark = pytest.mark.integration

HOST_PORT = 18080
PROBE_PORT = 8080


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running_lab(tmp_path_factory.mktemp("lab"), 2, "vxlan")


@pytest.fixture(scope="module", params=["c", "python"])
def installed(request: pytest.FixtureRequest, lab: Lab, tmp_path_factory: pytest.TempPathFactory,
              ) -> tuple[Path, dict[str, Any]]:
    """`overlayctl cni install` into temp dirs, pointed at h1's daemon: (bin dir, network list)."""
    base = tmp_path_factory.mktemp("cni")
    bin_dir, conf_dir = base / "bin", base / "net.d"
    out = overlayctl(lab.host("h1").socket, "--json", "cni", "install", "--bin-dir", str(bin_dir),
                     "--conf-dir", str(conf_dir), "--plugin", request.param, check=True).stdout
    assert json.loads(out)["plugin"] == str(bin_dir / "overlayd-cni")
    assert json.loads(out)["kind"] == request.param
    is_elf = (bin_dir / "overlayd-cni").read_bytes()[:4] == b"\x7fELF"
    assert is_elf == (request.param == "c")
    netlist = json.loads((conf_dir / "10-overlayd.conflist").read_text())
    # The sysctl tuning applies, so a test can see it ran.
    next(p for p in netlist["plugins"] if p["type"] == "tuning")["sysctl"] = {
        "net.ipv4.conf.eth0.accept_redirects": "0"}
    return bin_dir, netlist


@pytest.fixture(scope="module")
def runtime(lab: Lab, installed: tuple[Path, dict[str, Any]]) -> Runtime:
    return Runtime(host_netns=lab.host("h1").netns, cni_path=[installed[0], REFERENCE_PLUGINS])


@pytest.fixture
def netlist(installed: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return json.loads(json.dumps(installed[1]))


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.remove()


def _new(containers: list[Container]) -> Container:
    c = Container().create()
    containers.append(c)
    return c


def _ours(netlist: dict[str, Any]) -> dict[str, Any]:
    """The list with overlayd-cni alone."""
    return netlist | {"plugins": netlist["plugins"][:1]}


def _attachments(host: LabHost) -> list[dict[str, Any]]:
    return ControlClient(host.socket).call("cni.list")


def _link_exists(netns: str, name: str) -> bool:
    return subprocess.run(["ip", "-n", netns, "link", "show", name], capture_output=True).returncode == 0


def _wait_gone(netns: str, name: str) -> None:
    wait_for(f"{name} in {netns} to go", lambda: not _link_exists(netns, name), 5)


def _reaches(from_netns: str, ip: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", from_netns, "ping", "-c", "1", "-W", "2", ip],
                          capture_output=True).returncode == 0


def _serve_probe(c: Container) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(["ip", "netns", "exec", c.netns_name, sys.executable, "-m", "overlayd.lab.probe",
                               "serve", str(PROBE_PORT)])
    wait_for("probe server", lambda: f":{PROBE_PORT} " in netns_exec(c.netns_name, "ss", "-ltn").stdout, 10)
    return server


def _tcp_answer(from_netns: str, ip: str, port: int) -> str:
    code = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); "
            "print(s.recv(100).decode())")
    return netns_exec(from_netns, sys.executable, "-c", code, ip, str(port)).stdout.strip()


def test_chained_add_gives_a_spec_result_the_reference_plugins_accept(
        lab: Lab, runtime: Runtime, netlist: dict[str, Any], containers: list[Container]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    c = _new(containers)
    caps = {"portMappings": [{"hostPort": HOST_PORT, "containerPort": PROBE_PORT, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                          "egressRate": 100_000_000, "egressBurst": 1_000_000}}
    result = add(runtime, netlist, c, caps)

    assert result["cniVersion"] == "1.0.0"
    host_if, ctr_if = result["interfaces"][0], result["interfaces"][1]
    assert ctr_if["name"] == "eth0" and ctr_if["sandbox"] == c.netns and "sandbox" not in host_if
    (ip,) = result["ips"]
    address, gateway = ip["address"].split("/")[0], ip["gateway"]
    subnet = ipaddress.ip_network(next(h["subnet"] for h in lab.result["hosts"] if h["name"] == "h1"))
    assert ip["interface"] == 1 and ipaddress.ip_address(address) in subnet
    assert gateway == str(next(subnet.hosts()))
    assert {"dst": "0.0.0.0/0", "gw": gateway} in result["routes"]
    # The resolvers the host's pods get (the conflist names none), as the spec's `dns`.
    pod_resolv = (ETC_NETNS_DIR / lab.pod_netns("pod1") / "resolv.conf").read_text()
    assert result["dns"] == cni_dns(pod_resolv)
    # The kernel has what the result says: eth0 with the address and default route, the MTU, the host veth.
    shown = json.loads(subprocess.run(["ip", "-n", c.netns_name, "-j", "addr", "show", "eth0"],
                                      capture_output=True, text=True, check=True).stdout)[0]
    assert shown["address"] == ctr_if["mac"] and shown["mtu"] == 1450
    assert address in [a["local"] for a in shown["addr_info"]]
    assert f"default via {gateway} dev eth0" in subprocess.run(
        ["ip", "-n", c.netns_name, "route"], capture_output=True, text=True).stdout
    assert _link_exists(h1.netns, host_if["name"])
    # The chained plugins did their part: tuning's sysctl, bandwidth's qdisc, firewall's rules, portmap's DNAT.
    assert netns_exec(c.netns_name, "sysctl", "-n", "net.ipv4.conf.eth0.accept_redirects").stdout.strip() == "0"
    assert "tbf" in netns_exec(h1.netns, "tc", "qdisc", "show", "dev", host_if["name"]).stdout
    rules = netns_exec(h1.netns, "iptables-save").stdout
    assert "CNI-FORWARD" in rules and address in rules and f"--dport {HOST_PORT}" in rules
    # portmap 1.1.1 (Debian 12) fails CHECK for any IPv4-only container: it looks for ip6tables rules it never
    # made (containernetworking/plugins#819), so it sits this one out.
    check(runtime, netlist, c, caps, skip=frozenset({"portmap"}))

    # Reached from the other lab host: its pod over the overlay, its host through portmap's port on h1.
    server = _serve_probe(c)
    try:
        assert _reaches(lab.pod_netns("pod2"), address)
        expected = socket.gethostname()  # `ip netns exec` keeps the UTS namespace
        assert _tcp_answer(lab.pod_netns("pod2"), address, PROBE_PORT) == expected
        assert _tcp_answer(h2.netns, str(h1.underlay_ip), HOST_PORT) == expected
    finally:
        server.terminate()
        server.wait()

    # Listed by `pod ls` (container id, netns path, interface), and counted in metrics.
    table = overlayctl(h1.socket, "pod", "ls", check=True).stdout
    assert c.id[:12] in table and c.netns in table and "eth0" in table
    listed = [p for p in json.loads(overlayctl(h1.socket, "--json", "pod", "ls", check=True).stdout)
              if p.get("kind") == "cni"]
    assert [(p["container_id"], p["netns"], p["ifname"], p["ip"]) for p in listed] == [(c.id, c.netns, "eth0",
                                                                                         address)]
    fetch = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9469/metrics').read().decode())"
    metrics = netns_exec(h1.netns, sys.executable, "-c", fetch).stdout
    assert re.search(r"^overlayd_cni_attachments 1(\.0)?$", metrics, re.M), metrics

    delete(runtime, netlist, c, caps)
    assert _attachments(h1) == []
    _wait_gone(h1.netns, host_if["name"])  # the daemon deletes the pair after answering (CniWiring.detach)
    _wait_gone(c.netns_name, "eth0")
    assert f"--dport {HOST_PORT}" not in netns_exec(h1.netns, "iptables-save").stdout


def test_check_detects_a_deleted_address_and_a_deleted_route(
        lab: Lab, runtime: Runtime, netlist: dict[str, Any], containers: list[Container]) -> None:
    ours = _ours(netlist)
    c = _new(containers)
    result = add(runtime, ours, c)
    check(runtime, ours, c)
    address = result["ips"][0]["address"]
    subprocess.run(["ip", "-n", c.netns_name, "addr", "del", address, "dev", "eth0"], check=True)
    with pytest.raises(PluginFailed) as failed:
        check(runtime, ours, c)
    assert failed.value.returncode != 0 and failed.value.error["code"] == 101
    assert "lacks its address" in failed.value.error["msg"]
    subprocess.run(["ip", "-n", c.netns_name, "addr", "add", address, "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", c.netns_name, "route", "replace", "default", "via", result["ips"][0]["gateway"]],
                   check=True)
    check(runtime, ours, c)
    subprocess.run(["ip", "-n", c.netns_name, "route", "del", "default"], check=True)
    with pytest.raises(PluginFailed) as failed:
        check(runtime, ours, c)
    assert failed.value.error["code"] == 101 and "default route" in failed.value.error["msg"]
    delete(runtime, ours, c)


def test_del_is_idempotent_and_fine_for_unknown_containers_and_missing_netns(
        lab: Lab, runtime: Runtime, netlist: dict[str, Any], containers: list[Container]) -> None:
    h1 = lab.host("h1")
    ours = _ours(netlist)
    c = _new(containers)
    result = add(runtime, ours, c)
    delete(runtime, ours, c)
    delete(runtime, ours, c)  # again
    delete(runtime, ours, Container())  # never added, netns never made
    gone = _new(containers)
    result = add(runtime, ours, gone)
    gone.remove()  # the runtime lost the sandbox before DEL
    delete(runtime, ours, gone)
    assert _attachments(h1) == []
    _wait_gone(h1.netns, result["interfaces"][0]["name"])


def test_gc_removes_attachments_not_listed_as_valid(
        lab: Lab, runtime: Runtime, netlist: dict[str, Any], containers: list[Container]) -> None:
    h1 = lab.host("h1")
    ours = _ours(netlist) | {"cniVersion": "1.1.0"}
    keep, stale = _new(containers), _new(containers)
    add(runtime, ours, keep)
    stale_veth = add(runtime, ours, stale)["interfaces"][0]["name"]
    gc_conf = {"cniVersion": "1.1.0", "name": ours["name"], **ours["plugins"][0],
               "cni.dev/valid-attachments": [{"containerID": keep.id, "ifname": "eth0"}]}
    assert runtime.call("overlayd-cni", "GC", gc_conf) is None
    assert [a["container_id"] for a in _attachments(h1)] == [keep.id]
    _wait_gone(h1.netns, stale_veth)
    _wait_gone(stale.netns_name, "eth0")
    check(runtime, ours, keep)
    delete(runtime, ours, keep)


def test_status_and_version(lab: Lab, runtime: Runtime, netlist: dict[str, Any]) -> None:
    conf = {"cniVersion": "1.1.0", "name": netlist["name"], **netlist["plugins"][0]}
    assert runtime.call("overlayd-cni", "STATUS", conf) is None
    down = runtime.exec_plugin("overlayd-cni", "STATUS", conf | {"socket": "/run/overlayd-none.sock"})
    assert down.returncode == 1 and json.loads(down.stdout)["code"] == 50
    version = runtime.call("overlayd-cni", "VERSION", {"cniVersion": "1.0.0"})
    assert version == {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}


@pytest.mark.parametrize(("conf", "env", "code"), [
    (b'{"cniVersion": "0.9.9", "name": "overlayd", "type": "overlayd-cni"}', {}, 1),
    (b'{"cniVersion": "1.0.0", "name": "overlayd", "type": "overlayd-cni"', {}, 6),
    (b'[1, 2]', {}, 6),
    (b'{"cniVersion": "1.0.0", "name": "bad name!", "type": "overlayd-cni"}', {}, 7),
    (b'{"cniVersion": "1.0.0", "name": "overlayd", "dns": "x"}', {}, 7),
    (b'{"cniVersion": "1.0.0", "name": "overlayd"}', {"CNI_CONTAINERID": ""}, 4),
    (b'{"cniVersion": "1.0.0", "name": "overlayd"}', {"CNI_IFNAME": "a/b"}, 4),
    (b'{"cniVersion": "1.0.0", "name": "overlayd"}', {"CNI_NETNS": "/proc/1/ns/net"}, 4),
    (b'{"cniVersion": "1.0.0", "name": "overlayd", "socket": "/run/overlayd-none.sock"}', {}, 11),
], ids=["unknown-version", "truncated-json", "not-an-object", "bad-name", "bad-dns", "no-container-id",
        "bad-ifname", "host-netns", "no-daemon"])
def test_bad_input_gets_the_spec_error_json(lab: Lab, runtime: Runtime, installed: tuple[Path, dict[str, Any]],
                                            conf: bytes, env: dict[str, str], code: int) -> None:
    if b'"socket"' not in conf:  # point at h1's daemon
        doc = json.loads(conf) if conf.startswith(b"{") and conf.endswith(b"}") else None
        if isinstance(doc, dict):
            conf = json.dumps(doc | {"socket": str(lab.host("h1").socket)}).encode()
    c = Container()
    env = {"CNI_CONTAINERID": c.id, "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0"} | env
    proc = runtime.exec_plugin("overlayd-cni", "ADD", conf, container_id=env["CNI_CONTAINERID"],
                               netns=env["CNI_NETNS"], ifname=env["CNI_IFNAME"])
    assert proc.returncode == 1, proc
    error = json.loads(proc.stdout)
    assert error["code"] == code and error["msg"] and "Traceback" not in proc.stderr + proc.stdout
    assert error["cniVersion"]


def test_a_daemon_restart_keeps_every_attachment(
        lab: Lab, runtime: Runtime, netlist: dict[str, Any], containers: list[Container]) -> None:
    h1 = lab.host("h1")
    ours = _ours(netlist)
    first, second = _new(containers), _new(containers)
    add(runtime, ours, first)
    add(runtime, ours, second)
    address = first.result["ips"][0]["address"].split("/")[0]
    index = json.loads(subprocess.run(["ip", "-n", first.netns_name, "-j", "link", "show", "eth0"],
                                      capture_output=True, text=True, check=True).stdout)[0]["ifindex"]
    before = _attachments(h1)
    stop_daemon(h1, 15)
    # No daemon behind the socket: the spec's "try again later" (11), and "not available" (50) for STATUS.
    waiting = Container()
    down = runtime.exec_plugin("overlayd-cni", "ADD", ours["plugins"][0] | {"cniVersion": "1.0.0", "name": "x"},
                               container_id=waiting.id, netns=first.netns, ifname="eth1")
    assert down.returncode == 1 and json.loads(down.stdout)["code"] == 11, down
    down = runtime.exec_plugin("overlayd-cni", "STATUS", ours["plugins"][0] | {"cniVersion": "1.1.0", "name": "x"})
    assert down.returncode == 1 and json.loads(down.stdout)["code"] == 50, down
    runner.start_daemon(lab.plan, h1)
    runner.wait_ready(h1)
    assert _attachments(h1) == before
    # Not recreated: the very same interface, still reachable from the other host, CHECK passes.
    after = json.loads(subprocess.run(["ip", "-n", first.netns_name, "-j", "link", "show", "eth0"],
                                      capture_output=True, text=True, check=True).stdout)[0]["ifindex"]
    assert after == index
    assert _reaches(lab.pod_netns("pod2"), address)
    check(runtime, ours, first)
    check(runtime, ours, second)
    # Their addresses stay theirs: a new attachment and a new pod get others.
    third = _new(containers)
    taken = {first.result["ips"][0]["address"], second.result["ips"][0]["address"]}
    assert add(runtime, ours, third)["ips"][0]["address"] not in taken
    pod = ControlClient(h1.socket).call("pod.add", name=unique_name("p"), labels={})
    assert pod["ip"] not in {a.split("/")[0] for a in taken}
    ControlClient(h1.socket).call("pod.del", name=pod["name"])
    # A killed daemon (no clean stop) keeps them too.
    stop_daemon(h1, 9)
    runner.start_daemon(lab.plan, h1)
    runner.wait_ready(h1)
    assert len(_attachments(h1)) == 3
    for c in (first, second, third):
        delete(runtime, ours, c)


def test_start_finishes_a_cut_short_del_and_leaves_unrecorded_attached_links_alone(
        lab: Lab, runtime: Runtime, netlist: dict[str, Any], containers: list[Container]) -> None:
    h1 = lab.host("h1")
    ours = _ours(netlist)
    deleted, unknown = _new(containers), _new(containers)
    deleted_veth = add(runtime, ours, deleted)["interfaces"][0]["name"]
    unknown_veth = add(runtime, ours, unknown)["interfaces"][0]["name"]
    stop_daemon(h1, 9)
    # As a crash leaves them: one DEL answered (record gone, link detached, not yet deleted); one link with its
    # record lost (a damaged store), still attached and carrying traffic.
    store = h1.dir / "state" / "cni.json"  # the snapshot, and the journal of changes since
    assert b"add" in store.with_suffix(".journal").read_bytes()
    store.write_text(json.dumps({"version": 1, "attachments": []}))
    store.with_suffix(".journal").write_bytes(b"")
    netns_exec(h1.netns, "ip", "link", "set", deleted_veth, "down", "nomaster")
    runner.start_daemon(lab.plan, h1)
    runner.wait_ready(h1)
    _wait_gone(h1.netns, deleted_veth)
    assert _link_exists(h1.netns, unknown_veth)
    assert _reaches(lab.pod_netns("pod2"), unknown.result["ips"][0]["address"].split("/")[0])
    netns_exec(h1.netns, "ip", "link", "del", unknown_veth)


# --- the C front's own cases: whatever it cannot do goes to the Python client ---------------

@pytest.fixture(scope="module")
def c_front_of_h2(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """A runtime whose overlayd-cni was built for h2's socket (the conflist it wrote names h2)."""
    base = tmp_path_factory.mktemp("cni-h2")
    overlayctl(lab.host("h2").socket, "cni", "install", "--bin-dir", str(base / "bin"), "--conf-dir",
               str(base / "net.d"), "--plugin", "c", check=True)
    return Runtime(host_netns=lab.host("h1").netns, cni_path=[base / "bin", REFERENCE_PLUGINS])


def test_a_config_naming_another_socket_reaches_that_daemon(
        lab: Lab, c_front_of_h2: Runtime, containers: list[Container]) -> None:
    """Built for h2, given a config for h1: h2's daemon says so, untouched, and the Python client asks h1."""
    h1, h2 = lab.host("h1"), lab.host("h2")
    conf = {"cniVersion": "1.0.0", "name": "overlayd", "type": "overlayd-cni", "socket": str(h1.socket)}
    c = _new(containers)
    result = c_front_of_h2.call("overlayd-cni", "ADD", conf, container_id=c.id, netns=c.netns, ifname="eth0")
    assert [a["container_id"] for a in _attachments(h1)] == [c.id] and _attachments(h2) == []
    subnet = ipaddress.ip_network(next(h["subnet"] for h in lab.result["hosts"] if h["name"] == "h1"))
    assert ipaddress.ip_interface(result["ips"][0]["address"]).ip in subnet
    assert c_front_of_h2.call("overlayd-cni", "DEL", conf, container_id=c.id, netns=c.netns, ifname="eth0") is None
    assert _attachments(h1) == []


def test_version_and_an_oversized_config_through_the_c_front(lab: Lab, c_front_of_h2: Runtime) -> None:
    version = c_front_of_h2.call("overlayd-cni", "VERSION", {"cniVersion": "1.0.0"})
    assert version == {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}
    # More than the C front reads into one request: the Python client gets all of it (a truncated config
    # would be a decode error, 6) and says it is too large for the control socket (7), as on its own.
    conf = {"cniVersion": "1.0.0", "name": "overlayd", "type": "overlayd-cni",
            "socket": str(lab.host("h2").socket), "padding": "x" * 40_000}
    c = Container()
    proc = c_front_of_h2.exec_plugin("overlayd-cni", "ADD", conf, container_id=c.id, netns=c.netns, ifname="eth0")
    error = json.loads(proc.stdout)
    assert proc.returncode == 1 and error["code"] == 7 and "too large" in error["msg"], proc
    # Just under that, the C front carries it (the daemon parses it: here, a netns that does not exist).
    conf["padding"] = "x" * 30_000
    proc = c_front_of_h2.exec_plugin("overlayd-cni", "ADD", conf, container_id=c.id, netns=c.netns, ifname="eth0")
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 4, proc
