"""Trust mode on running daemons: a host's own key stays its own, and old records cannot be replayed
(issue 7, items 1 and 5), on one 3-host VXLAN lab with real etcd.

The lab starts without trust. The tests run in order, each building on the last: trust is
switched on in one step (every daemon restarted with a CA and a certificate), then the CA is
rotated, then an old signed record is written back under the host's new lease and under no lease,
then an unsigned record is planted. Through all of it every host keeps its subnet, its VTEP MAC
and its pods, and `status` is not "ok" while etcd holds a record the daemon refuses.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.api.client import ControlClient
from overlayd.lab import runner
from overlayd.lab.plan import LabHost
from tests.integration.conftest import Lab, netns_exec, running_lab
from tests.integration.labfaults import stop_daemon
from tests.integration.labtools import cluster_leases, components, etcdctl, free_subnet, status, subnet_key, wait_for

pytestmark = pytest.mark.integration

HOSTS = ("h1", "h2", "h3")


def ca(*args: str) -> None:
    """`overlayctl ca ...`, as an operator runs it."""
    subprocess.run([sys.executable, "-m", "overlayd.cli.main", "ca", *args], check=True, capture_output=True,
                   text=True, timeout=30)


def issue_identities(lab: Lab, ca_dir: Path) -> dict[str, Path]:
    """A new CA in ca_dir, and a certificate from it for every host's key (made on first use)."""
    ca("init", "--dir", str(ca_dir))
    certs = {}
    for host in lab.plan.hosts:
        key = host.dir / "state" / "host.key"  # the daemon's default host key path
        ca("host-key", "--out", str(key))
        certs[host.name] = ca_dir / f"{host.name}.cert"
        ca("sign-host", "--ca-dir", str(ca_dir), "--node", host.name, "--host-key-pub", f"{key}.pub",
           "--out", str(certs[host.name]))
    return certs


def sign_cluster_config(lab: Lab, ca_dir: Path) -> None:
    """`network init` again, unchanged but signed by the CA: trust mode wants a signed config."""
    subprocess.run(["ip", "netns", "exec", lab.plan.underlay_netns, sys.executable, "-m", "overlayd.cli.main",
                    "network", "init", "--etcd-endpoints", lab.plan.etcd_endpoint, "--backend", "vxlan",
                    "--ca-dir", str(ca_dir)], check=True, capture_output=True, text=True, timeout=30)


def restart_trusting(lab: Lab, host: LabHost, ca_dir: Path, cert: Path) -> dict:
    stop_daemon(host)
    runner.start_daemon(lab.plan, host, "--trust-ca", str(ca_dir / "ca.pub"), "--trust-host-cert", str(cert))
    return runner.wait_ready(host)


def raw_key(lab: Lab, key: str) -> tuple[bytes, int]:
    """(value, etcd lease id) of one key, as etcd has it now."""
    doc = json.loads(etcdctl(lab.plan, "get", key, "-w", "json"))
    (kv,) = doc["kvs"]
    return base64.b64decode(kv["value"]), int(kv.get("lease", 0))


def created_at(lab: Lab, key: str) -> int:
    """The key's create revision: it changes only if the key was deleted and claimed anew."""
    (kv,) = json.loads(etcdctl(lab.plan, "get", key, "-w", "json"))["kvs"]
    return int(kv["create_revision"])


def key_ages(lab: Lab, saved: dict) -> dict[str, int]:
    return {name: created_at(lab, subnet_key(view[0])) for name, view in saved["before"].items()}


def host_view(lab: Lab, host: LabHost) -> tuple[str, str, list[tuple[str, str]]]:
    """(subnet, VTEP MAC in etcd, pods): what trust changes must never change."""
    subnet = status(host)["subnet"]
    record = json.loads(raw_key(lab, subnet_key(subnet))[0])
    pods = sorted((p["name"], p["ip"]) for p in ControlClient(host.socket).call("pod.list"))
    return subnet, record["backend"]["vtep_mac"], pods


def all_views(lab: Lab) -> dict[str, tuple[str, str, list[tuple[str, str]]]]:
    return {name: host_view(lab, lab.host(name)) for name in HOSTS}


def reachable(lab: Lab, src: str, dst: str) -> bool:
    return netns_exec(lab.pod_netns(src), "ping", "-c", "1", "-W", "1", lab.pod_ip(dst), check=False).returncode == 0


def every_pod_reaches_every_other(lab: Lab) -> bool:
    pods = ("pod1", "pod2", "pod3")
    return all(reachable(lab, a, b) for a in pods for b in pods if a != b)


def signed_for_its_lease(lab: Lab, host: LabHost) -> bool:
    value, lease = raw_key(lab, subnet_key(status(host)["subnet"]))
    doc = json.loads(value)
    return "sig" in doc and lease != 0 and doc.get("lease") == f"{lease:x}"


def settled(lab: Lab) -> bool:
    """Every host ok with both peers programmed."""
    return all(status(lab.host(n))["health"] == "ok" and len(ControlClient(lab.host(n).socket).call("peers")) == 2
               for n in HOSTS)


