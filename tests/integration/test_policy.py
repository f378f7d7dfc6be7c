"""Network policy on a 3-host lab: the truth table, new pods, established flows, drop counters, CLI.

The truth table, in the style of the Kubernetes network-policy conformance tools (cyclonus):
12 pods with labels on 3 hosts, each serving TCP and UDP on ports 80 and 81; for each
scenario (hand-written ones and ones generated from a fixed seed), the policies are
applied, every host is waited for, and every pod probes every other pod (TCP 80, TCP 81,
UDP 80: both directions of every pair, same host and across hosts) at once. The expected
matrix comes from the pure model (overlayd/policy/reach.py); any difference fails the test
with the model's explanation of the flow.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Lab, netns_exec, overlayctl, running_lab
from tests.integration.labtools import wait_for
from overlayd.policy.model import Policy, parse_policy_untrusted
from overlayd.policy.reach import Endpoint, evaluate, explain

PROBE = str(Path(__file__).with_name("policy_probe.py"))
CHECKS = [(80, "tcp"), (81, "tcp"), (80, "udp")]
PODS = {
    "h1": [("w1", {"app": "web", "tier": "front", "env": "prod"}), ("d1", {"app": "db", "tier": "back", "env": "prod"}),
           ("c1", {"app": "cache", "env": "dev"}), ("n1", {})],
    "h2": [("w2", {"app": "web", "tier": "front", "env": "dev"}), ("d2", {"app": "db", "tier": "back", "env": "dev"}),
           ("c2", {"app": "cache", "tier": "back"}), ("x2", {"role": "ops"})],
    "h3": [("w3", {"app": "web", "env": "prod"}), ("d3", {"app": "db", "env": "prod", "tier": "back"}),
           ("c3", {"app": "cache", "env": "prod", "tier": "front"}), ("x3", {"role": "ops", "env": "dev"})],
}
LABEL_VALUES = {"app": ["web", "db", "cache"], "tier": ["front", "back"], "env": ["prod", "dev"], "role": ["ops"]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running_lab(tmp_path_factory.mktemp("lab"), 3, "vxlan")


def _pod_add(lab: Lab, host: str, name: str, labels: dict[str, str]) -> dict:
    args = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]
    return json.loads(overlayctl(lab.host(host).socket, "-o", "json", "pod", "add", name, *args, check=True).stdout)


def _serve(pod: dict) -> subprocess.Popen[str]:
    server = subprocess.Popen(["ip", "netns", "exec", pod["netns"], sys.executable, PROBE, "serve", "80", "81"],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "up"
    return server


@pytest.fixture(scope="module")
def pods(lab: Lab) -> Iterator[dict[str, dict]]:
    made: dict[str, dict] = {}
    for host, specs in PODS.items():
        for name, labels in specs:
            made[name] = _pod_add(lab, host, name, labels) | {"host": host, "labels": labels}
    servers = [_serve(pod) for pod in made.values()]
    try:
        yield made
    finally:
        for server in servers:
            server.kill()
            server.wait()


# --- applying policies and waiting for every host --------------------------------------------


def _nft(lab: Lab, host: str) -> str:
    return netns_exec(lab.host(host).netns, "nft", "list", "table", "inet", "overlayd").stdout


def _counters(lab: Lab, host: str) -> set[str]:
    return set(re.findall(r"^\s*counter (\S+) \{", _nft(lab, host), re.MULTILINE))


def _expected_counters(policies: list[Policy]) -> set[str]:
    if not policies:
        return set()
    return {"policy_unknown"} | {f"{'pi' if d == 'Ingress' else 'pe'}_{p.name}" for p in policies for d in p.types}


def _policy_names(lab: Lab) -> list[str]:
    rows = json.loads(overlayctl(lab.host("h1").socket, "-o", "json", "policy", "ls", check=True).stdout)
    return [row["name"] for row in rows]


def apply_scenario(lab: Lab, docs: list[dict], tmp: Path) -> list[Policy]:
    """Replace every policy by `docs`; return once every host enforces exactly them."""
    for name in _policy_names(lab):
        overlayctl(lab.host("h2").socket, "policy", "del", name, check=True)
    policies = [parse_policy_untrusted(doc)[0] for doc in docs]
    if docs:
        path = tmp / "policies.json"
        path.write_text("\n---\n".join(json.dumps(doc) for doc in docs))
        overlayctl(lab.host("h1").socket, "policy", "apply", "-f", str(path), check=True)
    want = _expected_counters(policies)
    wait_for("every host enforces the scenario", lambda: all(_counters(lab, h) == want for h in PODS), 20,
             interval=0.05)
    return policies


def probe_all(lab: Lab, pods: dict[str, dict], timeout: float = 1.0) -> dict[tuple[str, str, int, str], bool]:
    """Every pod to every other pod, every check, all at once."""
    procs = {}
    for src, pod in pods.items():
        targets = [[other["ip"], port, proto] for dst, other in pods.items() if dst != src for port, proto in CHECKS]
        procs[src] = subprocess.Popen(["ip", "netns", "exec", pod["netns"], sys.executable, PROBE, "probe",
                                       str(timeout), json.dumps(targets)], stdout=subprocess.PIPE, text=True)
    seen = {}
    for src, proc in procs.items():
        out, _ = proc.communicate(timeout=60)
        results = iter(json.loads(out))
        for dst in pods:
            if dst != src:
                for port, proto in CHECKS:
                    seen[(src, dst, port, proto)] = next(results)
    return seen


def probe_again(lab: Lab, pods: dict[str, dict], keys: list[tuple[str, str, int, str]],
                timeout: float = 3.0) -> dict[tuple[str, str, int, str], bool]:
    seen = {}
    for src in sorted({k[0] for k in keys}):
        mine = [k for k in keys if k[0] == src]
        targets = [[pods[dst]["ip"], port, proto] for _, dst, port, proto in mine]
        out = netns_exec(pods[src]["netns"], sys.executable, PROBE, "probe", str(timeout), json.dumps(targets),
                         timeout=60).stdout
        seen.update(zip(mine, json.loads(out)))
    return seen


def _endpoint(pod: dict) -> Endpoint:
    return Endpoint(ip_address(pod["ip"]), pod["labels"], pod["name"], pod["host"])


def expected(policies: list[Policy], pods: dict[str, dict]) -> dict[tuple[str, str, int, str], bool]:
    return {(s, d, port, proto): evaluate(policies, _endpoint(pods[s]), _endpoint(pods[d]), proto, port).allowed
            for s in pods for d in pods if s != d for port, proto in CHECKS}


def check_scenario(lab: Lab, pods: dict[str, dict], docs: list[dict], tmp: Path) -> tuple[int, int]:
    policies = apply_scenario(lab, docs, tmp)
    want = expected(policies, pods)
    got = probe_all(lab, pods)
    # A probe that lost the race against a loaded machine is tried again, slower; enforcement is
    # deterministic, so a real difference stays.
    differ = [key for key in want if want[key] != got[key]]
    if differ:
        got.update(probe_again(lab, pods, differ))
    wrong = []
    for key in sorted(want):
        if want[key] != got[key]:
            src, dst, port, proto = key
            why = explain({p.name: p for p in policies},
                          evaluate(policies, _endpoint(pods[src]), _endpoint(pods[dst]), proto, port),
                          _endpoint(pods[src]), _endpoint(pods[dst]), proto, port)
            wrong.append(f"{src}->{dst} {port}/{proto}: model {'allow' if want[key] else 'deny'}, probe "
                         f"{'reached' if got[key] else 'blocked'} ({why['egress']} | {why['ingress']})")
    assert not wrong, f"{len(wrong)} of {len(want)} flows differ:\n" + "\n".join(wrong[:40]) + \
        "\npolicies: " + json.dumps(docs)
    return sum(want.values()), len(want)


# --- scenarios ----------------------------------------------------------------------------------


def _doc(name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec}


def hand_scenarios(pods: dict[str, dict]) -> list[list[dict]]:
    subnet_h1 = str(ip_network(f"{pods['w1']['ip']}/24", strict=False))
    return [
        [],  # no policy: everything reaches everything
        [_doc("deny-in", {"podSelector": {}})],  # default deny ingress, every pod
        [_doc("deny-out", {"podSelector": {}, "policyTypes": ["Egress"]})],  # default deny egress
        [_doc("web-80", {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"ports": [{"port": 80}]}]}),
         _doc("db-from-web", {"podSelector": {"matchLabels": {"app": "db"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                           "ports": [{"port": 81}, {"protocol": "UDP", "port": 80}]}]}),
         _doc("cache-quiet", {"podSelector": {"matchLabels": {"app": "cache"}}, "policyTypes": ["Egress"]})],
        [_doc("web-out", {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
                          "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                                      "ports": [{"port": 81}]},
                                     {"ports": [{"protocol": "UDP"}]}]})],
        [_doc("db-ipblock", {"podSelector": {"matchLabels": {"app": "db"}},
                             "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                                                "except": [subnet_h1, f"{pods['c2']['ip']}/32"]}}]}]})],
        [_doc("expr", {"podSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]},
                                                             {"key": "role", "operator": "DoesNotExist"}]},
                       "policyTypes": ["Ingress", "Egress"],
                       "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                           {"key": "tier", "operator": "Exists"}]}}]}],
                       "egress": [{"ports": [{"port": 80, "endPort": 81}]}]}),
         _doc("ops-open", {"podSelector": {"matchLabels": {"role": "ops"}}, "ingress": [{}]})],
    ]


def _random_selector(rng: random.Random) -> dict:
    kind = rng.random()
    key = rng.choice(sorted(LABEL_VALUES))
    if kind < 0.15:
        return {}
    if kind < 0.55:
        return {"matchLabels": {key: rng.choice(LABEL_VALUES[key])}}
    op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist"])
    expr: dict[str, Any] = {"key": key, "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = rng.sample(LABEL_VALUES[key], rng.randint(1, len(LABEL_VALUES[key])))
    return {"matchExpressions": [expr]}


def _random_rule(rng: random.Random, pods: dict[str, dict], peers_key: str) -> dict:
    rule: dict[str, Any] = {}
    peers = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        if rng.random() < 0.7:
            peers.append({"podSelector": _random_selector(rng)})
        else:
            pod = pods[rng.choice(sorted(pods))]
            block: dict[str, Any] = {"cidr": str(ip_network(f"{pod['ip']}/24", strict=False))}
            if rng.random() < 0.5:
                block = {"cidr": "10.244.0.0/16", "except": [block["cidr"]]}
            elif rng.random() < 0.5:
                block["except"] = [f"{pod['ip']}/32"]
            peers.append({"ipBlock": block})
    if peers:
        rule[peers_key] = peers
    ports = rng.sample([{"port": 80}, {"port": 81}, {"protocol": "UDP", "port": 80}, {"protocol": "UDP"},
                        {"port": 80, "endPort": 81}, {"protocol": "TCP"}], rng.choice([0, 1, 1, 2]))
    if ports:
        rule["ports"] = ports
    return rule


def generated_scenarios(pods: dict[str, dict], count: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    scenarios = []
    for s in range(count):
        docs = []
        for p in range(rng.randint(1, 4)):
            spec: dict[str, Any] = {"podSelector": _random_selector(rng)}
            types = rng.choice([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]])
            if types is not None:
                spec["policyTypes"] = types
            if rng.random() < 0.8:
                spec["ingress"] = [_random_rule(rng, pods, "from") for _ in range(rng.randint(0, 2))]
            if rng.random() < 0.6:
                spec["egress"] = [_random_rule(rng, pods, "to") for _ in range(rng.randint(0, 2))]
            docs.append(_doc(f"g{seed}-{s}-{p}", spec))
        scenarios.append(docs)
    return scenarios


def test_truth_table_hand_written(lab: Lab, pods: dict[str, dict], tmp_path: Path) -> None:
    start = time.monotonic()
    try:
        for docs in hand_scenarios(pods):
            allowed, total = check_scenario(lab, pods, docs, tmp_path)
            if not docs:
                assert allowed == total
            if docs and docs[0]["metadata"]["name"] in ("deny-in", "deny-out"):
                assert allowed == 0
    finally:
        apply_scenario(lab, [], tmp_path)  # a failure here must not leave policies for the next test
    assert time.monotonic() - start < 120


def test_truth_table_generated(lab: Lab, pods: dict[str, dict], tmp_path: Path) -> None:
    start = time.monotonic()
    try:
        counts = [check_scenario(lab, pods, docs, tmp_path) for docs in generated_scenarios(pods, 8, seed=12)]
        assert all(_bridge_filters(lab, h) for h in PODS), "with policies, bridged pod traffic must reach the rules"
    finally:
        apply_scenario(lab, [], tmp_path)
    allowed = sum(a for a, _ in counts)
    total = sum(t for _, t in counts)
    assert 0.1 * total < allowed < 0.9 * total, "the generated scenarios should both allow and deny a fair share"
    assert time.monotonic() - start < 150
    wait_for("br_netfilter off again on every bridge", lambda: not any(_bridge_filters(lab, h) for h in PODS), 5)


def _bridge_filters(lab: Lab, host: str) -> bool:
    """Whether the host's pod bridge hands bridged frames to the IP hooks (the lab's sysctl is 0)."""
    return "nf_call_iptables 1" in netns_exec(lab.host(host).netns, "ip", "-d", "link", "show", "ovl0").stdout


# --- behaviour around the truth table -------------------------------------------------------------


def _probe(netns: str, address: str, port: int, protocol: str = "tcp", timeout: float = 1.0) -> bool:
    out = netns_exec(netns, sys.executable, PROBE, "probe", str(timeout), json.dumps([[address, port, protocol]]))
    return json.loads(out.stdout)[0]


def _apply(lab: Lab, tmp: Path, *docs: dict) -> None:
    path = tmp / "apply.yaml"
    path.write_text("\n---\n".join(json.dumps(doc) for doc in docs))
    overlayctl(lab.host("h3").socket, "policy", "apply", "-f", str(path), check=True)


def _wait_enforced(lab: Lab, *names: str) -> None:
    wait_for(f"every host enforces {names}",
             lambda: all(all(f"_{n}" in " ".join(_counters(lab, h)) for n in names) for h in PODS), 20)


def test_a_new_pod_is_covered_before_its_first_packet(lab: Lab, pods: dict[str, dict], tmp_path: Path) -> None:
    """A pod a policy isolates is closed from the moment `pod add` returns, on its own host and across."""
    _apply(lab, tmp_path, _doc("locked", {"podSelector": {"matchLabels": {"app": "locked"}},
                                           "policyTypes": ["Ingress", "Egress"]}))
    _wait_enforced(lab, "locked")
    try:
        for round_ in range(3):
            locked = _pod_add(lab, "h2", f"locked-{round_}", {"app": "locked"})
            # At once: same host (bridged) and another host (routed), both directions.
            assert not _probe(locked["netns"], pods["w2"]["ip"], 80, timeout=0.5)
            assert not _probe(locked["netns"], pods["w1"]["ip"], 80, "udp", timeout=0.5)
            server = _serve(locked | {"name": f"locked-{round_}"})
            try:
                assert not _probe(pods["d2"]["netns"], locked["ip"], 80, timeout=0.5)
                assert not _probe(pods["d3"]["netns"], locked["ip"], 81, "udp", timeout=0.5)
            finally:
                server.kill()
                server.wait()
            opened = _pod_add(lab, "h2", f"open-{round_}", {"app": "open"})  # the probe itself works at once
            assert _probe(opened["netns"], pods["w2"]["ip"], 80)
            overlayctl(lab.host("h2").socket, "pod", "del", f"locked-{round_}", check=True)
            overlayctl(lab.host("h2").socket, "pod", "del", f"open-{round_}", check=True)
    finally:
        overlayctl(lab.host("h1").socket, "policy", "del", "locked", check=True)


def test_established_flows_survive_a_policy_that_denies_new_ones(lab: Lab, pods: dict[str, dict],
                                                                  tmp_path: Path) -> None:
    client, server = pods["c1"], pods["w2"]
    keeper = subprocess.Popen(["ip", "netns", "exec", client["netns"], sys.executable, "-c",
                               "import socket,sys\n"
                               f"s=socket.create_connection(('{server['ip']}', 80), timeout=5)\n"
                               "print(s.recv(100).decode().strip(), flush=True)\n"
                               "for line in sys.stdin:\n"
                               "    s.sendall(line.encode()); print(s.recv(100).decode().strip(), flush=True)\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert keeper.stdin is not None and keeper.stdout is not None
    try:
        assert keeper.stdout.readline().strip() == "ok"
        _apply(lab, tmp_path, _doc("web2-closed", {"podSelector": {"matchLabels": {"app": "web", "env": "dev"}}}))
        _wait_enforced(lab, "web2-closed")
        assert not _probe(client["netns"], server["ip"], 80), "new connections must be denied"
        for word in ("still", "here"):
            keeper.stdin.write(word + "\n")
            keeper.stdin.flush()
            assert keeper.stdout.readline().strip() == word, "the established connection broke"
    finally:
        keeper.kill()
        overlayctl(lab.host("h1").socket, "policy", "del", "web2-closed", check=True)


FETCH = """
import http.client
c = http.client.HTTPConnection("127.0.0.1", 9469, timeout=10)
c.request("GET", "/metrics")
print(c.getresponse().read().decode())
"""


def _drops(lab: Lab, host: str, policy: str, direction: str) -> float:
    body = netns_exec(lab.host(host).netns, sys.executable, "-c", FETCH).stdout
    match = re.search(rf'^overlayd_policy_drops_total\{{direction="{direction}",policy="{policy}"\}} (\S+)$', body,
                      re.MULTILINE)
    return float(match.group(1)) if match else -1.0


def test_drops_are_counted_per_policy_and_survive_rewrites(lab: Lab, pods: dict[str, dict], tmp_path: Path) -> None:
    _apply(lab, tmp_path, _doc("db-closed", {"podSelector": {"matchLabels": {"app": "db"}}}))
    _wait_enforced(lab, "db-closed")
    try:
        for _ in range(3):
            assert not _probe(pods["w3"]["netns"], pods["d3"]["ip"], 80, "udp", timeout=0.6)
        wait_for("h3 counts the drops", lambda: _drops(lab, "h3", "db-closed", "ingress") >= 3, 25, interval=0.5)
        before = _drops(lab, "h3", "db-closed", "ingress")
        # A rewrite of the table (another policy) starts the kernel counters at zero: the metric must not.
        _apply(lab, tmp_path, _doc("unrelated", {"podSelector": {"matchLabels": {"app": "nothing"}}}))
        _wait_enforced(lab, "unrelated")
        assert _drops(lab, "h3", "db-closed", "ingress") >= before
        assert _drops(lab, "h1", "db-closed", "egress") == -1.0  # no Egress type, no series
    finally:
        for name in ("db-closed", "unrelated"):
            overlayctl(lab.host("h1").socket, "policy", "del", name)


def test_policy_cli(lab: Lab, pods: dict[str, dict], tmp_path: Path) -> None:
    socket = lab.host("h1").socket
    path = tmp_path / "web.yaml"
    path.write_text("""\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-ops
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: ops
    ports:
    - protocol: TCP
      port: 80
