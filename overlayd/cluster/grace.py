"""A short grace for peers that vanished while this host was not watching (pure).

When etcd is unreachable for every host at once (etcd partitioned, or its host paused),
etcd keeps running and expires every lease; once it is reachable again each host claims
its subnet again within a second or two. A host that lists the leases in that moment
finds its peers missing. Removing them at once would cut pod traffic for the control
plane's sake, so peers found missing by such a listing (a re-list after a broken watch,
or the first listing after starting on saved state) stay programmed for `grace` seconds:
if their subnet is claimed again meanwhile, by anyone, the new data wins at once; if not,
they are removed when the grace ends. A deletion seen live on the watch is never held.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import Lease


class PeerGrace:
    def __init__(self, grace: float) -> None:
        if grace < 0:
            raise ValueError(f"grace {grace} must not be negative")
        self.grace = grace
        self._held: dict[IPNetwork, tuple[Lease, float]] = {}  # subnet -> (last known lease, deadline)

    @property
    def held(self) -> Mapping[IPNetwork, Lease]:
        return MappingProxyType({subnet: lease for subnet, (lease, _) in self._held.items()})

    def hold(self, missing: Mapping[IPNetwork, Lease], now: float) -> None:
        """Keep these peers (absent from a listing that followed an outage) for the grace period.
        A peer already held keeps its first deadline: the grace counts from when it went missing."""
        for subnet, lease in missing.items():
            self._held.setdefault(subnet, (lease, now + self.grace))

    def wanted(self, peers: Mapping[IPNetwork, Lease], now: float) -> dict[IPNetwork, Lease]:
        """The peers to program: `peers` plus those held and still in their grace. Holds end
        when the grace is over or the subnet shows up in `peers` again."""
        self._held = {s: (lease, deadline) for s, (lease, deadline) in self._held.items()
                      if deadline > now and s not in peers}
        return {**peers, **{s: lease for s, (lease, _) in self._held.items()}}

    def next_deadline(self) -> float | None:
        """When the earliest hold ends (converge again then), None if nothing is held."""
        return min((deadline for _, deadline in self._held.values()), default=None)
