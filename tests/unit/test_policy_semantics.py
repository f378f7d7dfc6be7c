"""NetworkPolicy semantics of the pure model (overlayd/policy/reach.py) against hand-written
Kubernetes cases: the documentation's examples and the classic surprises."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from overlayd.policy.model import Policy, parse_policy_untrusted
from overlayd.policy.reach import Endpoint, evaluate, explain


def policy(name: str, spec: dict[str, Any]) -> Policy:
    return parse_policy_untrusted({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                   "metadata": {"name": name}, "spec": spec})[0]


def pod(ip: str, **labels: str) -> Endpoint:
    return Endpoint(ip_address(ip), labels, f"pod-{ip.rsplit('.', 1)[1]}", "h1")


def outside(ip: str) -> Endpoint:
    return Endpoint(ip_address(ip))


DB = pod("10.244.1.2", role="db")
FRONT = pod("10.244.2.3", role="frontend")
OTHER = pod("10.244.3.4", role="other")
EXTERNAL = outside("172.17.0.9")
EXCEPTED = outside("172.17.1.9")

# The example of the Kubernetes documentation (its namespaceSelector peer left out: refused here).
DOC_EXAMPLE = policy("test-network-policy", {
    "podSelector": {"matchLabels": {"role": "db"}},
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [{"from": [{"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                          {"podSelector": {"matchLabels": {"role": "frontend"}}}],
                 "ports": [{"protocol": "TCP", "port": 6379}]}],
    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 5978}]}],
})


def allowed(policies: list[Policy], src: Endpoint, dst: Endpoint, port: int | None = 80, proto: str = "tcp") -> bool:
    return evaluate(policies, src, dst, proto, port).allowed


def test_no_policy_allows_everything() -> None:
    assert allowed([], FRONT, DB) and allowed([], EXTERNAL, DB) and allowed([], DB, EXTERNAL, 53, "udp")


@pytest.mark.parametrize("src,port,proto,expected", [
    (FRONT, 6379, "tcp", True),  # a podSelector peer
    (EXTERNAL, 6379, "tcp", True),  # inside the ipBlock
    (EXCEPTED, 6379, "tcp", False),  # in its except
    (OTHER, 6379, "tcp", False),  # a pod the rule does not name
    (FRONT, 6380, "tcp", False),  # another port
    (FRONT, 6379, "udp", False),  # another protocol
])
def test_documentation_example_ingress(src: Endpoint, port: int, proto: str, expected: bool) -> None:
    assert allowed([DOC_EXAMPLE], src, DB, port, proto) is expected


def test_documentation_example_egress() -> None:
    assert allowed([DOC_EXAMPLE], DB, outside("10.0.0.7"), 5978)
    assert not allowed([DOC_EXAMPLE], DB, outside("10.0.1.7"), 5978)
    assert not allowed([DOC_EXAMPLE], DB, FRONT, 80)  # db's egress is isolated: even to a pod
    assert allowed([DOC_EXAMPLE], FRONT, OTHER)  # pods it does not select are not isolated


def test_default_deny_ingress_and_allow_all_ingress() -> None:
    deny = policy("default-deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})
    assert not allowed([deny], FRONT, DB) and not allowed([deny], EXTERNAL, DB)
    assert allowed([deny], DB, EXTERNAL), "ingress isolation leaves egress alone... "
    assert not allowed([deny], DB, FRONT), "... but the destination pod is isolated too"
    allow_all = policy("allow-all-ingress", {"podSelector": {}, "ingress": [{}]})
    assert allowed([deny, allow_all], EXTERNAL, DB, 1, "udp")


def test_default_deny_egress_and_allow_all_egress() -> None:
    deny = policy("default-deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert not allowed([deny], DB, EXTERNAL) and allowed([deny], EXTERNAL, DB)
    allow_all = policy("allow-all-egress", {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]})
    assert allowed([deny, allow_all], DB, EXTERNAL)


def test_policy_types_default_ingress_always_egress_with_egress_rules() -> None:
    only_egress_rules = policy("egress-only", {"podSelector": {"matchLabels": {"role": "db"}},
                                               "egress": [{"to": [{"podSelector": {}}]}]})
    assert only_egress_rules.types == ("Ingress", "Egress")
    assert not allowed([only_egress_rules], FRONT, DB), "no policyTypes: Ingress too, and it has no ingress rules"
    assert allowed([only_egress_rules], DB, FRONT)
    assert not allowed([only_egress_rules], DB, EXTERNAL)
    empty_egress = policy("empty-egress", {"podSelector": {}, "egress": []})
    assert empty_egress.types == ("Ingress",), "an empty egress list is no egress rules"


def test_rules_of_a_missing_policy_type_have_no_effect() -> None:
    p = policy("egress-type-only", {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Egress"],
                                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}]})
    assert allowed([p], OTHER, DB), "ingress rules without the Ingress type neither isolate nor allow"
    assert not allowed([p], DB, OTHER)


def test_union_of_policies_selecting_one_pod() -> None:
    a = policy("from-frontend", {"podSelector": {"matchLabels": {"role": "db"}},
                                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}]})
    b = policy("from-other", {"podSelector": {"matchLabels": {"role": "db"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "other"}}}]}]})
    assert allowed([a, b], FRONT, DB) and allowed([a, b], OTHER, DB) and not allowed([a, b], EXTERNAL, DB)
    assert evaluate([a, b], OTHER, DB, "tcp", 80).ingress.allowed_by.policy == "from-other"


def test_both_ends_must_allow() -> None:
    out = policy("db-out", {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Egress"],
                            "egress": [{"to": [{"podSelector": {}}]}]})
    closed = policy("front-closed", {"podSelector": {"matchLabels": {"role": "frontend"}}})
    verdict = evaluate([out, closed], DB, FRONT, "tcp", 80)
    assert verdict.egress.allowed and not verdict.ingress.allowed and not verdict.allowed


def test_peers_are_ored_selector_terms_are_anded() -> None:
    two_peers = policy("two-peers", {"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"role": "frontend"}}}, {"podSelector": {"matchLabels": {"role": "other"}}}]}]})
    assert allowed([two_peers], FRONT, DB) and allowed([two_peers], OTHER, DB)
    anded = policy("anded", {"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"role": "frontend"},
                         "matchExpressions": [{"key": "tier", "operator": "Exists"}]}}]}]})
    assert not allowed([anded], FRONT, DB)
    assert allowed([anded], pod("10.244.9.9", role="frontend", tier="x"), DB)


def test_empty_pod_selector_peer_is_every_pod_but_no_outside_address() -> None:
    p = policy("pods-only", {"podSelector": {"matchLabels": {"role": "db"}}, "ingress": [{"from": [{"podSelector": {}}]}]})
    assert allowed([p], OTHER, DB) and allowed([p], FRONT, DB) and not allowed([p], EXTERNAL, DB)


@pytest.mark.parametrize("expression,labels,expected", [
    ({"key": "env", "operator": "In", "values": ["prod", "staging"]}, {"env": "prod"}, True),
    ({"key": "env", "operator": "In", "values": ["prod"]}, {}, False),
    ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {"env": "dev"}, True),
    ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {}, True),  # a pod without the key is not in
    ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {"env": "prod"}, False),
    ({"key": "env", "operator": "Exists"}, {"env": ""}, True),
    ({"key": "env", "operator": "Exists"}, {}, False),
    ({"key": "env", "operator": "DoesNotExist"}, {}, True),
    ({"key": "env", "operator": "DoesNotExist"}, {"env": "prod"}, False),
])
def test_match_expressions(expression: dict, labels: dict, expected: bool) -> None:
    p = policy("expr", {"podSelector": {"matchExpressions": [expression]}})
    assert p.pod_selector.matches(labels) is expected
    assert allowed([p], FRONT, pod("10.244.1.7", **labels)) is not expected  # selected: isolated, no rules


def test_ports_ranges_protocol_only_and_default_tcp() -> None:
    p = policy("ports", {"podSelector": {}, "ingress": [{"ports": [
        {"port": 32000, "endPort": 32768}, {"protocol": "UDP"}, {"protocol": "SCTP", "port": 9}]}]})
    assert allowed([p], FRONT, DB, 32000) and allowed([p], FRONT, DB, 32768)
    assert not allowed([p], FRONT, DB, 31999) and not allowed([p], FRONT, DB, 32769)
    assert allowed([p], FRONT, DB, 40000, "udp"), "protocol alone: every UDP port"
    assert allowed([p], FRONT, DB, 53, "udp") and allowed([p], FRONT, DB, 9, "sctp")
    assert not allowed([p], FRONT, DB, 10, "sctp")
    assert not allowed([p], FRONT, DB, None), "a flow without a port (ICMP) matches no port rule"


def test_ip_block_matches_pod_addresses_too() -> None:
    """Peers are matched by address, as Calico and Cilium do: an ipBlock covering pod IPs admits them."""
    p = policy("cidr", {"podSelector": {"matchLabels": {"role": "db"}},
                        "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.3.0/24"]}}]}]})
    assert allowed([p], FRONT, DB) and not allowed([p], OTHER, DB) and not allowed([p], EXTERNAL, DB)


def test_explain_names_the_rule_or_the_isolating_policies() -> None:
    policies = {DOC_EXAMPLE.name: DOC_EXAMPLE}
    verdict = evaluate(policies.values(), FRONT, DB, "tcp", 6379)
    text = explain(policies, verdict, FRONT, DB, "tcp", 6379)
    assert text["verdict"] == "allow"
    assert "no policy selects pod-3 for egress" in text["egress"]
    assert "rule 0 of policy test-network-policy: peer 1 (pods role=frontend), port 0 (6379/tcp)" in text["ingress"]
    verdict = evaluate(policies.values(), OTHER, DB, "tcp", 6379)
    text = explain(policies, verdict, OTHER, DB, "tcp", 6379)
    assert text["verdict"] == "deny" and "isolated by test-network-policy" in text["ingress"]
    text = explain(policies, evaluate(policies.values(), EXTERNAL, DB, "tcp", 6379), EXTERNAL, DB, "tcp", 6379)
    assert "not a pod" in text["egress"] and "ipBlock 172.17.0.0/16 except 172.17.1.0/24" in text["ingress"]