""")
    result = overlayctl(socket, "policy", "apply", "-f", str(path), check=True)
    assert result.stdout.strip() == "policy/web-from-ops created"
    assert "namespace" in result.stderr and "ignored" in result.stderr
    assert overlayctl(socket, "policy", "apply", "-f", str(path), check=True).stdout.strip() == \
        "policy/web-from-ops unchanged"
    try:
        wait_for("h2 lists it", lambda: "web-from-ops" in overlayctl(lab.host("h2").socket, "policy", "ls").stdout, 5)
        listing = overlayctl(lab.host("h2").socket, "policy", "ls", check=True).stdout
        assert re.search(r"web-from-ops\s+app=web\s+Ingress\s+1\s+0\s+3", listing), listing
        shown = overlayctl(socket, "policy", "get", "web-from-ops", check=True).stdout
        assert "kind: NetworkPolicy" in shown and "h1/w1" in shown
        allowed = overlayctl(socket, "policy", "explain", "x2", "w1", "80/tcp")
        assert allowed.returncode == 0 and allowed.stdout.startswith("ALLOW")
        assert "rule 0 of policy web-from-ops" in allowed.stdout
        denied = overlayctl(socket, "policy", "explain", "d2", "w3", "80")
        assert denied.returncode == 1 and denied.stdout.startswith("DENY") and "isolated by web-from-ops" in denied.stdout
        assert _probe(pods["x2"]["netns"], pods["w1"]["ip"], 80) and not _probe(pods["d2"]["netns"], pods["w3"]["ip"], 80)
    finally:
        assert overlayctl(socket, "policy", "del", "web-from-ops", check=True).stdout.strip() == \
            "policy/web-from-ops deleted"
    bad = tmp_path / "bad.yaml"
    for text, needle in [
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ns}\nspec:\n  podSelector: {}\n"
         "  ingress:\n  - from:\n    - namespaceSelector: {}\n", "namespaceSelector is not supported"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {}\n"
         "  ingress:\n  - ports:\n    - port: http\n", "named ports"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo}\nspec:\n  podSelector: {}\n"
         "  ingres: []\n", "unknown field 'ingres'"),
        ("kind: [unclosed\n", "not valid YAML"),
    ]:
        bad.write_text(text)
        result = overlayctl(socket, "policy", "apply", "-f", str(bad))
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for args, needle in [(("policy", "get", "missing"), "no policy"), (("policy", "del", "missing"), "no policy"),
                         (("policy", "explain", "nope", "w1", "80"), "no pod named nope"),
                         (("policy", "explain", "w1", "w2", "99999"), "port")]:
        result = overlayctl(socket, *args)
        assert result.returncode != 0 and needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
            result.stderr


def test_policies_stay_in_force_across_a_restart_without_etcd(lab: Lab, pods: dict[str, dict],
                                                               tmp_path: Path) -> None:
    """The daemon restarts while etcd is unreachable: its pods stay closed (policies.json cache)."""
    from overlayd.lab import runner
    from tests.integration.labfaults import cut_etcd, heal_etcd, stop_daemon
    from tests.integration.labtools import status

    _apply(lab, tmp_path, _doc("d1-closed", {"podSelector": {"matchLabels": {"app": "db", "env": "prod"}},
                                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}))
    _wait_enforced(lab, "d1-closed")
    host = lab.host("h1")
    cached = host.dir / "state" / "policies.json"  # written about a second after a change
    wait_for("h1 caches the policy", lambda: cached.exists() and "d1-closed" in cached.read_text(), 10, interval=0.1)
    try:
        stop_daemon(host, signal.SIGKILL)
        before = _nft(lab, "h1")
        cut_etcd(lab.plan, [host])
        try:
            runner.start_daemon(lab.plan, host)
            runner.wait_ready(host)
            assert _nft(lab, "h1") == before, "start-up must program the cached policy rules, not drop them"
            assert not _probe(pods["c2"]["netns"], pods["d1"]["ip"], 80)
            assert _probe(pods["w2"]["netns"], pods["d1"]["ip"], 80), "w2 is a known pod of another host"
        finally:
            heal_etcd(lab.plan)
        wait_for("h1 follows the registry again", lambda: "registry" not in " ".join(status(host)["problems"]), 30)
    finally:
        overlayctl(lab.host("h2").socket, "policy", "del", "d1-closed", check=True)
