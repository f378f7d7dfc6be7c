"""Cluster DNS: names of services and pods answered from memory, other names forwarded.

- names.py     ClusterNames: the frozen snapshot of what the zone holds (pure)
- zone.py      Zone: a parsed query -> the zone's dnspython response, or None for "not ours" (pure)
- resolver.py  Resolver: query bytes -> Answer | Forward | Drop, memoised per query (pure);
               NamesSource: the current Resolver, swapped by update(names)
- metrics.py   DnsMetrics: overlayd_dns_* counters in a given CollectorRegistry
- upstream.py  Upstreams: forwarding to the host's resolvers (trio, UDP then TCP on TC)
- framing.py   DNS-over-TCP length framing
- server.py    serve_dns: trio UDP and TCP server on one address
"""

from overlayd.dns.metrics import DnsMetrics
from overlayd.dns.names import ClusterNames
from overlayd.dns.resolver import Answer, Drop, Forward, NamesSource, Resolver
from overlayd.dns.server import serve_dns

__all__ = ["Answer", "ClusterNames", "DnsMetrics", "Drop", "Forward", "NamesSource", "Resolver", "serve_dns"]
