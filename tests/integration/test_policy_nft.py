"""The policy rules against the real nft (in a throwaway namespace): every form we generate is
accepted, and `nft list table` prints back exactly what we rendered, so the periodic full
converge adopts the table instead of rewriting it (which would also reset the drop counters)."""

from __future__ import annotations

import difflib
import random
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address, ip_network

import pytest

from overlayd.nat import ruleset
from overlayd.nat.ruleset import NatSpec
from overlayd.policy import nft
from overlayd.policy.model import parse_policy_untrusted
from tests.integration.conftest import netns_exec, unique_name
from tests.integration.test_policy import _doc, generated_scenarios

EDGES = [_doc("edge.v1", {
    "podSelector": {}, "policyTypes": ["Ingress", "Egress"],
    "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.1.1/32"]}},
                          {"ipBlock": {"cidr": "10.244.1.5/32"}},
                          {"ipBlock": {"cidr": "10.244.1.4/31", "except": ["10.244.1.5/32"]}},
                          {"ipBlock": {"cidr": "2001:db8::/32"}}],
                 "ports": [{"port": 1, "endPort": 65535}, {"protocol": "SCTP"},
                           {"protocol": "SCTP", "port": 9, "endPort": 10}, {"port": 65535}]}],
    "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}, {}]})]


@pytest.fixture
def netns() -> Iterator[str]:
    name = unique_name("pnft")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_generated_rules_read_back_as_rendered(netns: str) -> None:
    fake_pods = {f"p{i}": {"ip": f"10.244.{i % 3 + 1}.{i + 2}", "name": f"p{i}"} for i in range(9)}
    rng = random.Random(5)
    universe = [("app", "web"), ("app", "db"), ("tier", "front"), ("env", "prod")]
    for n, docs in enumerate([EDGES] + generated_scenarios(fake_pods, 40, seed=7)):
        policies = [parse_policy_untrusted(d)[0] for d in docs]
        pods = [nft.PodIP(ip_address(p["ip"]), frozenset(rng.sample(universe, rng.randint(0, 2))),
                          p["ip"].startswith("10.244.1.")) for p in fake_pods.values()]
        spec = NatSpec("overlayd", ip_network("10.244.0.0/16"), ip_network("10.244.1.0/24"), "ovl0", True,
                       policy=nft.build(policies, pods, ip_network("10.244.1.0/24")))
        written = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset.replace_table(spec),
                                 capture_output=True, text=True)
        assert written.returncode == 0, f"scenario {n}: {written.stderr[:400]}"
        listed = netns_exec(netns, "nft", "list", "table", "inet", "overlayd").stdout
        diff = list(difflib.unified_diff(ruleset._normal(ruleset.render(spec)), ruleset._normal(listed), lineterm=""))
        assert ruleset.matches(listed, spec), f"scenario {n}:\n" + "\n".join(diff[:30])
