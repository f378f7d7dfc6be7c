"""Cluster DNS: names of services and pods answered from memory, other names forwarded.

- names.py     ClusterNames: the frozen snapshot of what the zone holds (pure)
- zone.py      Zone: is a name ours (holds), and the dnspython response to a query for it (pure)
- resolver.py  Resolver: query bytes -> Answer | Forward | Drop, memoised per query (pure);
               NamesSource: the current Resolver, swapped by update(names)
- outcomes.py  the results and drop reasons (label values)
- metrics.py   DnsMetrics: overlayd_dns_* counters in a given CollectorRegistry
- upstream.py  Upstreams: forwarding to the host's resolvers (trio, UDP then TCP on TC)
- framing.py   DNS-over-TCP length framing
- server.py    serve_dns: trio UDP and TCP server on one address

Nothing is imported here: overlayd.pods.dns (loaded by every config read, the CLI's too)
uses names.py alone and must not pay for trio, dnspython and prometheus_client.
"""
