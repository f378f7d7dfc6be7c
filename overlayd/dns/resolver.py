"""Query bytes in, one decision out: Answer, Forward or Drop (pure: no I/O, no clock).

Every answer's bytes are made by dnspython. A response depends only on the query's bytes and
the names snapshot, and the 16-bit ID is the only part of a query that changes between
otherwise identical queries (glibc, dnsperf and caching resolvers repeat the same bytes), so
decisions are memoised by the query without its ID: a repeated query costs one dict lookup
and an ID patch instead of a parse and a build (about 55 us with dnspython). The cache lives
and dies with its Resolver, one per snapshot, so an update never serves a stale answer;
it is bounded (oldest out first) and never holds drops, so garbage cannot push answers out.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode

from overlayd.dns.names import ClusterNames
from overlayd.dns.outcomes import DROP_BAD_POINTER, DROP_MALFORMED, DROP_NOT_QUERY, DROP_OVERSIZED, DROP_RESPONSE
from overlayd.dns.zone import EDNS_PAYLOAD, Zone

# A query is a header, one name (at most 255 bytes) and an OPT record with a few options;
# anything longer is not a query we need to read. Servers read MAX_QUERY_BYTES + 1 to tell.
MAX_QUERY_BYTES = 1232
# The memo holds at most CACHE_ENTRIES decisions for queries of at most MEMO_MAX_QUERY bytes
# (an ordinary query is 30-100 bytes; a name of 255 and a cookie still fit): under 8 MB even
# when a client fills it with the largest distinct queries it may.
CACHE_ENTRIES = 8192
MEMO_MAX_QUERY = 320


@dataclass(frozen=True, slots=True)
class Question:
    """What a forwarded query asked, to match the upstream's reply against."""

    name: dns.name.Name
    rdtype: int
    rdclass: int


@dataclass(frozen=True, slots=True)
class Answer:
    wire: bytes  # the response, with the query's ID
    result: str  # overlayd.dns.outcomes.RESULTS


@dataclass(frozen=True, slots=True)
class Forward:
    """Not our name: send `query` upstream. `servfail` is the reply if no upstream answers."""

    query: bytes
    servfail: bytes
    question: Question


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str  # overlayd.dns.outcomes.DROP_REASONS


Decision = Answer | Forward | Drop


def _with_id(decision: Answer | Forward, query: bytes) -> Answer | Forward:
    """A cached decision for an identical query, given this query's ID."""
    query_id = query[:2]
    if isinstance(decision, Answer):
        return Answer(query_id + decision.wire[2:], decision.result)
    return Forward(query, query_id + decision.servfail[2:], decision.question)


class Resolver:
    """The decisions for one ClusterNames snapshot."""

    def __init__(self, names: ClusterNames) -> None:
        self.names = names
        self._zone = Zone(names)
        self._cache: dict[bytes, Answer | Forward] = {}

    def resolve_untrusted(self, query: bytes) -> Decision:
        """The decision for `query`, raw bytes from the network; never raises for any input."""
        if len(query) > MAX_QUERY_BYTES:
            return Drop(DROP_OVERSIZED)
        key = query[2:]
        cached = self._cache.get(key)
        if cached is not None:
            return _with_id(cached, query)
        decision = self._decide_untrusted(query)
        if not isinstance(decision, Drop) and len(query) <= MEMO_MAX_QUERY:
            if len(self._cache) >= CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = decision
        return decision

    def _decide_untrusted(self, query: bytes) -> Decision:
        try:
            message = dns.message.from_wire(query)
        except dns.name.BadPointer:
            return Drop(DROP_BAD_POINTER)
        except dns.exception.DNSException:
            # FormError and its kinds (ShortHeader, TrailingJunk, BadLabelType...), BadEDNS, UnknownTSIGKey...
            return Drop(DROP_MALFORMED)
        if message.flags & dns.flags.QR:
            return Drop(DROP_RESPONSE)
        if message.opcode() != dns.opcode.QUERY:
            return Drop(DROP_NOT_QUERY)
        if len(message.question) != 1:
            return Drop(DROP_MALFORMED)
        question = message.question[0]
        if self._zone.holds(question.name):
            response = self._zone.respond(message)
            return Answer(response.message.to_wire(), response.result)
        servfail = dns.message.make_response(message, our_payload=EDNS_PAYLOAD)
        servfail.flags |= dns.flags.RA
        servfail.set_rcode(dns.rcode.SERVFAIL)
        return Forward(query, servfail.to_wire(), Question(question.name, question.rdtype, question.rdclass))


class NamesSource:
    """The current snapshot's Resolver, for the server to read per query.

    update() swaps in a new Resolver (a dict of the names, an empty cache) in one assignment,
    so a query in flight sees either the old names or the new ones, never a mix."""

    def __init__(self, names: ClusterNames | None = None) -> None:
        self.resolver = Resolver(names if names is not None else ClusterNames())

    @property
    def names(self) -> ClusterNames:
        return self.resolver.names

    def update(self, names: ClusterNames) -> None:
        if names != self.resolver.names:
            self.resolver = Resolver(names)
