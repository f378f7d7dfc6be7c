"""Peer lease tracking as a pure state machine: key changes in, host events out.

The etcd layer turns a full listing into `reset(leases)` and each watch response into
`update([LeasePut | LeaseDeleted, ...])`; the watcher answers with the HostAdded /
HostChanged / HostRemoved events the backend applies. After a broken or compacted
watch, `reset` with a fresh listing yields exactly the difference, so nothing missed
while the watch was down goes unnoticed. The host's own subnet is never a peer.

A HostChanged is emitted only when the record (node, public IP, backend data) changes;
a new etcd lease or revision with the same record (a peer's daemon restarting and
taking its key over) updates the stored lease silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import Lease


@dataclass(frozen=True)
class HostAdded:
    lease: Lease


@dataclass(frozen=True)
class HostChanged:
    old: Lease
    new: Lease


@dataclass(frozen=True)
class HostRemoved:
    lease: Lease


HostEvent = HostAdded | HostChanged | HostRemoved


@dataclass(frozen=True)
class LeasePut:
    """A subnet key was created or rewritten with a valid record."""

    lease: Lease


@dataclass(frozen=True)
class LeaseDeleted:
    """A subnet key is gone, or now holds a record we cannot use (as a re-list would skip it)."""

    subnet: IPNetwork


KeyEvent = LeasePut | LeaseDeleted


def _order(subnet: IPNetwork) -> tuple[int, int, int]:
    # IPv4 and IPv6 networks do not compare with each other.
    return subnet.version, int(subnet.network_address), subnet.prefixlen


class LeaseWatcher:
    def __init__(self, own_subnet: IPNetwork | None = None) -> None:
        self.own_subnet = own_subnet
        self._leases: dict[IPNetwork, Lease] = {}

    @property
    def leases(self) -> Mapping[IPNetwork, Lease]:
        """The current peers by subnet (read-only view)."""
        return MappingProxyType(self._leases)

    def reset(self, leases: Iterable[Lease]) -> list[HostEvent]:
        """Replace the peer set with a full listing; return what changed.

        Removals come first, then changes, then additions (each sorted by subnet), so a
        host that moved to another subnet is dropped before it is added again.
        """
        new = {lease.subnet: lease for lease in leases if lease.subnet != self.own_subnet}
        old = self._leases
        removed = [HostRemoved(old[s]) for s in sorted(old.keys() - new.keys(), key=_order)]
        kept = sorted(old.keys() & new.keys(), key=_order)
        changed = [HostChanged(old[s], new[s]) for s in kept if old[s].record != new[s].record]
        added = [HostAdded(new[s]) for s in sorted(new.keys() - old.keys(), key=_order)]
        self._leases = new
        return [*removed, *changed, *added]

    def update(self, events: Iterable[KeyEvent]) -> list[HostEvent]:
        """Apply watch events in order; return the host events they cause."""
        out: list[HostEvent] = []
        for event in events:
            if isinstance(event, LeasePut):
                self._put(event.lease, out)
            else:
                self._delete(event.subnet, out)
        return out

    def _put(self, lease: Lease, out: list[HostEvent]) -> None:
        if lease.subnet == self.own_subnet:
            return
        old = self._leases.get(lease.subnet)
        self._leases[lease.subnet] = lease
        if old is None:
            out.append(HostAdded(lease))
        elif old.record != lease.record:
            out.append(HostChanged(old, lease))

    def _delete(self, subnet: IPNetwork, out: list[HostEvent]) -> None:
        old = self._leases.pop(subnet, None)
        if old is not None:
            out.append(HostRemoved(old))
