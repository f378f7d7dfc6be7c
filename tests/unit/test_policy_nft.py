"""The nftables rules of network policy (overlayd/policy/nft.py): their shape, and, through a small
interpreter of exactly the rule forms we generate, agreement with the pure model for random
policies and pods (hypothesis). The lab's truth-table test checks the same against the kernel."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from overlayd.nat import ruleset
from overlayd.nat.ruleset import NatSpec
from overlayd.policy import cache, nft
from overlayd.policy.counters import PolicyCounters
from overlayd.policy.model import Policy, parse_policy_untrusted
from overlayd.policy.reach import Endpoint, evaluate
from overlayd.registry.records import PodEntry
from overlayd.registry.view import Change, RegistryView

SUBNET = ip_network("10.244.1.0/24")


def policy(name: str, spec: dict[str, Any]) -> Policy:
    return parse_policy_untrusted({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                   "metadata": {"name": name}, "spec": spec})[0]


def run(table: nft.PolicyTable, src: str, dst: str, proto: str, port: int | None) -> bool:
    """Whether a new flow passes the policy_forward chain (the rule forms nft.py writes, no others)."""
    sets = {s.name: s for s in table.sets}
    chains = {name: rules for name, _, rules in table.chains}
    packet = {"saddr": ip_address(src), "daddr": ip_address(dst)}

    def member(name: str, ip: IPv4Address) -> bool:
        s = sets[name]
        return any(ip in ip_network(e) for e in s.elements) if s.interval else str(ip) in s.elements

    def matches(rule: str) -> bool:
        for m in re.finditer(r"ip (saddr|daddr) (!= )?(@\S+|\S+/\d+)", rule):
            ip = packet[m.group(1)]
            hit = member(m.group(3)[1:], ip) if m.group(3).startswith("@") else ip in ip_network(m.group(3))
            if hit == bool(m.group(2)):
                return False
        m = re.search(r"(tcp|udp|sctp) dport (\d+)(?:-(\d+))?", rule)
        if m and (proto != m.group(1) or port is None or not int(m.group(2)) <= port <= int(m.group(3) or m.group(2))):
            return False
        m = re.search(r"meta l4proto (\w+)", rule)
        return not (m and proto != m.group(1))

    def chain(name: str) -> str:
        for rule in chains[name]:
            if rule.startswith("ct state"):
                continue  # a new flow
            if not matches(rule):
                continue
            verdict = re.search(r"(accept|drop|return|jump \S+)(?: comment .*)?$", rule)
            if verdict is None:
                continue  # a counter alone
            word = verdict.group(1)
            if word.startswith("jump"):
                if chain(word.split()[1]) == "drop":
                    return "drop"
                continue
            return word
        return "return"

    return chain("policy_forward") != "drop"


def test_no_policy_no_rules() -> None:
    assert nft.build([], [], SUBNET) is None
    spec = NatSpec("overlayd", ip_network("10.244.0.0/16"), SUBNET, "br0", True)
    assert "policy_forward" not in ruleset.render(spec) and "counter" not in ruleset.render(spec)


def test_shape_of_the_rules() -> None:
    web = policy("web", {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}},
                                               {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}},
                                               {"ipBlock": {"cidr": "fd00::/8"}}],
                                      "ports": [{"port": 80}, {"protocol": "UDP", "port": 53, "endPort": 54}]}]})
    elsewhere = policy("elsewhere", {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"]})
    pods = [nft.PodIP(ip_address("10.244.1.2"), frozenset({("app", "web")}), True),
            nft.PodIP(ip_address("10.244.2.2"), frozenset({("app", "web")}), False),
            nft.PodIP(ip_address("10.244.2.3"), frozenset({("app", "client")}), False),
            nft.PodIP(ip_address("10.244.3.3"), frozenset({("app", "db")}), False)]
    table = nft.build([web, elsewhere], pods, SUBNET)
    assert table is not None
    assert table.counters == ("policy_unknown", "pe_elsewhere", "pi_web")
    sets = {s.name: s.elements for s in table.sets}
    assert sets["local_pods"] == ("10.244.1.2",) and sets["iso_ingress"] == ("10.244.1.2",)
    assert sets["iso_egress"] == ()  # db runs on another host: nothing to enforce here
    chains = {name: rules for name, _, rules in table.chains}
    assert chains["policy_forward"][0] == "ct state established,related accept"
    assert 'ip saddr 10.244.1.0/24 ip saddr != @local_pods counter name "policy_unknown" drop' in chains["policy_forward"]
    ingress = chains["policy_ingress"]
    assert len([r for r in ingress if r.endswith('return comment "web ingress 0"')]) == 4  # 2 peers x 2 ports, no v6
    assert 'ip daddr @l0 ip saddr @p0 tcp dport 80 return comment "web ingress 0"' in ingress
    assert any("udp dport 53-54" in r for r in ingress)
    assert ingress[-2:] == ('ip daddr @l0 counter name "pi_web"', "drop")
    assert chains["policy_egress"] == ("drop",)
    blocks = [s for s in table.sets if s.interval]
    assert len(blocks) == 1 and "192.168.1.0/24" not in blocks[0].elements and "192.168.0.0/24" in blocks[0].elements
    # The rendered table reads back as itself (counter values ignored), whatever the order of inputs.
    spec = NatSpec("overlayd", ip_network("10.244.0.0/16"), SUBNET, "br0", True, policy=table)
    listed = ruleset.render(spec).replace("packets 0 bytes 0", "packets 7 bytes 420")
    assert ruleset.matches(listed, spec)
    assert nft.build([elsewhere, web], list(reversed(pods)), SUBNET) == table


def test_a_pod_unknown_to_the_rules_is_dropped_when_policies_exist() -> None:
    table = nft.build([policy("any", {"podSelector": {"matchLabels": {"x": "y"}}})],
                      [nft.PodIP(ip_address("10.244.1.2"), frozenset(), True)], SUBNET)
    assert table is not None
    assert run(table, "10.244.1.2", "10.244.2.9", "tcp", 80)
    assert not run(table, "10.244.1.77", "10.244.2.9", "tcp", 80), "a local address not yet in the rules"
    assert not run(table, "10.244.2.9", "10.244.1.77", "tcp", 80)


LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b"]), max_size=2)
SELECTOR = st.one_of(
    st.just({}),
    st.builds(lambda k, v: {"matchLabels": {k: v}}, st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b"])),
    st.builds(lambda k, op, vs: {"matchExpressions": [{"key": k, "operator": op, **({"values": vs} if op in (
        "In", "NotIn") else {})}]}, st.sampled_from(["app", "tier"]),
        st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]), st.sampled_from([["a"], ["a", "b"]])),
)
PEER = st.one_of(
    st.builds(lambda s: {"podSelector": s}, SELECTOR),
    st.sampled_from([{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}},
                     {"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.2/32"]}},
                     {"ipBlock": {"cidr": "0.0.0.0/0"}}]),
)
PORT = st.sampled_from([{"port": 80}, {"port": 80, "endPort": 81}, {"protocol": "UDP"}, {"protocol": "UDP", "port": 81}])
RULE = st.fixed_dictionaries({}, optional={"peers": st.lists(PEER, max_size=2), "ports": st.lists(PORT, max_size=2)})
SPEC = st.fixed_dictionaries({"podSelector": SELECTOR}, optional={
    "policyTypes": st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
    "ingress": st.lists(RULE, max_size=2), "egress": st.lists(RULE, max_size=2)})


def _k8s(spec: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    for direction, field in (("ingress", "from"), ("egress", "to")):
        if direction in out:
            out[direction] = [{**({field: r["peers"]} if r.get("peers") else {}),
                               **({"ports": r["ports"]} if r.get("ports") else {})} for r in out[direction]]
    return out


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(SPEC, min_size=1, max_size=3), labels=st.lists(LABELS, min_size=4, max_size=4),
       flow=st.tuples(st.integers(0, 4), st.integers(0, 4), st.sampled_from([("tcp", 80), ("tcp", 81), ("udp", 81)])))
def test_the_rules_agree_with_the_model(specs: list[dict], labels: list[dict], flow: tuple) -> None:
    """Pods 0-1 on this host, 2-3 on another; 4 an address outside the cluster. Each host enforces
    for its own pods, so a flow passes when this host's rules and the other host's both pass it."""
    policies = [policy(f"p{i}", _k8s(s)) for i, s in enumerate(specs)]
    ips = ["10.244.1.2", "10.244.1.3", "10.244.2.2", "10.244.2.3", "192.0.2.1"]
    hosts = [SUBNET, SUBNET, ip_network("10.244.2.0/24"), ip_network("10.244.2.0/24")]
    src, dst, (proto, port) = flow[0], flow[1], flow[2]
    if src == dst:
        return

    def endpoint(i: int) -> Endpoint:
        return Endpoint(ip_address(ips[i]), labels[i]) if i < 4 else Endpoint(ip_address(ips[i]))

    want = evaluate(policies, endpoint(src), endpoint(dst), proto, port).allowed
    passed = True
    for subnet in {hosts[i] for i in (src, dst) if i < 4}:
        pods = [nft.PodIP(ip_address(ips[i]), frozenset(labels[i].items()), hosts[i] == subnet) for i in range(4)]
        table = nft.build(policies, pods, subnet)
        assert table is not None
        passed &= run(table, ips[src], ips[dst], proto, port)
    assert passed == want


def _entry(name: str, node: str, ip: str, **labels: str) -> PodEntry:
    return PodEntry(name, node, ip_address(ip), labels)


def test_the_registry_view_follows_policies_and_refuses_bad_records() -> None:
    view = RegistryView("/o")
    good = policy("good", {"podSelector": {}})
    from overlayd.policy.records import policy_json

    assert view.apply([Change(b"/o/policies/good", policy_json(good))])
    assert view.policies == {"good": good}
    assert not view.apply([Change(b"/o/policies/bad", b'{"kind": "NetworkPolicy"}')])
    assert "/o/policies/bad" in view.refused
    assert view.apply([Change(b"/o/policies/good", None)]) and view.policies == {}
    view.reset("/o/policies/", [Change(b"/o/policies/good", policy_json(good))])
    assert view.policies == {"good": good} and "/o/policies/bad" not in view.refused


def test_the_cache_round_trips_and_a_damaged_one_is_skipped(tmp_path: Path) -> None:
    policies = [policy("a", {"podSelector": {"matchLabels": {"app": "x"}}, "ingress": [{}]})]
    pods = [_entry("w", "h2", "10.244.2.2", app="x"), PodEntry("cni:abc", "h3", ip_address("10.244.3.2"), {}, "cni")]
    cache.save(tmp_path, policies, pods)
    assert cache.load(tmp_path) == (policies, pods)
    (tmp_path / cache.FILE_NAME).write_text('{"policies": [{"kind": "x"}], "pods": []}')
    assert cache.load(tmp_path) == ([], [])
    (tmp_path / cache.FILE_NAME).write_text("{trunc")
    assert cache.load(tmp_path) == ([], [])


def test_counters_carry_over_a_rewrite() -> None:
    counters = PolicyCounters("overlayd")
    counters.names = ("pi_a", "policy_unknown")
    counters.seen({"pi_a": 5, "policy_unknown": 1})
    assert counters.totals() == {"pi_a": 5, "policy_unknown": 1}
    counters.rewritten({"pi_a": 6, "policy_unknown": 1})  # read just before the table was replaced
    assert counters.totals() == {"pi_a": 6, "policy_unknown": 1}
    counters.seen({"pi_a": 2})  # the new table's counters start at zero
    assert counters.totals() == {"pi_a": 8, "policy_unknown": 1}
    assert nft.counter_values_untrusted({"nftables": [{"counter": {"name": "pi_a", "packets": 3}},
                                                      {"counter": {"name": "x", "packets": -1}}, "junk"]}) == {"pi_a": 3}
