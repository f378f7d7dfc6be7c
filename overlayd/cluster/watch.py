"""Following the peers' subnet leases: list, watch, re-list when the watch breaks (trio).

The loop lists {prefix}/subnets/ (noting the revision), watches from revision + 1 and
feeds each response through LeaseWatcher.update. When the watch breaks or its start
revision has been compacted, it lists again and LeaseWatcher.reset yields exactly what
changed meanwhile; nothing is missed. etcd unreachable means retrying with backoff
(0.5 s doubling up to 2 s), never giving up. Subnets whose keys disappear are marked as cooling down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NoReturn

import trio

from ipam.config import ClusterConfig
from overlayd.cluster.diff import HostEvent, HostRemoved, KeyEvent, LeaseDeleted, LeasePut, LeaseWatcher
from overlayd.cluster.errors import RecordError, WatchCompacted
from overlayd.cluster.etcd import WatchChunk
from overlayd.cluster.keys import IPNetwork, KeyLayout
from overlayd.cluster.records import Lease, LeaseVerifier
from overlayd.cluster.store import Listing, SubnetStore, key_text, lease_from_kv
from overlayd.errors import ClusterError
from overlayd.health import LoggingReporter, Reporter

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.5
MAX_BACKOFF = 2.0  # back within about this once etcd is: the daemon promises 5 s


@dataclass(frozen=True)
class WatchBatch:
    """What one watch response or re-list changed, and the complete peer set after it."""

    events: tuple[HostEvent, ...]
    peers: Mapping[IPNetwork, Lease]  # read-only snapshot, own subnet excluded
    revision: int  # etcd revision the peer set reflects
    resync: bool  # True: built from a full listing (converge to `peers`, e.g. drop stale routes)
    rejected: tuple[str, ...] = ()  # entries skipped, one message each (a Rejection: with .reason when known)
    # Every key that holds a refused record now (key -> why), not only those this batch saw:
    # health stays degraded while any is there.
    refused: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class DecodedChunk:
    events: tuple[KeyEvent, ...]
    deleted: tuple[IPNetwork, ...]
    rejected: tuple[str, ...]
    refused: Mapping[str, str]  # key -> why, for puts refused
    cleared: tuple[str, ...]  # keys deleted, or put with a usable record


def decode_chunk(
    layout: KeyLayout, config: ClusterConfig, chunk: WatchChunk, verifier: LeaseVerifier | None = None
) -> DecodedChunk:
    """Turn etcd watch events into key events; a put we cannot parse counts as a deletion,
    as a re-list would skip it too."""
    events: list[KeyEvent] = []
    deleted, rejected, cleared = [], [], []
    refused: dict[str, str] = {}
    for event in chunk.events:
        key = key_text(event.kv.key)
        try:
            subnet = layout.subnet_of_key_untrusted(event.kv.key)
        except RecordError as exc:
            rejected.append(str(exc))  # a Rejection, keeping exc.reason
            if event.kind == "delete":
                cleared.append(key)
            else:
                refused[key] = str(exc)
            continue
        if event.kind == "delete":
            events.append(LeaseDeleted(subnet))
            deleted.append(subnet)
            cleared.append(key)
            continue
        try:
            events.append(LeasePut(lease_from_kv(layout, config, event.kv, verifier)))
            cleared.append(key)
        except RecordError as exc:
            rejected.append(str(exc))
            refused[key] = str(exc)
            events.append(LeaseDeleted(subnet))
    return DecodedChunk(tuple(events), tuple(deleted), tuple(rejected), refused, tuple(cleared))


class LeaseFollower:
    """Keeps a LeaseWatcher in step with etcd and sends a WatchBatch for every change.

    etcd failures go to the reporter (component "watch"): the first one and the recovery
    are logged, the retries in between only counted.
    """

    def __init__(self, store: SubnetStore, config: ClusterConfig, own_subnet: IPNetwork | None, *,
                 reporter: Reporter | None = None) -> None:
        self._store = store
        self._config = config
        self._watcher = LeaseWatcher(own_subnet)
        self._refused: dict[str, str] = {}  # keys holding a refused record now -> why
        self._backoff = MIN_BACKOFF
        self._report = reporter or LoggingReporter(log)

    async def run(self, send_channel: trio.MemorySendChannel[WatchBatch]) -> NoReturn:
        """Follow the leases forever, sending every batch to send_channel: first the full
        listing (retried until etcd answers), then one batch per change or re-list."""
        while True:
            batch, freed = self._resync(await self._list_until_ok())
            await send_channel.send(batch)
            await self._cool_down(freed)
            try:
                await self._follow(send_channel, batch.revision + 1)
            except WatchCompacted as exc:
                log.info("lease watch: %s; listing again", exc)
            except ClusterError as exc:
                self._report.fail("watch", f"lease watch interrupted: {exc}")
                await self._sleep_backoff()

    async def _follow(self, send_channel: trio.MemorySendChannel[WatchBatch], start_revision: int) -> NoReturn:
        stream = await trio.to_thread.run_sync(self._store.watch, start_revision, abandon_on_cancel=True)
        self._backoff = MIN_BACKOFF
        self._report.recover("watch")
        try:
            while True:
                # Cancellable: on cancel the thread is abandoned and stream.cancel() below ends it.
                chunk = await trio.to_thread.run_sync(stream.next_chunk, abandon_on_cancel=True)
                decoded = decode_chunk(self._store.layout, self._config, chunk, self._store.verifier)
                events = self._watcher.update(decoded.events)
                refused_before = len(self._refused)
                for key in decoded.cleared:
                    self._refused.pop(key, None)
                self._refused.update(decoded.refused)
                if events or decoded.rejected or len(self._refused) != refused_before:
                    await send_channel.send(self._batch(events, chunk.revision, False, decoded.rejected))
                await self._cool_down(decoded.deleted)
        finally:
            stream.cancel()

    def _resync(self, listing: Listing) -> tuple[WatchBatch, set[IPNetwork]]:
        """Reset the watcher to a listing; also returns the subnets whose keys vanished."""
        events = self._watcher.reset(listing.leases)
        self._refused = dict(listing.refused)
        freed = {e.lease.subnet for e in events if isinstance(e, HostRemoved)} - listing.taken
        return self._batch(events, listing.revision, True, listing.rejected), freed

    def _batch(self, events: list[HostEvent], revision: int, resync: bool, rejected: tuple[str, ...]) -> WatchBatch:
        for reason in rejected:
            log.warning("skipping subnet lease entry: %s", reason)
        return WatchBatch(tuple(events), MappingProxyType(dict(self._watcher.leases)), revision, resync, rejected,
                          MappingProxyType(dict(self._refused)))

    async def _list_until_ok(self) -> Listing:
        while True:
            try:
                # Abandoned on cancel: an unreachable etcd must not hold up the daemon's shutdown.
                listing = await trio.to_thread.run_sync(self._store.list_leases, self._config, abandon_on_cancel=True)
            except ClusterError as exc:
                self._report.fail("watch", f"listing subnet leases failed: {exc}")
                await self._sleep_backoff()
                continue
            self._report.recover("watch")
            return listing

    async def _sleep_backoff(self) -> None:
        await trio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    async def _cool_down(self, subnets: Iterable[IPNetwork]) -> None:
        for subnet in subnets:
            try:
                await trio.to_thread.run_sync(self._store.cool_down, subnet)
            except ClusterError as exc:
                log.warning("could not mark subnet %s as cooling down: %s", subnet, exc)
