"""Publishes this host's pods and CNI attachments under {prefix}/pods/<node>/ (trio).

The records hang on the host's subnet lease: if the host dies they go with it, and when
the keeper claims a new lease they are written again under it. What etcd holds is read
from the RegistryView (the watch), so the publisher only writes differences: missing or
changed records, and strays of ours (a pod deleted while etcd was away).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from overlayd.cluster.watch import MAX_BACKOFF, MIN_BACKOFF
from overlayd.errors import ClusterError
from overlayd.health import Reporter
from overlayd.registry.follow import Pulse
from overlayd.registry.records import PodEntry
from overlayd.registry.store import RegistryStore
from overlayd.registry.view import RegistryView

log = logging.getLogger("overlayd")

RECHECK_INTERVAL = 5.0  # also compare without a pulse: a record deleted behind our back comes back


class PodPublisher:
    def __init__(self, node: str, store: RegistryStore, view: RegistryView,
                 wanted: Callable[[], Awaitable[list[PodEntry]]], lease_id: Callable[[], int | None],
                 reporter: Reporter) -> None:
        """wanted: this host's pods and attachments now (read where the pod service is changed)."""
        self._node = node
        self._store = store
        self._view = view
        self._wanted = wanted
        self._lease_id = lease_id
        self._report = reporter
        self._written: dict[str, int] = {}  # name -> lease it was written under
        self.pulse = Pulse()  # set when our pods change or the view does

    def plan(self, entries: list[PodEntry], lease_id: int) -> tuple[list[PodEntry], list[str]]:
        """(records to write, names to withdraw) so etcd holds `entries` under `lease_id` (pure)."""
        wanted = {entry.name: entry for entry in entries}
        present = {name: pod for (node, name), pod in self._view.pods.items() if node == self._node}
        writes = [entry for name, entry in sorted(wanted.items())
                  if present.get(name) != entry or self._written.get(name) != lease_id]
        withdraw = sorted(set(present) - set(wanted))
        return writes, withdraw

    async def run(self, ready: trio.Event) -> NoReturn:
        await ready.wait()  # the view must show etcd before we judge what is missing or stray
        backoff = MIN_BACKOFF
        while True:
            lease_id = self._lease_id()
            if lease_id is None or await self._publish(lease_id):
                backoff = MIN_BACKOFF
                await self.pulse.wait(RECHECK_INTERVAL)
            else:  # etcd trouble: retry soon, so health is ok again within seconds of etcd
                await self.pulse.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _publish(self, lease_id: int) -> bool:
        """Whether etcd now holds what it should."""
        writes, withdraw = self.plan(await self._wanted(), lease_id)
        try:
            for entry in writes:
                await trio.to_thread.run_sync(self._store.put_pod, entry, lease_id, abandon_on_cancel=True)
                self._written[entry.name] = lease_id
            for name in withdraw:
                await trio.to_thread.run_sync(self._store.delete_pod, self._node, name, abandon_on_cancel=True)
                self._written.pop(name, None)
        except ClusterError as exc:  # retried at the next pulse or recheck
            self._report.fail("pod-records", f"publishing this host's pods: {exc}")
            return False
        self._report.recover("pod-records")
        if writes or withdraw:
            log.info("pod records: %d written, %d withdrawn", len(writes), len(withdraw))
        return True
