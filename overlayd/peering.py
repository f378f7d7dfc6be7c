"""Which peers to program: the pure policy between the lease watch and the backend.

It takes the watch's batches (each carries the complete peer set), holds peers that a
post-outage listing misses for a short grace (cluster/grace.py), drops peers whose
certificate ran out or was revoked (trust/guard.py, when trust is on), and turns what is
left into the backend's peers, setting aside records the backend cannot program. It
reads no clock (times are passed in) and touches neither etcd nor the kernel, so every
rule here is tested on plain values (tests/unit/test_peering.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from overlayd.backend.contract import BACKEND_MISMATCH
from overlayd.cluster.errors import Rejection
from overlayd.cluster.grace import PeerGrace
from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cluster.watch import WatchBatch
from overlayd.errors import OverlaydError

log = logging.getLogger(__name__)

# (record, etcd create revision) -> the backend's peer; OverlaydError if it does not fit the backend.
PeerParser = Callable[[HostRecord, int], Any]
# peers -> (those whose certificates hold, a message for each newly dropped one)
CertificateScreen = Callable[[Mapping[IPNetwork, Lease]], tuple[Mapping[IPNetwork, Lease], list[str]]]


@dataclass(frozen=True)
class Desired:
    """What to program now."""

    leases: Mapping[IPNetwork, Lease]  # the peers wanted: known ones plus those in their grace
    peers: Mapping[IPNetwork, Any]  # the backend's peers for the leases it can program
    unfit: tuple[str, ...]  # one message per lease the backend cannot program


class PeerPolicy:
    def __init__(self, parse: PeerParser, grace: PeerGrace, screen: CertificateScreen | None = None) -> None:
        self._parse = parse
        self._grace = grace
        self._screen = screen
        self._listed: Mapping[IPNetwork, Lease] = MappingProxyType({})  # the newest set etcd (or saved state) gave
        self._known: Mapping[IPNetwork, Lease] = MappingProxyType({})  # _listed less dropped certificates
        self.dropped: list[str] = []  # certificate drops not yet reported (the caller takes and clears them)
        self._parsed: dict[IPNetwork, tuple[Lease, Any]] = {}  # subnet -> (lease, its peer or why it is unfit)

    @property
    def held(self) -> Mapping[IPNetwork, Lease]:
        return self._grace.held

    def take(self, batch: WatchBatch, now: float, programmed: Mapping[IPNetwork, Lease]) -> None:
        """A batch from the watch. After an outage (a resync), peers in `programmed` that the
        listing misses are held for the grace period instead of being removed at once."""
        if batch.resync:
            missing = {s: lease for s, lease in programmed.items() if s not in batch.peers}
            if missing:
                log.info("peers missing after an outage, kept for %gs unless they come back: %s",
                         self._grace.grace, ", ".join(f"{lease.record.node} ({s})" for s, lease in missing.items()))
            self._grace.hold(missing, now)
        self.use(batch.peers)

    def use(self, peers: Mapping[IPNetwork, Lease]) -> None:
        """A complete peer set (a batch's, or the one saved at the last run)."""
        self._listed = peers
        self._known = self._screened(peers)

    def rescreen(self) -> bool:
        """Check the certificates again (they expire and get revoked without an etcd event);
        True if the peer set changed. From the listed set: a host that renewed its certificate
        and re-signed its record in place (nothing a peer diff would see) comes back here."""
        kept = self._screened(self._listed)
        if dict(kept) == dict(self._known):
            return False
        self._known = kept
        return True

    def desired(self, now: float) -> Desired:
        leases = self._grace.wanted(self._known, now)
        peers: dict[IPNetwork, Any] = {}
        unfit = []
        parsed: dict[IPNetwork, tuple[Lease, Any]] = {}
        for subnet, lease in leases.items():
            cached = self._parsed.get(subnet)
            # The same lease parses the same way: among thousands of peers one event changes one.
            if cached is not None and (cached[0] is lease or cached[0] == lease):
                parsed[subnet] = cached
                continue
            try:
                parsed[subnet] = (lease, self._parse(lease.record, lease.create_revision))
            except OverlaydError as exc:  # the message keeps the reason, for overlayd_dropped_records_total
                parsed[subnet] = (lease, Rejection(f"peer {lease.record.node} ({subnet}) not programmed: {exc}",
                                                   getattr(exc, "reason", BACKEND_MISMATCH)))
        self._parsed = parsed
        for subnet, (_, peer) in parsed.items():
            if isinstance(peer, Rejection):
                unfit.append(peer)
            else:
                peers[subnet] = peer
        return Desired(MappingProxyType(leases), MappingProxyType(peers), tuple(unfit))

    def next_deadline(self) -> float | None:
        """When a held peer's grace ends (converge then), None if none is held."""
        return self._grace.next_deadline()

    def _screened(self, peers: Mapping[IPNetwork, Lease]) -> Mapping[IPNetwork, Lease]:
        if self._screen is None:
            return peers
        kept, dropped = self._screen(peers)
        self.dropped += dropped
        return kept
