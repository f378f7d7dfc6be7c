"""The cluster zone's answers, built with dnspython (pure: no I/O, no clock).

    <domain>                      apex: SOA
    svc.<domain>, pod.<domain>    empty non-terminals: NODATA for every type
    <service>.svc.<domain>        A -> the service's VIP
    <pod>.pod.<domain>            A -> the pod's IP

Any other name under <domain> is NXDOMAIN; an existing name asked for another type (AAAA,
MX...) is NODATA (NOERROR, no answer). Negative answers carry the SOA in the authority
section, so resolvers cache them for its minimum TTL (RFC 2308). Names compare
case-insensitively (dnspython's Name equality); the question is echoed as sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from overlayd.dns.names import ClusterNames
from overlayd.dns.outcomes import ANSWER, NODATA, NXDOMAIN, REJECTED

TTL = 5  # seconds, as CoreDNS's kubernetes plugin: names follow pods that come and go
EDNS_PAYLOAD = 1232  # the UDP size we advertise (DNS flag day 2020)

@dataclass(frozen=True)
class ZoneResponse:
    message: dns.message.Message
    result: str


class Zone:
    """The answers for one ClusterNames snapshot."""

    def __init__(self, names: ClusterNames) -> None:
        self.origin = dns.name.from_text(names.domain)
        self._addresses: dict[dns.name.Name, IPv4Address] = {}
        for kind, table in ((b"svc", names.services), (b"pod", names.pods)):
            for label, address in table.items():
                self._addresses[dns.name.Name((label.encode(), kind)).concatenate(self.origin)] = address
        self._nonterminals = frozenset(dns.name.Name((kind,)).concatenate(self.origin) for kind in (b"svc", b"pod"))
        self._soa = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.SOA,
            f"ns.dns.{self.origin} hostmaster.{self.origin} 1 7200 1800 86400 {TTL}")

    def holds(self, name: dns.name.Name) -> bool:
        """Is `name` in this zone (the apex or below it)? Others are forwarded."""
        return name.is_subdomain(self.origin)

    def respond(self, query: dns.message.Message) -> ZoneResponse:
        """The response to a query whose one question is in this zone (see holds())."""
        question = query.question[0]
        response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        response.flags |= dns.flags.AA | dns.flags.RA  # RA: other names are forwarded for the client
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)  # RFC 6891 6.1.3
            return ZoneResponse(response, REJECTED)
        if question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
            response.set_rcode(dns.rcode.REFUSED)
            return ZoneResponse(response, REJECTED)
        name, rdtype = question.name, question.rdtype
        address = self._addresses.get(name)
        if address is not None and rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            # ANY gets the A record only, as RFC 8482 allows.
            response.answer.append(dns.rrset.from_text(name, TTL, dns.rdataclass.IN, dns.rdatatype.A, str(address)))
            return ZoneResponse(response, ANSWER)
        if name == self.origin and rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            response.answer.append(self._soa_rrset(name))
            return ZoneResponse(response, ANSWER)
        response.authority.append(self._soa_rrset(self.origin))
        if address is not None or name == self.origin or name in self._nonterminals:
            return ZoneResponse(response, NODATA)
        response.set_rcode(dns.rcode.NXDOMAIN)
        return ZoneResponse(response, NXDOMAIN)

    def _soa_rrset(self, owner: dns.name.Name) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.add(self._soa, TTL)
        return rrset
