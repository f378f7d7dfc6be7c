"""Property tests: no bytes make the resolver raise, and every answer answers its query."""

from __future__ import annotations

from ipaddress import IPv4Address

import dns.message
import dns.name
import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st

from overlayd.dns.names import ClusterNames
from overlayd.dns.resolver import Answer, Drop, Forward, Resolver

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
ADDRESS = st.integers(0, 2**32 - 1).map(IPv4Address)
NAMES = st.builds(ClusterNames, st.just("cluster.local"), st.dictionaries(LABEL, ADDRESS, max_size=5),
                  st.dictionaries(LABEL, ADDRESS, max_size=5))
RESOLVER = Resolver(ClusterNames(pods={"pod1": IPv4Address("10.244.1.2")}, services={"web": IPv4Address("10.96.0.10")}))
SEEDS = [dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
         for name in ("web.svc.cluster.local", "pod1.pod.cluster.local", "nope.svc.cluster.local", "example.com")
         for rdtype in ("A", "AAAA") for edns in (-1, 0)]


def check_decision(query: bytes, decision: object) -> None:
    """Whatever was decided is well formed; an answer parses and answers this query."""
    assert isinstance(decision, (Answer, Forward, Drop))
    if isinstance(decision, Answer):
        asked, response = dns.message.from_wire(query), dns.message.from_wire(decision.wire)
        assert response.id == asked.id and response.question == asked.question
    elif isinstance(decision, Forward):
        assert decision.query == query
        assert dns.message.from_wire(decision.servfail).id == dns.message.from_wire(query).id


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=1300))
def test_random_bytes_never_raise(data: bytes) -> None:
    check_decision(data, RESOLVER.resolve_untrusted(data))


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 200))
def test_mutated_queries_never_raise(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    data = data[:len(data) - cut % 8] if cut % 3 == 0 else data
    check_decision(bytes(data), RESOLVER.resolve_untrusted(bytes(data)))
    check_decision(bytes(data), RESOLVER.resolve_untrusted(bytes(data)))  # and again, from the memo


@settings(max_examples=100, deadline=None)
@given(NAMES, st.data())
def test_every_name_resolves_to_its_address_in_any_case(names: ClusterNames, data: st.DataObject) -> None:
    resolver = Resolver(names)
    for kind, table in (("svc", names.services), ("pod", names.pods)):
        for label, address in table.items():
            name = f"{label}.{kind}.cluster.local"
            cased = "".join(c.upper() if data.draw(st.booleans()) else c for c in name)
            decision = resolver.resolve_untrusted(dns.message.make_query(cased, "A").to_wire())
            assert isinstance(decision, Answer) and decision.result == "answer"
            response = dns.message.from_wire(decision.wire)
            assert [r.address for r in response.answer[0]] == [str(address)]
            assert response.question[0].name.to_text() == cased + "."  # echoed as sent
