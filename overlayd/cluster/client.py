"""The cluster API the daemon and overlayctl use (trio).

The daemon, which must come up on its saved state while etcd is down:

    cluster = ClusterClient.open(cfg.etcd, lease_ttl=cfg.lease_ttl)  # no I/O yet; ConfigError for bad settings
    try:
        config = await cluster.get_config()  # ClusterError / NotFoundError / ConfigError
        record = HostRecord(cfg.node_name, public_ip, {"type": "vxlan", "vtep_mac": mac})
        lease = await cluster.acquire(config, record, previous=subnet_from_state)
        ...  # save lease.subnet in the state file, set up the bridge for it
        batch_send, batch_receive = trio.open_memory_channel[WatchBatch](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(cluster.follow_leases, config, batch_send, lease.subnet, reporter=reporter))
            keeper = cluster.lease_keeper(config, record, lease.subnet, lease, reporter=reporter)
            await nursery.start(keeper.run)
            ...  # converge to batch.peers for each batch from batch_receive (the first one is
                 # the full listing); keeper.state and keeper.ttl_left() answer `status`
    finally:
        await cluster.aclose()  # no release: the lease outlives a plain restart

Both loops wait for etcd by themselves and report outages to the Reporter. A restarted
daemon keeps its subnet (acquire(previous=...) takes the key over in place); give_up()
frees it when the operator renumbers the host. overlayctl uses connect() (open() plus a
check that etcd answers), then get_config / put_config / read_key / put_key_if.

Blocking etcd calls run in worker threads (trio.to_thread); each has the configured
timeout, so a call never hangs. Errors are ClusterError (etcd unreachable or unusable),
ConflictError (no free subnet, config change refused), NotFoundError / ConfigError
(cluster config missing or invalid).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import NoReturn, TypeVar

import trio

from ipam.config import ClusterConfig
from overlayd.cluster.configdoc import ConfigSigner, ConfigVerifier
from overlayd.cluster.etcd import EtcdClient, KeyValue
from overlayd.cluster.keeper import LeaseKeeper
from overlayd.cluster.keys import IPNetwork, KeyLayout
from overlayd.cluster.records import HostRecord, Lease, LeaseVerifier, RecordEncoder
from overlayd.cluster.store import Listing, SubnetStore
from overlayd.cluster.watch import LeaseFollower, WatchBatch
from overlayd.config import EtcdConfig
from overlayd.health import Reporter

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClusterClient:
    def __init__(self, store: SubnetStore) -> None:
        self.store = store

    @classmethod
    async def connect(
        cls,
        etcd: EtcdConfig,
        *,
        lease_ttl: int = 60,
        encoder: RecordEncoder | None = None,
        verifier: LeaseVerifier | None = None,
        config_verifier: ConfigVerifier | None = None,
    ) -> ClusterClient:
        """Open the etcd endpoints and check that one answers (ClusterError naming each failure if not).

        encoder/verifier/config_verifier: optional trust hooks (overlayd/trust: HostTrust)."""
        cluster = cls.open(etcd, lease_ttl=lease_ttl, encoder=encoder, verifier=verifier,
                           config_verifier=config_verifier)
        try:
            version = await trio.to_thread.run_sync(cluster.store.etcd.status)
        except BaseException:
            await cluster.aclose()
            raise
        log.info("connected to etcd %s at %s", version, ", ".join(etcd.endpoints))
        return cluster

    @classmethod
    def open(
        cls,
        etcd: EtcdConfig,
        *,
        lease_ttl: int = 60,
        encoder: RecordEncoder | None = None,
        verifier: LeaseVerifier | None = None,
        config_verifier: ConfigVerifier | None = None,
    ) -> ClusterClient:
        """Like connect() without the check: nothing is sent until the first call, so this works
        while etcd is down (the daemon starting on its saved state). ConfigError for bad settings."""
        client = EtcdClient(
            etcd.endpoints, timeout=etcd.timeout, ca_file=etcd.ca_file, cert_file=etcd.cert_file, key_file=etcd.key_file
        )
        store = SubnetStore(
            client, KeyLayout(etcd.prefix), lease_ttl=lease_ttl, encoder=encoder, verifier=verifier,
            config_verifier=config_verifier,
        )
        return cls(store)

    async def _run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))

    async def get_config(self) -> ClusterConfig:
        return await self._run(self.store.get_config)

    async def put_config(
        self, config: ClusterConfig, *, force: bool = False, signer: ConfigSigner | None = None
    ) -> bool:
        """True if written, False if identical; ConflictError if different while leases exist (unless force)."""
        return await self._run(self.store.put_config, config, force=force, signer=signer)

    async def read_key(self, key: str) -> KeyValue | None:
        """One key under the prefix as it is now (e.g. KeyLayout.revoked)."""
        return await self._run(self.store.etcd.get, key)

    async def put_key_if(self, key: str, value: bytes, *, mod_revision: int) -> bool:
        """Write a key iff its mod_revision is still `mod_revision` (0: absent); False if it moved."""
        return (await self._run(self.store.etcd.put_if, key, value, mod_revision=mod_revision)).succeeded

    async def list_leases(self, config: ClusterConfig) -> Listing:
        """Every subnet lease in the cluster, own included (for `overlayctl hosts`)."""
        return await self._run(self.store.list_leases, config)

    async def acquire(self, config: ClusterConfig, record: HostRecord, *, previous: IPNetwork | None = None) -> Lease:
        """Claim a subnet (previous kept when possible, in place if its key survived)."""
        return await self._run(self.store.acquire, config, record, previous=previous)

    async def reclaim(self, config: ClusterConfig, record: HostRecord, subnet: IPNetwork) -> Lease:
        """Claim this very subnet again (SubnetTaken if another host holds it); never another one."""
        return await self._run(self.store.reclaim, config, record, subnet)

    async def find_own(self, config: ClusterConfig, record: HostRecord) -> IPNetwork | None:
        """The subnet whose key names this host by node name and public IP, if any."""
        return await self._run(self.store.find_own, config, record)

    async def give_up(self, subnet: IPNetwork, record: HostRecord) -> bool:
        """Release our key on `subnet` now (the operator renumbers this host)."""
        return await self._run(self.store.give_up, subnet, record)

    def lease_keeper(
        self,
        config: ClusterConfig,
        record: HostRecord,
        subnet: IPNetwork,
        lease: Lease | None = None,
        *,
        reporter: Reporter | None = None,
    ) -> LeaseKeeper:
        """A keeper for this host's lease on `subnet` (see keeper.py); run it with nursery.start(keeper.run).
        lease: the one acquire() or reclaim() returned, or None to start by claiming `subnet` again."""
        return LeaseKeeper(self.store, config, record, subnet, lease, reporter=reporter)

    async def follow_leases(
        self,
        config: ClusterConfig,
        send_channel: trio.MemorySendChannel[WatchBatch],
        own_subnet: IPNetwork | None = None,
        *,
        reporter: Reporter | None = None,
    ) -> NoReturn:
        """Follow the peers' leases forever (see watch.py); run it with nursery.start_soon.
        Every WatchBatch, the first full listing included, goes to send_channel: etcd being
        down only delays it. etcd failures go to reporter (component "watch")."""
        await LeaseFollower(self.store, config, own_subnet, reporter=reporter).run(send_channel)

    async def aclose(self) -> None:
        self.store.etcd.close()
