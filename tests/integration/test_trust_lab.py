"""Trust mode on a 3-host lab: the signed cluster config, certificate expiry and revocation.

Every host has a CA-issued certificate and the trust anchor; the cluster config is signed
with `network init --ca-dir`. An attacker with etcd write access rewrites the config: a
restarted daemon keeps its subnet, pods and peers and says why. Certificates that run out
or are revoked (`overlayctl ca revoke`) lose their peers on the re-check timer, with no
etcd event on the records carrying them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ipam.config import ClusterConfig
from overlayd.api.client import ControlClient
from overlayd.cluster.configdoc import encode_config
from overlayd.lab import runner
from overlayd.lab.plan import LabHost, LabPlan, make_plan
from overlayd.trust.certs import load_certificate
from overlayd.trust.configsig import ConfigSigner
from tests.integration.conftest import netns_exec, unique_name
from tests.integration.labfaults import stop_daemon
from tests.integration.labtools import PREFIX, components, etcdctl, status, wait_for

pytestmark = pytest.mark.integration

RECHECK = 1  # [trust] recheck_interval of every lab host, seconds
CONFIG_KEY = f"{PREFIX}/config"
REVOKED_KEY = f"{PREFIX}/revoked"


def overlayctl(*args: str, netns: str | None = None) -> str:
    cmd = [sys.executable, "-m", "overlayd.cli.main", *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"overlayctl {' '.join(args)}: {result.stderr}"
    return result.stdout


@dataclass
class TrustLab:
    plan: LabPlan
    ca_dir: Path

    def host(self, name: str) -> LabHost:
        return next(h for h in self.plan.hosts if h.name == name)

    def cert_path(self, host: LabHost) -> Path:
        return host.dir / "host.cert"

    def sign(self, host: LabHost, *validity: str) -> None:
        overlayctl("ca", "sign-host", "--ca-dir", str(self.ca_dir), "--node", host.name,
                   "--host-key-pub", str(host.dir / "state" / "host.key.pub"), "--out", str(self.cert_path(host)),
                   *(validity or ("--days", "1")))

    def start(self, host: LabHost) -> dict[str, Any]:
        trust = (f'\n[trust]\nca_file = "{self.ca_dir / "ca.pub"}"\nhost_cert = "{self.cert_path(host)}"\n'
                 f"recheck_interval = {RECHECK}\n")
        runner.start_daemon(self.plan, host, extra_config=trust)
        return runner.wait_ready(host)

    def restart(self, host: LabHost) -> dict[str, Any]:
        stop_daemon(host, signal.SIGTERM)
        return self.start(host)

    def etcd_value(self, key: str) -> bytes:
        return etcdctl(self.plan, "get", key, "--print-value-only").rstrip("\n").encode()

    def etcd_put(self, key: str, value: bytes) -> None:
        etcdctl(self.plan, "put", key, value.decode())

    def mod_revision(self, key: str) -> int:
        return json.loads(etcdctl(self.plan, "get", key, "-w", "json"))["kvs"][0]["mod_revision"]


def pods(host: LabHost) -> dict[str, str]:
    return {p["name"]: p["ip"] for p in ControlClient(host.socket).call("pod.list")}


def pod_netns(host: LabHost) -> str:
    return ControlClient(host.socket).call("pod.list")[0]["netns"]


def reaches(src: LabHost, dst: LabHost) -> bool:
    target = next(iter(pods(dst).values()))
    return netns_exec(pod_netns(src), "ping", "-c", "3", "-i", "0.2", "-W", "1", target, check=False).returncode == 0


def peer_nodes(host: LabHost) -> set[str]:
    return {row["node"] for row in ControlClient(host.socket).call("peers")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrustLab]:
    base = tmp_path_factory.mktemp("trustlab")
    plan = make_plan(unique_name("tr"), 3, "vxlan", base)
    lab = TrustLab(plan, base / "ca")
    try:
        overlayctl("ca", "init", "--dir", str(lab.ca_dir))
        runner.build(plan, ("--ca-dir", str(lab.ca_dir)))  # a signed cluster config
        for host in plan.hosts:
            overlayctl("ca", "host-key", "--out", str(host.dir / "state" / "host.key"))
            lab.sign(host)
        for host in plan.hosts:
            lab.start(host)
        for host in plan.hosts:
            ControlClient(host.socket).call("pod.add", name=host.pod_name, labels={})
        h1, h2, h3 = plan.hosts
        wait_for("full mesh", lambda: all(len(peer_nodes(h)) == 2 for h in plan.hosts), timeout=30)
        assert reaches(h1, h2) and reaches(h3, h1)
        assert all(status(h)["health"] == "ok" for h in plan.hosts)
        yield lab
    finally:
        runner.down(plan.name, base)


def _foreign_config(kind: str) -> bytes:
    """Another network and VNI: applied, it would renumber the host and cut it off its peers."""
    config = ClusterConfig.from_dict_untrusted({"network": "10.99.0.0/16", "backend": {"type": "vxlan", "vni": 77}})
    if kind == "unsigned":
        return encode_config(config)
    return encode_config(config, ConfigSigner(Ed25519PrivateKey.generate())(CONFIG_KEY, config))


@pytest.mark.parametrize("kind", ["unsigned", "foreign_ca"])
def test_forged_cluster_config_is_refused_and_the_host_keeps_everything(lab: TrustLab, kind: str) -> None:
    h1, h2, h3 = lab.plan.hosts
    signed = lab.etcd_value(CONFIG_KEY)
    assert json.loads(signed)["signature"]["issuer"]
    before = status(h1)
    before_pods = pods(h1)
    lab.etcd_put(CONFIG_KEY, _foreign_config(kind))
    try:
        after = lab.restart(h1)
        assert after["subnet"] == before["subnet"]
        assert after["health"] == "degraded" and "signed_config" in components(after)
        assert after["etcd"] == "ok"  # a refused config is no etcd outage
        problem = next(p for p in after["problems"] if p.startswith("signed_config:"))
        assert ("not signed by the cluster CA" if kind == "unsigned" else "not a trust anchor") in problem
        saved = json.loads((h1.dir / "state" / "host.json").read_text())
        assert saved["subnet"] == before["subnet"] and saved["cluster_config"]["network"] == "10.244.0.0/16"
        assert pods(h1) == before_pods
        wait_for("h1 has its peers", lambda: peer_nodes(h1) == {"h2", "h3"}, timeout=15)
        assert reaches(h1, h2) and reaches(h3, h1)
    finally:
        lab.etcd_put(CONFIG_KEY, signed)
    # The re-check notices the CA-signed config is back.
    wait_for("h1 healthy again", lambda: status(h1)["health"] == "ok", timeout=10 * RECHECK)


def test_expired_certificate_is_dropped_on_the_timer_without_an_etcd_event(lab: TrustLab) -> None:
    h1, h2, h3 = lab.plan.hosts
    lab.sign(h2, "--valid-seconds", "20")
    lab.restart(h2)
    key = f"{PREFIX}/subnets/{status(h2)['subnet'].replace('/', '-')}"
    serial = load_certificate(lab.cert_path(h2)).serial
    assert json.loads(lab.etcd_value(key))["cert"]["serial"] == serial  # peers verified the short-lived one
    wait_for("h2 a peer again", lambda: "h2" in peer_nodes(h1) and "h2" in peer_nodes(h3), timeout=15)
    revision = lab.mod_revision(key)
    not_after = load_certificate(lab.cert_path(h2)).not_after
    assert reaches(h1, h2)

    wait_for("h1 and h3 drop h2", lambda: "h2" not in peer_nodes(h1) and "h2" not in peer_nodes(h3), timeout=40)
    assert time.time() >= not_after  # dropped for expiring, not earlier
    assert lab.mod_revision(key) == revision  # nothing happened in etcd
    assert peer_nodes(h1) == {"h3"}
    assert status(h1)["trust"]["rejected"].get("cert_expired", 0) >= 1
    wait_for("h2 reports its expired certificate", lambda: "trust" in components(status(h2)), timeout=10 * RECHECK)
    assert "expired" in next(p for p in status(h2)["problems"] if p.startswith("trust:"))

    lab.sign(h2)  # renewed as documented: a new certificate and a restart
    lab.restart(h2)
    wait_for("h2 back", lambda: "h2" in peer_nodes(h1) and "h2" in peer_nodes(h3), timeout=15)
    assert reaches(h1, h2)


def test_revoked_host_is_dropped_and_an_old_or_forged_list_never_unrevokes(lab: TrustLab) -> None:
    h1, h2, h3 = lab.plan.hosts
    endpoint = ("--etcd-endpoints", lab.plan.etcd_endpoint)
    # A first list, revoking a certificate nobody uses: kept to be replayed later.
    overlayctl("ca", "revoke", "--ca-dir", str(lab.ca_dir), "--serial", "0" * 32, *endpoint,
               netns=lab.plan.underlay_netns)
    old_list = lab.etcd_value(REVOKED_KEY)
    assert peer_nodes(h1) == {"h2", "h3"}

    overlayctl("ca", "revoke", "--ca-dir", str(lab.ca_dir), "--cert", str(lab.cert_path(h3)), *endpoint,
               netns=lab.plan.underlay_netns)
    wait_for("h1 and h2 drop h3", lambda: "h3" not in peer_nodes(h1) and "h3" not in peer_nodes(h2),
             timeout=5 * RECHECK)
    assert status(h1)["trust"]["rejected"].get("revoked", 0) >= 1
    wait_for("h3 reports it is revoked", lambda: "trust" in components(status(h3)), timeout=5 * RECHECK)
    h3_status = status(h3)
    assert h3_status["health"] == "degraded"
    assert "revoked" in next(p for p in h3_status["problems"] if p.startswith("trust:"))
    assert reaches(h1, h2)

    # Replaying the older, validly signed list, or writing an unsigned empty one, changes nothing.
    generation = json.loads(lab.etcd_value(REVOKED_KEY))["generation"]
    for value, reason in [(old_list, "stale"),
                          (json.dumps({**json.loads(old_list), "serials": [], "generation": generation + 5}).encode(),
                           "untrusted")]:
        lab.etcd_put(REVOKED_KEY, value)
        wait_for(f"h1 ignores the {reason} list",
                 lambda: status(h1)["trust"]["revocations"]["ignored_lists"].get(reason, 0) >= 1, timeout=5 * RECHECK)
        assert "h3" not in peer_nodes(h1)

    # A restarted host refuses the revoked record from its first listing on (its saved list holds).
    lab.restart(h1)
    assert status(h1)["trust"]["revocations"]["generation"] == generation
    assert peer_nodes(h1) == {"h2"}
    assert reaches(h1, h2) and not reaches(h1, h3)


def test_pod_records_are_signed_and_a_forged_one_is_refused(lab: TrustLab) -> None:
    """Pods are published signed (bound to the host's lease); an unsigned record under another
    host's key, and a signed one moved to another key, are refused and make health degraded."""
    h1, h2, _ = lab.plan.hosts
    key = f"{PREFIX}/pods/{h1.name}/{h1.pod_name}"
    wait_for("h1's pod record", lambda: lab.etcd_value(key) != b"", timeout=15)
    signed = json.loads(lab.etcd_value(key))
    assert {"cert", "sig", "lease"} <= set(signed)
    forged = {"name": "evil", "node": h1.name, "ip": "10.244.99.9", "labels": {"app": "web"}, "kind": "pod"}
    lab.etcd_put(f"{PREFIX}/pods/{h1.name}/evil", json.dumps(forged).encode())
    moved = signed | {"name": "copy"}  # a valid signature, for another key and name, on the same lease
    etcdctl(lab.plan, "put", f"--lease={signed['lease']}", f"{PREFIX}/pods/{h1.name}/copy", json.dumps(moved))
    try:
        wait_for("h2 refuses both", lambda: "2 pod, service or policy record(s) refused" in " ".join(status(h2)["problems"]),
                 timeout=10)
        assert status(h2)["health"] == "degraded"
    finally:
        etcdctl(lab.plan, "del", f"{PREFIX}/pods/{h1.name}/evil")
        etcdctl(lab.plan, "del", f"{PREFIX}/pods/{h1.name}/copy")
    wait_for("health ok again", lambda: status(h2)["health"] == "ok", timeout=10)


def test_policies_must_be_signed_and_forged_or_deleted_ones_change_nothing(lab: TrustLab, tmp_path: Path) -> None:
    """Trust mode: only CA-signed policies are enforced; a forged policy that would open the pods is
    refused, and deleting the signed one in etcd does not open them: only a signed `policy del` does."""
    h1, h2, _ = lab.plan.hosts
    closed = tmp_path / "closed.yaml"
    closed.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: closed}\n"
                      "spec: {podSelector: {}}\n")
    unsigned = subprocess.run([sys.executable, "-m", "overlayd.cli.main", "--socket", str(h1.socket), "policy", "apply",
                               "-f", str(closed)], capture_output=True, text=True, timeout=60)
    assert unsigned.returncode == 2 and "signed by the cluster CA" in unsigned.stderr
    overlayctl("--socket", str(h1.socket), "policy", "apply", "-f", str(closed), "--ca-dir", str(lab.ca_dir))
    key = f"{PREFIX}/policies/closed"
    assert json.loads(lab.etcd_value(key))["signature"]["generation"] > 0
    try:
        wait_for("h2's pod is closed", lambda: not reaches(h1, h2), timeout=15, interval=0.2)
        forged = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "open"},
                  "spec": {"podSelector": {}, "ingress": [{}]}}
        lab.etcd_put(f"{PREFIX}/policies/open", json.dumps(forged).encode())
        etcdctl(lab.plan, "del", key)  # the signed one, deleted behind the CA's back
        wait_for("h2 refuses both", lambda: "2 pod, service or policy record(s) refused" in
                 " ".join(status(h2)["problems"]), timeout=10)
        assert status(h2)["health"] == "degraded"
        assert not reaches(h1, h2), "a forged policy or a deleted key must not open the pod"
        assert [p["name"] for p in ControlClient(h2.socket).call("policy.list")] == ["closed"]
    finally:
        etcdctl(lab.plan, "del", f"{PREFIX}/policies/open")
        overlayctl("--socket", str(h1.socket), "policy", "del", "closed", "--ca-dir", str(lab.ca_dir))
    wait_for("open again", lambda: reaches(h1, h2), timeout=15, interval=0.2)
    wait_for("health ok again", lambda: status(h2)["health"] == "ok", timeout=10)
