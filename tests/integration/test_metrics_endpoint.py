"""The metrics port of real daemons (issue 9, metrics and health): every declared family is
served with process metrics beside them, /healthz and /readyz answer, and the counters that
used to sit at 0 move: control socket refusals, and records dropped by their real reason."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from overlayd import __version__
from overlayd.api.protocol import MAX_REQUEST_BYTES
from overlayd.metrics import DaemonMetrics
from tests.integration.conftest import Lab, running_lab, netns_exec, overlayctl
from tests.integration.labtools import etcdctl

pytestmark = pytest.mark.integration

PREFIX = "/overlayd/network"
DEADLINE = 30.0
# Prints the status line and the body of GET http://127.0.0.1:9469<path> (urllib raises on 503).
FETCH = """
import sys, http.client
c = http.client.HTTPConnection("127.0.0.1", 9469, timeout=10)
c.request("GET", sys.argv[1])
r = c.getresponse()
print(r.status)
sys.stdout.write(r.read().decode())
"""


@pytest.fixture(scope="module")
def lab2(tmp_path_factory: pytest.TempPathFactory):
    yield from running_lab(tmp_path_factory.mktemp("lab"), 2, "vxlan")


def get(lab: Lab, host: str, path: str) -> tuple[int, str]:
    out = netns_exec(lab.host(host).netns, sys.executable, "-c", FETCH, path).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def scrape(lab: Lab, host: str) -> dict[str, dict[tuple[str, tuple], float]]:
    status, body = get(lab, host, "/metrics")
    assert status == 200
    return {f.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}
            for f in text_string_to_metric_families(body)}


def sample(lab: Lab, host: str, family: str, name: str, **labels: str) -> float | None:
    return scrape(lab, host).get(family, {}).get((name, tuple(sorted(labels.items()))))


def wait_for(what: str, check, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


def test_every_declared_family_is_served_with_process_metrics(lab2: Lab) -> None:
    declared = {f.name for f in DaemonMetrics().registry.collect()}  # the VXLAN backend: no WireGuard drops
    families = scrape(lab2, "h1")
    assert declared <= set(families), f"missing: {sorted(declared - set(families))}"
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= set(families)
    assert families["overlayd_build_info"] == {("overlayd_build_info", (("version", __version__),)): 1}
    status = json.loads(overlayctl(lab2.host("h1").socket, "--json", "status", check=True).stdout)
    assert status["pods"] >= 1
    assert families["overlayd_pods"] == {("overlayd_pods", ()): status["pods"]}
    assert families["overlayd_peers"] == {("overlayd_peers", ()): 1}


def test_healthz_and_readyz_answer_on_the_metrics_port(lab2: Lab) -> None:
    assert get(lab2, "h1", "/healthz") == (200, "ok\n")
    assert get(lab2, "h1", "/readyz") == (200, "ok\n")


def _send_raw(path, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-request: the answer is still waiting to be read
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


def test_refused_control_requests_are_counted_by_reason(lab2: Lab) -> None:
    sock = lab2.host("h1").socket

    def refusals(reason: str) -> float | None:
        return sample(lab2, "h1", "overlayd_control_refusals", "overlayd_control_refusals_total", reason=reason)

    before = {reason: refusals(reason) for reason in ("oversized", "malformed", "uid", "timeout")}
    assert None not in before.values()
    reply = _send_raw(sock, b'{"cmd": "status", "args": {"x": "' + b"a" * (MAX_REQUEST_BYTES + 10) + b'"}}\n')
    assert reply["ok"] is False and "larger than" in reply["error"]["message"]
    for bad in (b"not json\n", b'{"cmd": "no.such.command"}\n'):
        assert _send_raw(sock, bad)["ok"] is False
    assert refusals("oversized") == before["oversized"] + 1
    assert refusals("malformed") == before["malformed"] + 2
    assert (refusals("uid"), refusals("timeout")) == (before["uid"], before["timeout"])
    # A command that runs and fails on its arguments is no refusal.
    reply = _send_raw(sock, b'{"cmd": "pod.get", "args": {"name": "no-such-pod"}}\n')
    assert reply["error"]["kind"] == "not_found", reply
    assert refusals("malformed") == before["malformed"] + 2


def _free_subnets(lab: Lab, count: int) -> list[str]:
    taken = {h["subnet"] for h in lab.result["hosts"]}
    return [s for s in (f"10.244.{i}.0/24" for i in range(250, 0, -1)) if s not in taken][:count]


def test_conflicting_and_unfit_records_are_dropped_by_reason_and_make_readyz_fail(lab2: Lab) -> None:
    def dropped(reason: str) -> float | None:
        return sample(lab2, "h1", "overlayd_dropped_records", "overlayd_dropped_records_total", reason=reason)

    before = {reason: dropped(reason) for reason in ("conflict", "backend_mismatch", "malformed")}
    hosts = json.loads(overlayctl(lab2.host("h1").socket, "--json", "hosts", check=True).stdout)
    h1 = next(h for h in hosts if h["node"] == "h1")
    twin_subnet, odd_subnet = _free_subnets(lab2, 2)
    # Our own public IP under another subnet: screened out as a conflict.
    twin = {"node": "h1twin", "public_ip": h1["public_ip"], "backend": {"type": "vxlan", "vtep_mac": "02:aa:00:00:00:01"}}
    # A fine record for another backend: it cannot be programmed here.
    odd = {"node": "odd", "public_ip": "198.18.0.98",
           "backend": {"type": "wireguard", "public_key": "A" * 43 + "=", "port": "51820"}}
    keys = [f"{PREFIX}/subnets/{subnet.replace('/', '-')}" for subnet in (twin_subnet, odd_subnet)]
    etcdctl(lab2.plan, "put", keys[0], json.dumps(twin))
    etcdctl(lab2.plan, "put", keys[1], json.dumps(odd))
    try:
        wait_for("both drops counted", lambda: dropped("conflict") == before["conflict"] + 1
                 and dropped("backend_mismatch") == before["backend_mismatch"] + 1)
        status, body = get(lab2, "h1", "/readyz")
        assert status == 503 and body.startswith("peers: 2 of 3 peers refused"), body
        assert get(lab2, "h1", "/healthz") == (200, "ok\n")
        time.sleep(1.0)  # more watch events and reconciles: each drop still counts once
        assert (dropped("conflict"), dropped("backend_mismatch"), dropped("malformed")) == (
            before["conflict"] + 1, before["backend_mismatch"] + 1, before["malformed"])
    finally:
        for key in keys:
            etcdctl(lab2.plan, "del", key)
    wait_for("ready again", lambda: get(lab2, "h1", "/readyz") == (200, "ok\n"))