def wait_settled(lab: Lab) -> None:
    try:
        wait_for("every host ok with two peers", lambda: settled(lab), timeout=20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {[status(lab.host(n)) for n in HOSTS]}") from None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running_lab(tmp_path_factory.mktemp("trustlab"), 3, "vxlan")


@pytest.fixture(scope="module")
def saved(lab: Lab) -> dict[str, object]:
    """What one test leaves for the next (the order is the story)."""
    saved: dict[str, object] = {"before": all_views(lab)}
    saved["ages"] = key_ages(lab, saved)
    return saved


def test_trust_switched_on_in_one_step_keeps_every_subnet_and_pod(lab: Lab, saved: dict, tmp_path_factory:
                                                                    pytest.TempPathFactory) -> None:
    ca_dir = tmp_path_factory.mktemp("ca1")
    certs = issue_identities(lab, ca_dir)
    sign_cluster_config(lab, ca_dir)
    for name in HOSTS:  # each host's own key holds an unsigned record: still its own
        report = restart_trusting(lab, lab.host(name), ca_dir, certs[name])
        assert report["subnet"] == saved["before"][name][0], report  # type: ignore[index]
    wait_settled(lab)
    assert all_views(lab) == saved["before"]
    assert key_ages(lab, saved) == saved["ages"]  # taken over in place: never deleted, never a gap
    assert sorted(entry["record"]["node"] for entry in cluster_leases(lab.plan).values()) == list(HOSTS)
    assert all(signed_for_its_lease(lab, lab.host(n)) for n in HOSTS)
    assert every_pod_reaches_every_other(lab)


def test_ca_rotation_keeps_every_subnet_and_pod(lab: Lab, saved: dict, tmp_path_factory:
                                                pytest.TempPathFactory) -> None:
    """A new CA, and only it trusted: every own key now carries a certificate nobody trusts."""
    ca_dir = tmp_path_factory.mktemp("ca2")
    certs = issue_identities(lab, ca_dir)
    sign_cluster_config(lab, ca_dir)
    for name in HOSTS:
        restart_trusting(lab, lab.host(name), ca_dir, certs[name])
    wait_settled(lab)
    assert all_views(lab) == saved["before"]
    assert key_ages(lab, saved) == saved["ages"]
    assert all(signed_for_its_lease(lab, lab.host(n)) for n in HOSTS)
    assert every_pod_reaches_every_other(lab)
    saved["ca"], saved["certs"] = ca_dir, certs


def test_a_replayed_record_is_refused_and_written_back_by_its_host(lab: Lab, saved: dict) -> None:
    """h3's record, validly signed, saved; h3 restarts without its saved state and VXLAN device,
    so it announces a new VTEP MAC under a new lease. The saved record written back, under h3's
    current lease and then under none, is never programmed, and h3 puts its own back."""
    h1, h3 = lab.host("h1"), lab.host("h3")
    key = subnet_key(saved["before"]["h3"][0])  # type: ignore[index]
    old, _ = raw_key(lab, key)
    stop_daemon(h3)
    (h3.dir / "state" / "host.json").unlink()
    netns_exec(h3.netns, "ip", "link", "del", "ovl.vx")
    restart_trusting(lab, h3, saved["ca"], saved["certs"]["h3"])  # type: ignore[index]
    wait_settled(lab)
    current, lease = raw_key(lab, key)
    assert json.loads(old)["backend"] != json.loads(current)["backend"]  # the replay would re-route

    etcdctl(lab.plan, "put", f"--lease={lease:x}", key, old.decode())
    wait_for("h3 writes its record back", lambda: raw_key(lab, key) == (current, lease), timeout=15)
    assert "(replayed)" in h1.log_path.read_text()

    etcdctl(lab.plan, "put", key, old.decode())  # on no lease: it would never expire
    wait_for("h3 claims its key back, signed", lambda: json.loads(raw_key(lab, key)[0])["backend"] ==
             json.loads(current)["backend"] and signed_for_its_lease(lab, h3), timeout=20)
    assert "(no_lease)" in h1.log_path.read_text()
    wait_settled(lab)
    assert every_pod_reaches_every_other(lab)


def test_status_is_not_ok_while_a_record_is_refused(lab: Lab) -> None:
    h1 = lab.host("h1")
    forged = json.dumps({"node": "evil", "public_ip": "198.18.0.66",
                         "backend": {"type": "vxlan", "vtep_mac": "02:00:00:00:00:66"}})
    lease = etcdctl(lab.plan, "lease", "grant", "300").split()[1]
    etcdctl(lab.plan, "put", "--lease", lease, subnet_key(free_subnet(lab.plan)), forged)
    try:
        wait_for("h1 reports the refused record", lambda: "records" in components(status(h1)), timeout=10)
        report = status(h1)
        assert report["health"] == "degraded" and any("unsigned" in p for p in report["problems"]), report
        assert len(ControlClient(h1.socket).call("peers")) == 2  # and evil is no peer
    finally:
        etcdctl(lab.plan, "lease", "revoke", lease)
    wait_for("h1 ok again", lambda: status(h1)["health"] == "ok", timeout=10)
