"""The small async loop that drives the peer policy: watch batches in, the kernel out (trio).

Every batch (and every grace period running out, and a resync every RESYNC_INTERVAL)
ends in one convergence: the policy says what is wanted, the backend makes the kernel
match, and the peer set is saved for the next start. Health follows: "kernel" while a
reconcile fails, "peers" while a peer is refused, "records" while etcd holds a record
the daemon refuses. Collaborators are passed in, so tests drive it with a fake backend
and plain functions instead of threads (tests/unit/test_peerloop.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import trio

from overlayd.backend.contract import Backend, Observations, Refusal
from overlayd.cluster.errors import Rejection
from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cluster.watch import WatchBatch
from overlayd.errors import OverlaydError
from overlayd.health import HealthModel, Reporter
from overlayd.hoststate import StateFiles
from overlayd.metrics import DaemonMetrics, HandshakeTracker
from overlayd.metrics.daemon import DROP_CONFLICT
from overlayd.peering import PeerPolicy

log = logging.getLogger("overlayd")

RESYNC_INTERVAL = 30.0  # a full reconcile also removes what nobody announces any more
SAVE_INTERVAL = 0.5  # seconds between two saves of peers.json (a cache for starts while etcd is away)
OBSERVE_INTERVAL = 10.0  # WireGuard rekeys every 120 s: polling well within that misses no handshake

# Runs a blocking call (netlink, disk) off the trio thread; tests pass one that calls directly.
Runner = Callable[..., Awaitable[Any]]


class PeerLoop:
    def __init__(self, backend: Backend, policy: PeerPolicy, *, files: StateFiles, metrics: DaemonMetrics,
                 reporter: Reporter, health: HealthModel, kernel: Runner, disk: Runner) -> None:
        self.backend = backend
        self.policy = policy
        self._files = files
        self._metrics = metrics
        self._report = reporter
        self._health = health
        self._kernel = kernel
        self._disk = disk
        self._lock = trio.Lock()  # one convergence at a time, each from the newest state
        self._saved: dict[IPNetwork, HostRecord] | None = None
        self._handshakes = HandshakeTracker()
        self._unprogrammed: frozenset[str] = frozenset()  # drops of the last convergence, already counted
        self.programmed: Mapping[IPNetwork, Lease] = MappingProxyType({})  # the leases last asked for
        self.refused = 0  # peers wanted but not programmed at the last convergence
        self.observations = Observations()
        self._pending_save: Mapping[IPNetwork, Lease] | None = None
        self._save_wanted = trio.Event()

    def take(self, batch: WatchBatch) -> None:
        """Account for one batch (skipped and refused records) and hand it to the policy."""
        for reason in batch.rejected:
            self._health.note(f"skipped etcd record: {reason}")
        self._metrics.count_dropped(batch.rejected)
        if batch.refused:  # never "ok" while etcd holds a record we refuse
            first_key = min(batch.refused)
            self._report.fail("records", f"{len(batch.refused)} etcd record(s) refused, e.g. "
                                         f"{batch.refused[first_key]}")
        else:
            self._report.recover("records")
        self._metrics.leases.set(len(batch.peers) + 1)
        self.policy.take(batch, trio.current_time(), self.programmed)
        self._report_dropped()

    def use_saved(self, peers: Mapping[IPNetwork, Lease]) -> None:
        self.policy.use(peers)
        self._report_dropped()

    async def follow(self, batches: trio.MemoryReceiveChannel[WatchBatch]) -> None:
        """Converge to every batch, and when a held peer's grace runs out."""
        while True:
            deadline = self.policy.next_deadline()
            received_at: float | None = None  # stays None when a grace ran out instead
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                batch: WatchBatch | None = await batches.receive()
                received_at = time.monotonic()
                # Each batch carries the complete peer set: take all that queued up, converge once.
                while batch is not None:
                    self.take(batch)
                    try:
                        batch = batches.receive_nowait()
                    except trio.WouldBlock:
                        batch = None
            await self.converge()
            if received_at is not None:
                self._metrics.event_to_kernel.observe(time.monotonic() - received_at)

    async def converge(self, *, full: bool = False) -> None:
        """Program what the policy wants now and save it for the next start. full: the backend
        reads the kernel and repairs everything (else it may plan from what it programmed)."""
        async with self._lock:
            desired = self.policy.desired(trio.current_time())
            for message in desired.unfit:
                self._note(message)
            started = time.monotonic()
            try:
                result = await self._kernel(self.backend.reconcile, desired.peers, full=full)
            except OverlaydError as exc:
                self._metrics.reconcile_runs.labels(result="error").inc()
                self._report.fail("kernel", f"reconcile failed: {exc}")
                return
            finally:
                self._metrics.reconcile_duration.observe(time.monotonic() - started)
            self._metrics.reconcile_runs.labels(result="ok").inc()
            self._report.recover("kernel")
            self.programmed = desired.leases  # only now: a failed reconcile left the kernel as it was
            self.refused = len(desired.unfit) + len(result.refused)
            self._count_unprogrammed(desired.unfit, result.refused)
            self._metrics.peers.set(len(desired.peers) - len(result.refused))
            self._metrics.refused_peers.set(self.refused)
            if self.refused:  # a host we cannot reach is not a healthy cluster, whoever is at fault
                self._report.fail("peers", f"{self.refused} of {len(desired.leases)} peers refused "
                                           "(see last_error and logs)")
            else:
                self._report.recover("peers")
            if result.added or result.changed or result.removed:
                log.info("peers: %d (kernel objects added %d, changed %d, removed %d)",
                         len(desired.peers), result.added, result.changed, result.removed)
            # Saved by save_pending, outside the lock: writing thousands of peers must not
            # hold up the next event's way to the kernel.
            self._pending_save = desired.leases
            self._save_wanted.set()

    async def rescreen(self) -> None:
        """Certificates run out and get revoked with no etcd event: check them again."""
        changed = self.policy.rescreen()
        self._report_dropped()
        if changed:
            await self.converge()

    async def resync_periodically(self) -> None:
        while True:
            await trio.sleep(RESYNC_INTERVAL)
            await self.converge(full=True)

    async def observe_periodically(self) -> None:
        """Handshakes and drops the data path reports, polled (the WireGuard engine is another process)."""
        if not type(self.backend).observes:
            return
        self._metrics.set_wireguard_drops_source(lambda: self.observations.drops)
        while True:
            self.observations = await self._kernel(self.backend.observe)
            self._metrics.wireguard_handshakes.inc(self._handshakes.update(self.observations.handshakes))
            await trio.sleep(OBSERVE_INTERVAL)

    async def save_pending(self) -> None:
        """Save the newest programmed peer set for the next start, at most every SAVE_INTERVAL."""
        while True:
            await self._save_wanted.wait()
            self._save_wanted = trio.Event()
            peers, self._pending_save = self._pending_save, None
            if peers is not None:
                await self._save(peers)
            await trio.sleep(SAVE_INTERVAL)  # JSON for thousands of peers holds the GIL: not per event

    async def _save(self, peers: Mapping[IPNetwork, Lease]) -> None:
        records = {subnet: lease.record for subnet, lease in peers.items()}
        if records == self._saved:
            return
        try:
            await self._disk(self._files.save_peers, peers)
        except OverlaydError as exc:
            self._note(f"cannot save the peer set: {exc}")
            return
        self._saved = records

    def _count_unprogrammed(self, unfit: tuple[str, ...], refused: tuple[Refusal, ...]) -> None:
        """Count records the backend cannot program (by their reason) and peers it refused
        (conflict), each once: every convergence repeats them until their record changes."""
        now = frozenset((*unfit, *(Rejection(f"peer {r.subnet} refused: {r.reason}", DROP_CONFLICT) for r in refused)))
        self._metrics.count_dropped(sorted(now - self._unprogrammed))
        self._unprogrammed = now

    def _report_dropped(self) -> None:
        dropped, self.policy.dropped = self.policy.dropped, []
        for message in dropped:
            self._note(message)
        self._metrics.count_dropped(dropped)

    def _note(self, message: str) -> None:
        self._health.note(message)
        log.warning("%s", message)
