"""The nftables ruleset generator and the plan for other tables' forward chains (pure)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from overlayd.nat.ports import parse_publish
from overlayd.nat.ruleset import NatSpec, Published, matches, plan_holes_untrusted, render, replace_table

SPEC = NatSpec("overlayd", ip_network("10.244.0.0/16"), ip_network("10.244.3.0/24"), "ovl0", True)
WEB = ip_address("10.244.3.5")


def rules(spec: NatSpec, chain: str) -> list[str]:
    text = render(spec)
    body = text.split(f"chain {chain} {{\n", 1)[1].split("\t}", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("type ")]


def test_pod_to_pod_returns_before_egress_masquerade() -> None:
    postrouting = rules(SPEC, "postrouting")
    assert postrouting.index("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return") < \
        postrouting.index("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade")
    # Hairpin and localhost flows to published ports come first: they are pod-bound too.
    assert postrouting[:2] == ['oifname "ovl0" ct status dnat ip saddr 10.244.3.0/24 masquerade',
                               'oifname "ovl0" ip saddr 127.0.0.0/8 masquerade']


def test_ip_masq_off_drops_only_the_egress_rule() -> None:
    off = NatSpec(**{**SPEC.__dict__, "ip_masq": False})
    assert rules(off, "postrouting") == rules(SPEC, "postrouting")[:-1]


def test_published_ports_become_dnat_rules_sorted() -> None:
    spec = NatSpec(**{**SPEC.__dict__, "published": (
        Published(WEB, parse_publish("53:5353/udp")),
        Published(WEB, parse_publish("198.18.0.11:8080:80/tcp")),
        Published(ip_address("10.244.3.6"), parse_publish("8081:80/tcp")))})
    assert rules(spec, "published") == [
        "ip daddr 198.18.0.11 tcp dport 8080 dnat ip to 10.244.3.5:80",
        "tcp dport 8081 dnat ip to 10.244.3.6:80",
        "udp dport 53 dnat ip to 10.244.3.5:5353",
    ]
    assert rules(spec, "prerouting") == rules(spec, "output") == ["jump services", "fib daddr type local jump published"]


def test_the_table_is_marked_and_replaced_in_one_transaction() -> None:
    text = replace_table(SPEC)
    assert text.startswith("add table inet overlayd\ndelete table inet overlayd\ntable inet overlayd {\n"
                           '\tcomment "managed by overlayd"\n')
    assert text.count("table inet overlayd {") == 1


def test_matches_ignores_blank_lines_and_indentation_only() -> None:
    listed = render(SPEC).replace("\t", "    ").replace("\n\n", "\n")
    assert matches(listed, SPEC)
    assert not matches(listed.replace("masquerade\n", "masquerade\n ip daddr 1.2.3.4 drop\n", 1), SPEC)
    assert not matches(render(NatSpec(**{**SPEC.__dict__, "ip_masq": False})), SPEC)


def test_ipv6_network_uses_ip6_and_no_localhost_rules() -> None:
    v6 = NatSpec("overlayd", ip_network("fd00:10::/48"), ip_network("fd00:10:0:3::/64"), "ovl0", True)
    text = render(v6)
    assert "ip6 saddr fd00:10::/48 ip6 daddr != ff00::/8 masquerade" in text
    assert "127.0.0.0/8" not in text and "chain input" not in text


def _chain(family: str, table: str, name: str, policy: str = "drop", hook: str = "forward") -> dict:
    return {"chain": {"family": family, "table": table, "name": name, "hook": hook, "policy": policy, "handle": 1}}


def _rule(family: str, table: str, chain: str, comment: str, handle: int) -> dict:
    return {"rule": {"family": family, "table": table, "chain": chain, "comment": comment, "handle": handle}}


def test_holes_go_into_foreign_forward_chains_with_policy_drop_only() -> None:
    ruleset = {"nftables": [{"metainfo": {}}, _chain("ip", "filter", "FORWARD"),
                            _chain("ip", "other", "fwd", policy="accept"), _chain("ip", "filter", "INPUT", hook="input"),
                            _chain("ip6", "filter", "FORWARD"), _chain("inet", "overlayd", "forward")]}
    plan = plan_holes_untrusted(ruleset, SPEC)
    assert plan.delete == ()
    assert plan.insert == (
        'insert rule ip filter FORWARD ip saddr 10.244.0.0/16 counter accept comment '
        '"overlayd:overlayd saddr 10.244.0.0/16"',
        'insert rule ip filter FORWARD ip daddr 10.244.0.0/16 counter accept comment '
        '"overlayd:overlayd daddr 10.244.0.0/16"',
    )


def test_present_holes_are_kept_and_stray_ones_deleted() -> None:
    ruleset = {"nftables": [
        _chain("ip", "filter", "FORWARD"),
        _rule("ip", "filter", "FORWARD", "overlayd:overlayd saddr 10.244.0.0/16", 7),
        _rule("ip", "filter", "FORWARD", "overlayd:overlayd daddr 10.244.0.0/16", 8),
        _rule("ip", "filter", "FORWARD", "overlayd:overlayd daddr 10.244.0.0/16", 9),  # a duplicate
        _rule("ip", "filter", "FORWARD", "overlayd:overlayd saddr 10.99.0.0/16", 10),  # an old network
        _rule("ip", "gone", "fwd", "overlayd:overlayd saddr 10.244.0.0/16", 11),  # policy no longer drop
        _rule("ip", "filter", "FORWARD", "overlayd:other saddr 10.244.0.0/16", 12),  # another daemon's table
        _rule("ip", "filter", "FORWARD", "docker", 13),
    ]}
    plan = plan_holes_untrusted(ruleset, SPEC)
    assert plan.insert == ()
    assert plan.delete == ("delete rule ip filter FORWARD handle 9", "delete rule ip filter FORWARD handle 10",
                           "delete rule ip gone fwd handle 11")


def test_odd_kernel_json_is_ignored_not_passed_to_nft() -> None:
    for ruleset in (None, [], {"nftables": 5}, {"nftables": [5, "x", {"chain": 3}, {"rule": []}]}):
        assert plan_holes_untrusted(ruleset, SPEC).commands == ()
    weird = {"nftables": [_chain("ip", 'fil"ter', "FORWARD"), _chain("ip", "filter", "FOR WARD"),
                          _rule("ip", "filter", "FORWARD", "overlayd:overlayd x", "1; flush ruleset")]}
    assert plan_holes_untrusted(weird, SPEC).commands == ()
