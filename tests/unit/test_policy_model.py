"""Parsing NetworkPolicy documents (overlayd/policy/model.py) and their etcd records."""

from __future__ import annotations

import json
from typing import Any

import pytest

from overlayd.cluster.errors import RecordError
from overlayd.policy.model import PolicyError, parse_policy_untrusted
from overlayd.policy.records import parse_policy_record_untrusted, policy_json


def doc(spec: dict[str, Any], name: str = "p", **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, **metadata},
            "spec": spec}


FULL = doc({
    "podSelector": {"matchLabels": {"app": "db"}, "matchExpressions": [{"key": "env", "operator": "In",
                                                                        "values": ["prod", "dev"]}]},
    "policyTypes": ["Egress", "Ingress"],
    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                          {"podSelector": {}}], "ports": [{"port": 80, "endPort": 90}, {"protocol": "UDP"}]}],
    "egress": [{}],
}, name="full.v1")


def test_round_trip_through_the_canonical_document_and_the_record() -> None:
    policy, warnings = parse_policy_untrusted(FULL)
    assert warnings == []
    assert policy.types == ("Ingress", "Egress")  # canonical order
    again, _ = parse_policy_untrusted(policy.to_doc())
    assert again == policy
    assert parse_policy_record_untrusted("full.v1", policy_json(policy)) == policy
    assert policy.to_doc()["spec"]["ingress"][0]["ports"][0] == {"protocol": "TCP", "port": 80, "endPort": 90}


@pytest.mark.parametrize("spec,needle", [
    ({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]},
     "spec.ingress[0].from[0]: namespaceSelector is not supported"),
    ({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {}}]}]},
     "namespaceSelector is not supported"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}, "named ports"),
    ({"podSelector": {}, "ingress": [{"ports": [{"endPort": 90}]}]}, "needs a port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "below port 90"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}, "not a port number"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": True}]}]}, "not a port number"),
    ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "tcp", "port": 80}]}]}, "not TCP, UDP or SCTP"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
     "strictly inside"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
     "strictly inside"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]}, "no prefix length"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "not both"),
    ({"podSelector": {}, "egress": [{"to": [{}]}]}, "needs a podSelector or an ipBlock"),
    ({"podSelector": {}, "ingres": []}, "unknown field 'ingres'"),
    ({"podSelector": {"matchLabel": {}}}, "unknown field 'matchLabel'"),
    ({}, "spec.podSelector: required"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}}, "not one of"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "at least one value"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}, "takes no values"),
    ({"podSelector": {"matchLabels": {"replicas": 3}}}, "quote numbers"),
    ({"podSelector": {"matchLabels": {"bad key!": "x"}}}, "label key"),
    ({"podSelector": {}, "policyTypes": ["ingress"]}, "neither Ingress nor Egress"),
    ({"podSelector": {}, "ingress": "all"}, "expected a list"),
    ({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}] * 65}]}, "at most 64"),
    ({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}] * 40, "ports": [{"port": 1}] * 40}]},
     "combinations per rule"),
])
def test_invalid_documents_are_refused_with_the_field_named(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy_untrusted(doc(spec))
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("document,needle", [
    ({"apiVersion": "networking.k8s.io/v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {}}, "kind"),
    ({"apiVersion": "v1", "kind": "NetworkPolicy", "metadata": {"name": "x"}, "spec": {}}, "apiVersion"),
    (doc({"podSelector": {}}, name="Upper"), "metadata.name"),
    (doc({"podSelector": {}}, name="x" * 64), "metadata.name"),
    (doc({"podSelector": {}}, name=""), "needs a name"),
    ({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "spec": {"podSelector": {}}}, "metadata"),
    (["not", "a", "mapping"], "must be an object"),
])
def test_invalid_envelopes(document: Any, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle):
        parse_policy_untrusted(document)


def test_namespace_is_ignored_with_a_warning_and_useless_rules_are_pointed_out() -> None:
    policy, warnings = parse_policy_untrusted(doc({"podSelector": {}, "policyTypes": ["Egress"],
                                                   "ingress": [{}]}, namespace="prod", labels={"a": "b"}))
    assert policy.types == ("Egress",)
    assert any("namespace 'prod' ignored" in w for w in warnings)
    assert any("policyTypes lacks Ingress" in w for w in warnings)


def test_cidr_host_bits_are_cleared_as_the_api_server_does() -> None:
    policy, _ = parse_policy_untrusted(doc({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.1.2.3/8"}}]}]}))
    assert str(policy.egress[0].peers[0].ip_block.cidr) == "10.0.0.0/8"


def test_ip_block_prefixes_are_the_cidr_minus_its_excepts() -> None:
    policy, _ = parse_policy_untrusted(doc({"podSelector": {}, "egress": [{"to": [{"ipBlock": {
        "cidr": "10.0.0.0/22", "except": ["10.0.1.0/24", "10.0.2.5/32", "10.0.1.128/25"]}}]}]}))
    block = policy.egress[0].peers[0].ip_block
    prefixes = [str(p) for p in block.prefixes()]
    assert prefixes[0] == "10.0.0.0/24" and "10.0.3.0/24" in prefixes
    assert not any(p.startswith("10.0.1.") for p in prefixes)
    from ipaddress import ip_address, ip_network
    for probe in ("10.0.0.1", "10.0.1.1", "10.0.2.4", "10.0.2.5", "10.0.2.6", "10.0.3.255", "10.0.4.0"):
        inside = any(ip_address(probe) in ip_network(p) for p in prefixes)
        assert inside == block.contains(ip_address(probe)), probe


@pytest.mark.parametrize("value,needle", [
    (b"not json", "not valid JSON"),
    (json.dumps(doc({"podSelector": {}}, name="other")).encode(), "names another policy"),
    (json.dumps(doc({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})).encode(),
     "namespaceSelector"),
    (b"x" * 70_000, "bytes"),
])
def test_records_from_etcd_are_untrusted(value: bytes, needle: str) -> None:
    with pytest.raises(RecordError, match=needle):
        parse_policy_record_untrusted("p", value)
