"""The pod resolv.conf: loopback resolvers of the host replaced by ones a pod can reach."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given
from hypothesis import strategies as st

from overlayd.pods.dns import cni_dns, parse_resolv_conf_untrusted, pod_resolv

RESOLVED_STUB = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n"
RESOLVED_UPSTREAMS = "# upstreams\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch corp.example\n"


def nameservers(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver ")]


def test_systemd_resolved_stub_is_replaced_by_its_upstreams() -> None:
    text, problem = pod_resolv(RESOLVED_STUB, RESOLVED_UPSTREAMS)
    assert nameservers(text) == ["192.0.2.53", "2001:db8::53"] and problem is None
    assert "search corp.example" in text and "options edns0 trust-ad" in text


def test_reachable_resolvers_are_kept_and_loopback_ones_dropped() -> None:
    text, problem = pod_resolv("nameserver 127.0.0.1\nnameserver 10.255.255.53\n")
    assert nameservers(text) == ["10.255.255.53"] and problem is None


def test_only_loopback_and_no_upstreams_is_a_problem_to_report() -> None:
    text, problem = pod_resolv(RESOLVED_STUB)
    assert nameservers(text) == [] and problem is not None and "[dns] servers" in problem


def test_the_operators_servers_win() -> None:
    text, _ = pod_resolv(RESOLVED_STUB, RESOLVED_UPSTREAMS, [ip_address("10.96.0.10")])
    assert nameservers(text) == ["10.96.0.10"] and "search corp.example" in text


def test_at_most_three_nameservers_without_duplicates() -> None:
    host = "".join(f"nameserver 192.0.2.{n}\n" for n in (1, 1, 2, 3, 4))
    assert nameservers(pod_resolv(host)[0]) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_parser_skips_what_libc_skips() -> None:
    parsed = parse_resolv_conf_untrusted("nameserver\nnameserver not-an-ip\nnameserver fe80::1%eth0 # c\n"
                                         "domain a.example\nsearch b.example c.example\n")
    assert [str(ns) for ns in parsed.nameservers] == ["fe80::1"]
    assert parsed.search == ("b.example", "c.example")


@given(st.text(max_size=400))
def test_any_text_gives_a_resolv_conf_and_never_raises(text: str) -> None:
    written, _ = pod_resolv(text)
    assert written.endswith("\n") and all(not ns.startswith("127.") for ns in nameservers(written))


def test_the_cni_result_dns_is_the_pods_resolv_conf() -> None:
    text, _ = pod_resolv(RESOLVED_STUB, RESOLVED_UPSTREAMS)
    assert cni_dns(text) == {"nameservers": ["192.0.2.53", "2001:db8::53"], "search": ["corp.example"],
                             "options": ["edns0", "trust-ad"]}
    assert cni_dns("# nothing reachable\n") == {}
