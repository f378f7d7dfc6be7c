"""overlayd_dns_* metrics, in the registry the caller owns (DaemonMetrics.registry in the daemon).

Label values come from the fixed sets in outcomes.py. Every value shows from the start (a
rate() over a series that appears late misses its first step). Children are bound once: a
query costs one inc().
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from overlayd.dns.outcomes import DROP_REASONS, RESULTS


class DnsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        queries = Counter("overlayd_dns_queries_total", "Cluster DNS queries answered, by result", ("result",),
                          registry=registry)
        dropped = Counter("overlayd_dns_dropped_total",
                          "Cluster DNS packets and TCP connections dropped unanswered, by reason", ("reason",),
                          registry=registry)
        self._results = {result: queries.labels(result=result) for result in RESULTS}
        self._drops = {reason: dropped.labels(reason=reason) for reason in DROP_REASONS}

    def count(self, result: str) -> None:
        """One query answered (result in RESULTS)."""
        self._results[result].inc()

    def drop(self, reason: str) -> None:
        """One packet or connection dropped (reason in DROP_REASONS)."""
        self._drops[reason].inc()
