"""The cluster API the daemon and overlayctl use (trio).

    cluster = await ClusterClient.connect(cfg.etcd, lease_ttl=cfg.lease_ttl)  # ClusterError if unreachable
    try:
        config = await cluster.get_config()  # NotFoundError / ConfigError
        record = HostRecord(cfg.node_name, public_ip, {"type": "vxlan", "vtep_mac": mac})
        lease = await cluster.acquire(config, record, previous=subnet_from_state)
        ...  # save lease.subnet in the state file, set up the bridge for it
        lease_send, lease_receive = trio.open_memory_channel[Lease](1)
        batch_send, batch_receive = trio.open_memory_channel[WatchBatch](16)
        async with trio.open_nursery() as nursery:
            await nursery.start(cluster.run_keepalive, config, lease, lease_send)
            initial = await nursery.start(cluster.run_watch, config, batch_send, lease.subnet)
            ...  # converge to initial.peers; then for each batch from batch_receive apply
                 # batch.events (or converge to batch.peers when batch.resync); a Lease from
                 # lease_receive with another subnet means: renumber and restart run_watch
    finally:
        await cluster.aclose()

    hosts = (await cluster.list_leases(config)).leases  # every lease, own included

A plain daemon restart keeps the lease alive (do not release it on shutdown): the next
acquire(previous=...) takes the key over in place. release() is for leaving the cluster.

Blocking etcd calls run in worker threads (trio.to_thread); each has the configured
timeout, so a call never hangs. Errors are ClusterError (etcd unreachable or unusable),
ConflictError (no free subnet, config change refused), NotFoundError / ConfigError
(cluster config missing or invalid).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from functools import partial
from typing import NoReturn, TypeVar

import trio

from ipam.config import ClusterConfig
from overlayd.cluster.errors import LeaseLost
from overlayd.cluster.etcd import EtcdClient
from overlayd.cluster.keys import IPNetwork, KeyLayout
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cluster.store import Listing, SubnetStore
from overlayd.cluster.watch import MAX_BACKOFF, MIN_BACKOFF, LeaseFollower, WatchBatch
from overlayd.config import EtcdConfig
from overlayd.errors import ClusterError, ConflictError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClusterClient:
    def __init__(self, store: SubnetStore) -> None:
        self.store = store

    @classmethod
    async def connect(cls, etcd: EtcdConfig, *, lease_ttl: int = 60, rng: random.Random | None = None) -> ClusterClient:
        """Open the etcd endpoints and check that one answers (ClusterError naming each failure if not)."""
        client = EtcdClient(
            etcd.endpoints, timeout=etcd.timeout, ca_file=etcd.ca_file, cert_file=etcd.cert_file, key_file=etcd.key_file
        )
        try:
            version = await trio.to_thread.run_sync(client.status)
        except BaseException:
            client.close()
            raise
        log.info("connected to etcd %s at %s", version, ", ".join(etcd.endpoints))
        return cls(SubnetStore(client, KeyLayout(etcd.prefix), lease_ttl=lease_ttl, rng=rng))

    async def _run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))

    async def get_config(self) -> ClusterConfig:
        return await self._run(self.store.get_config)

    async def put_config(self, config: ClusterConfig, *, force: bool = False) -> bool:
        """True if written, False if identical; ConflictError if different while leases exist (unless force)."""
        return await self._run(self.store.put_config, config, force=force)

    async def list_leases(self, config: ClusterConfig) -> Listing:
        """Every subnet lease in the cluster, own included (for `overlayctl hosts`)."""
        return await self._run(self.store.list_leases, config)

    async def acquire(self, config: ClusterConfig, record: HostRecord, *, previous: IPNetwork | None = None) -> Lease:
        """Claim a subnet (previous kept when possible, in place if its key survived)."""
        return await self._run(self.store.acquire, config, record, previous=previous)

    async def lease_ttl_left(self, lease: Lease) -> int | None:
        """Seconds before etcd drops the lease unless renewed (for `overlayctl status`)."""
        if lease.lease_id is None:
            return None
        return await self._run(self.store.etcd.time_to_live, lease.lease_id)

    async def release(self, lease: Lease) -> None:
        """Give the subnet up now (for decommissioning; a plain restart keeps it)."""
        await self._run(self.store.release, lease)

    async def run_keepalive(
        self,
        config: ClusterConfig,
        lease: Lease,
        on_reacquired: trio.MemorySendChannel[Lease] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Refresh the lease every TTL/3, forever. If it was lost (expired while etcd or this
        host was away, or revoked), claim again, preferring the same subnet, and send the new
        Lease to on_reacquired; its subnet may differ, then the host must renumber."""
        interval = self.store.lease_ttl / 3
        task_status.started()
        delay = interval
        while True:
            await trio.sleep(delay)
            try:
                await self._run(self.store.renew, lease)
                delay = interval
            except LeaseLost as exc:
                log.warning("subnet %s: %s; claiming again", lease.subnet, exc)
                lease = await self._reacquire(config, lease)
                if on_reacquired is not None:
                    await on_reacquired.send(lease)
                delay = interval
            except ClusterError as exc:
                # Keep trying well within the TTL; etcd decides whether the lease survived.
                delay = min(1.0, interval)
                log.warning("renewing lease of subnet %s failed: %s; retrying in %gs", lease.subnet, exc, delay)

    async def _reacquire(self, config: ClusterConfig, lost: Lease) -> Lease:
        backoff = MIN_BACKOFF
        while True:
            try:
                return await self.acquire(config, lost.record, previous=lost.subnet)
            except (ClusterError, ConflictError) as exc:
                log.warning("claiming a subnet failed: %s; retrying in %gs", exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def run_watch(
        self,
        config: ClusterConfig,
        send_channel: trio.MemorySendChannel[WatchBatch],
        own_subnet: IPNetwork | None = None,
        resume: WatchBatch | None = None,
        *,
        task_status: trio.TaskStatus[WatchBatch] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Follow the peers' leases forever (see watch.py). `await nursery.start(...)` returns
        the initial WatchBatch (all peers); later batches arrive on send_channel."""
        await LeaseFollower(self.store, config, own_subnet).run(send_channel, resume=resume, task_status=task_status)

    async def aclose(self) -> None:
        self.store.etcd.close()
