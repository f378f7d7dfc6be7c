"""The cluster zone's answers and the resolver's decisions on query bytes (pure).

Queries are built and responses read back with dnspython; the wire-level judge independent
of dnspython (scapy) is in tests/integration/test_dns_server.py.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.update
import pytest

from overlayd.dns import resolver as resolver_module
from overlayd.dns.names import ClusterNames
from overlayd.dns.resolver import MAX_QUERY_BYTES, Answer, Drop, Forward, NamesSource, Resolver

WEB_VIP = IPv4Address("10.96.0.10")
POD1_IP = IPv4Address("10.244.1.2")
NAMES = ClusterNames("cluster.local", pods={"pod1": POD1_IP}, services={"web": WEB_VIP})


def query(name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]


def ask(resolver: Resolver, q: dns.message.Message) -> tuple[dns.message.Message, str]:
    decision = resolver.resolve_untrusted(q.to_wire())
    assert isinstance(decision, Answer), decision
    return dns.message.from_wire(decision.wire), decision.result


def addresses(response: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in response.answer for rdata in rrset if rrset.rdtype == dns.rdatatype.A]


def soa_in_authority(response: dns.message.Message) -> bool:
    return [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]


@pytest.mark.parametrize(("name", "expected"), [("web.svc.cluster.local", WEB_VIP),
                                                 ("pod1.pod.cluster.local", POD1_IP)])
def test_services_and_pods_get_their_address(name: str, expected: IPv4Address) -> None:
    q = query(name)
    response, result = ask(Resolver(NAMES), q)
    assert result == "answer" and response.rcode() == dns.rcode.NOERROR
    assert addresses(response) == [str(expected)] and response.answer[0].ttl == 5
    assert response.id == q.id and response.flags & dns.flags.AA and response.flags & dns.flags.QR
    assert response.question == q.question


def test_names_are_case_insensitive_and_the_question_is_echoed_as_sent() -> None:
    q = query("WeB.SVC.Cluster.LOCAL")
    decision = Resolver(NAMES).resolve_untrusted(q.to_wire())
    assert isinstance(decision, Answer) and decision.result == "answer"
    assert b"\x03WeB\x03SVC\x07Cluster\x05LOCAL\x00" in decision.wire  # the question's bytes, case kept
    assert addresses(dns.message.from_wire(decision.wire)) == [str(WEB_VIP)]


@pytest.mark.parametrize("name", ["nope.svc.cluster.local", "nope.pod.cluster.local", "web.pod.cluster.local",
                                  "pod1.svc.cluster.local", "x.web.svc.cluster.local", "other.cluster.local"])
def test_names_under_the_domain_that_do_not_exist_are_nxdomain_with_the_soa(name: str) -> None:
    response, result = ask(Resolver(NAMES), query(name))
    assert result == "nxdomain" and response.rcode() == dns.rcode.NXDOMAIN
    assert response.answer == [] and soa_in_authority(response) and response.flags & dns.flags.AA
    soa = response.authority[0]
    assert soa.name == dns.name.from_text("cluster.local") and soa[0].minimum == 5


@pytest.mark.parametrize(("name", "rdtype"), [("web.svc.cluster.local", "AAAA"), ("pod1.pod.cluster.local", "MX"),
                                              ("web.svc.cluster.local", "TXT"), ("svc.cluster.local", "A"),
                                              ("pod.cluster.local", "AAAA"), ("cluster.local", "A")])
def test_existing_names_asked_for_another_type_are_nodata(name: str, rdtype: str) -> None:
    response, result = ask(Resolver(NAMES), query(name, rdtype))
    assert result == "nodata" and response.rcode() == dns.rcode.NOERROR
    assert response.answer == [] and soa_in_authority(response)


def test_the_apex_answers_its_soa_and_any_gets_the_address() -> None:
    response, result = ask(Resolver(NAMES), query("cluster.local", "SOA"))
    assert result == "answer" and [r.rdtype for r in response.answer] == [dns.rdatatype.SOA]
    response, result = ask(Resolver(NAMES), query("web.svc.cluster.local", "ANY"))
    assert result == "answer" and addresses(response) == [str(WEB_VIP)]


def test_other_classes_are_refused_and_edns_versions_above_0_get_badvers() -> None:
    response, result = ask(Resolver(NAMES), query("web.svc.cluster.local", rdclass=dns.rdataclass.CH))
    assert result == "rejected" and response.rcode() == dns.rcode.REFUSED
    q = query("web.svc.cluster.local")
    q.use_edns(1)
    response, result = ask(Resolver(NAMES), q)
    assert result == "rejected" and response.rcode() == dns.rcode.BADVERS


def test_edns_queries_get_edns_answers_and_recursion_desired_is_echoed() -> None:
    response, _ = ask(Resolver(NAMES), query("web.svc.cluster.local", use_edns=0, payload=4096))
    assert response.edns == 0 and response.payload == 1232
    plain, _ = ask(Resolver(NAMES), query("web.svc.cluster.local"))
    assert plain.edns == -1 and plain.flags & dns.flags.RD and plain.flags & dns.flags.RA
    q = query("web.svc.cluster.local")
    q.flags &= ~dns.flags.RD
    response, _ = ask(Resolver(NAMES), q)
    assert not response.flags & dns.flags.RD


def test_another_domain_is_served_and_the_default_one_is_then_forwarded() -> None:
    resolver = Resolver(ClusterNames("corp.internal", services={"web": WEB_VIP}))
    assert addresses(ask(resolver, query("web.svc.corp.internal"))[0]) == [str(WEB_VIP)]
    assert isinstance(resolver.resolve_untrusted(query("web.svc.cluster.local").to_wire()), Forward)


@pytest.mark.parametrize("name", ["example.com", "web", "local", "svc.cluster.local.example.com", "cluster.localx"])
def test_other_names_are_forwarded_with_a_servfail_ready(name: str) -> None:
    q = query(name, use_edns=0)
    wire = q.to_wire()
    decision = Resolver(NAMES).resolve_untrusted(wire)
    assert isinstance(decision, Forward) and decision.query == wire
    assert decision.question.name == dns.name.from_text(name) and decision.question.rdtype == dns.rdatatype.A
    servfail = dns.message.from_wire(decision.servfail)
    assert servfail.rcode() == dns.rcode.SERVFAIL and servfail.id == q.id and servfail.question == q.question


# --- what is dropped ------------------------------------------------------------------------


def wire_of(name: str = "web.svc.cluster.local") -> bytes:
    return query(name).to_wire()


def compression_loop() -> bytes:
    """Header with one question whose name is a pointer to itself (offset 12)."""
    return bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\xc0\x0c" + b"\x00\x01\x00\x01"


def two_pointer_loop() -> bytes:
    """A name that points forward at a pointer back to it: 12 -> 16 -> 12."""
    return bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\xc0\x10\x00\x01" + b"\xc0\x0c\x00\x01"


def with_flags(wire: bytes, flags: int) -> bytes:
    return wire[:2] + flags.to_bytes(2, "big") + wire[4:]


def with_counts(wire: bytes, qd: int, an: int = 0) -> bytes:
    return wire[:4] + qd.to_bytes(2, "big") + an.to_bytes(2, "big") + wire[8:]


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "malformed"),
    (b"\x12\x34\x01", "malformed"),  # shorter than a header
    (wire_of()[:-3], "malformed"),  # question cut short
    (wire_of() + b"junk", "malformed"),  # trailing bytes
    (with_counts(wire_of()[:12], 0), "malformed"),  # a header and no question
    (with_counts(wire_of() + wire_of()[12:], 2), "malformed"),  # two questions
    (with_counts(wire_of(), 1, an=3), "malformed"),  # counts promise records that are not there
    (compression_loop(), "bad_pointer"),
    (two_pointer_loop(), "bad_pointer"),
    (with_flags(wire_of(), 0x8180), "response"),  # QR set
    (dns.update.UpdateMessage("cluster.local").to_wire(), "not_query"),
    (with_flags(wire_of(), dns.opcode.NOTIFY << 11), "not_query"),
    (wire_of() + bytes(MAX_QUERY_BYTES), "oversized"),
], ids=["empty", "short-header", "cut-question", "trailing", "no-question", "two-questions", "missing-records",
        "self-pointer", "pointer-loop", "response", "update", "notify", "oversized"])
def test_bad_input_is_dropped_with_its_reason(data: bytes, reason: str) -> None:
    assert Resolver(NAMES).resolve_untrusted(data) == Drop(reason)


def test_a_query_of_the_largest_size_is_read_and_one_byte_more_is_not() -> None:
    q = query("web.svc.cluster.local", use_edns=0, options=[dns.edns.GenericOption(65001, b"")])
    padding = MAX_QUERY_BYTES - len(q.to_wire())
    q = query("web.svc.cluster.local", use_edns=0, options=[dns.edns.GenericOption(65001, bytes(padding))])
    assert len(q.to_wire()) == MAX_QUERY_BYTES
    assert isinstance(Resolver(NAMES).resolve_untrusted(q.to_wire()), Answer)
    assert Resolver(NAMES).resolve_untrusted(q.to_wire() + b"\x00") == Drop("oversized")


# --- the memo and the source ----------------------------------------------------------------


def test_a_repeated_query_gets_its_own_id_from_the_memo() -> None:
    resolver = Resolver(NAMES)
    first, second = query("web.svc.cluster.local"), query("web.svc.cluster.local")
    second.id = (first.id + 1) % 65536
    a, b = resolver.resolve_untrusted(first.to_wire()), resolver.resolve_untrusted(second.to_wire())
    assert isinstance(a, Answer) and isinstance(b, Answer)
    assert dns.message.from_wire(b.wire).id == second.id and a.wire[2:] == b.wire[2:]
    other = query("example.com")
    f1 = resolver.resolve_untrusted(other.to_wire())
    other.id = (other.id + 7) % 65536
    f2 = resolver.resolve_untrusted(other.to_wire())
    assert isinstance(f2, Forward) and isinstance(f1, Forward) and f2.query == other.to_wire()
    assert dns.message.from_wire(f2.servfail).id == other.id


def test_the_memo_is_bounded_and_never_holds_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_module, "CACHE_ENTRIES", 3)
    resolver = Resolver(NAMES)
    for i in range(5):
        resolver.resolve_untrusted(query(f"n{i}.svc.cluster.local").to_wire())
        resolver.resolve_untrusted(compression_loop() + bytes([i]))
    assert len(resolver._cache) == 3
    decision = resolver.resolve_untrusted(query("n0.svc.cluster.local").to_wire())  # evicted: built again
    assert isinstance(decision, Answer) and decision.result == "nxdomain"
    big = query("web.svc.cluster.local", use_edns=0, options=[dns.edns.GenericOption(65001, bytes(300))])
    resolver._cache.clear()
    assert isinstance(resolver.resolve_untrusted(big.to_wire()), Answer) and not resolver._cache  # too big to keep


def test_an_update_takes_effect_with_the_next_query() -> None:
    source = NamesSource(NAMES)
    q = query("api.svc.cluster.local").to_wire()
    first = source.resolver.resolve_untrusted(q)
    assert isinstance(first, Answer) and first.result == "nxdomain"  # and memoised so
    source.update(ClusterNames("cluster.local", services={"web": WEB_VIP, "api": IPv4Address("10.96.0.11")}))
    decision = source.resolver.resolve_untrusted(q)
    assert isinstance(decision, Answer) and addresses(dns.message.from_wire(decision.wire)) == ["10.96.0.11"]
    assert source.names.services["api"] == IPv4Address("10.96.0.11")
    before = source.resolver
    source.update(ClusterNames("cluster.local", services={"web": WEB_VIP, "api": IPv4Address("10.96.0.11")}))
    assert source.resolver is before  # same names: the warm memo stays


def test_an_empty_source_answers_nxdomain_for_the_default_domain() -> None:
    response, result = ask(NamesSource().resolver, query("web.svc.cluster.local"))
    assert result == "nxdomain" and response.rcode() == dns.rcode.NXDOMAIN
