"""Keeps a RegistryView in step with etcd's pods/, services/ and policies/ keys (trio).

Each prefix is listed, then watched from the listing's revision on; a broken or compacted
watch lists again. Every change that matters sets `changed`, a Pulse the service proxy and
cluster DNS wait on. Failures go to the reporter as the "registry" component.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import trio

from overlayd.cluster.errors import WatchCompacted
from overlayd.cluster.etcd import KeyValue
from overlayd.cluster.watch import MAX_BACKOFF, MIN_BACKOFF  # the same promise: back within ~2 s of etcd
from overlayd.errors import ClusterError
from overlayd.health import Reporter
from overlayd.registry.store import RegistryStore
from overlayd.registry.view import Change, RegistryView

log = logging.getLogger("overlayd")



class Pulse:
    """A wake-up that can be given any number of times; a waiter sees each burst once."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float = float("inf")) -> bool:
        """Wait for the next pulse (True) or the timeout (False); then re-arm."""
        with trio.move_on_after(timeout):
            await self._event.wait()
        fired = self._event.is_set()
        if fired:
            self._event = trio.Event()
        return fired


def _changes(kvs: tuple[KeyValue, ...]) -> list[Change]:
    return [Change(kv.key, kv.value, kv.lease_id) for kv in kvs]


class RegistryFollower:
    def __init__(self, store: RegistryStore, view: RegistryView, changed: Pulse, reporter: Reporter) -> None:
        self._store = store
        self._view = view
        self._changed = changed
        self._report = reporter
        self.ready = trio.Event()  # every prefix listed once
        self._listed: set[str] = set()

    async def run(self) -> NoReturn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_forever, self._store.pods)
            nursery.start_soon(self._follow_forever, self._store.services)
            nursery.start_soon(self._follow_forever, self._store.policies)
        raise AssertionError("unreachable")  # the tasks loop forever

    async def _follow_forever(self, prefix: str) -> NoReturn:
        backoff = MIN_BACKOFF
        while True:
            try:
                listing = await trio.to_thread.run_sync(self._store.list, prefix, abandon_on_cancel=True)
                self._view.reset(prefix, _changes(listing.kvs))
                self._listed.add(prefix)
                if len(self._listed) == 3:
                    self.ready.set()
                self._changed.set()
                stream = await trio.to_thread.run_sync(self._store.etcd.watch, prefix, listing.revision + 1,
                                                       abandon_on_cancel=True)
                self._report.recover("registry")
                backoff = MIN_BACKOFF
                try:
                    while True:
                        chunk = await trio.to_thread.run_sync(stream.next_chunk, abandon_on_cancel=True)
                        changes = [Change(e.kv.key, e.kv.value if e.kind == "put" else None, e.kv.lease_id)
                                   for e in chunk.events]
                        refused_before = dict(self._view.refused)
                        if self._view.apply(changes) or self._view.refused != refused_before:
                            self._changed.set()
                finally:
                    stream.cancel()
            except WatchCompacted as exc:
                log.info("registry watch on %s: %s; listing again", prefix, exc)
            except ClusterError as exc:
                self._report.fail("registry", f"pod and service records ({prefix}): {exc}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
