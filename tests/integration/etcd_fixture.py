"""A real etcd for integration tests: own process on 127.0.0.1 free ports, temp data dir.

conftest.py imports these fixtures; tests that share the server use their own key
prefix (`etcd_prefix`), so they never see each other's keys.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial

import etcd3
import pytest
import trio

from ipam.config import ClusterConfig
from overlayd.cluster.client import ClusterClient
from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import LeaseVerifier, RecordEncoder
from overlayd.cluster.watch import WatchBatch
from overlayd.config import EtcdConfig
from overlayd.lab.etcd_process import EtcdProcess


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (all held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    base = tmp_path_factory.mktemp("etcd")
    client_port, peer_port = free_ports(2)
    server = EtcdProcess(base / "data", "127.0.0.1", client_port, peer_port, log_path=base / "etcd.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix() -> str:
    return f"/t{secrets.token_hex(3)}/network"


@pytest.fixture
def raw(etcd_server: EtcdProcess) -> Iterator[etcd3.Etcd3Client]:
    """A plain etcd3 client, to inspect etcd behind the cluster layer's back or to write
    what an attacker with etcd access would."""
    client = etcd3.client("127.0.0.1", etcd_server.client_port, timeout=5)
    try:
        yield client
    finally:
        client.close()


def etcd_config(server: EtcdProcess, prefix: str, *extra_endpoints: str) -> EtcdConfig:
    return EtcdConfig(endpoints=(*extra_endpoints, server.endpoint), prefix=prefix, timeout=3.0)


@asynccontextmanager
async def connected(server: EtcdProcess, prefix: str, *, ttl: int = 30, signer: RecordEncoder | None = None,
                    verifier: LeaseVerifier | None = None) -> AsyncIterator[ClusterClient]:
    """A cluster client on the test etcd, optionally signing and verifying records (overlayd/trust)."""
    cluster = await ClusterClient.connect(etcd_config(server, prefix), lease_ttl=ttl, encoder=signer,
                                          verifier=verifier)
    try:
        yield cluster
    finally:
        await cluster.aclose()


async def receive(channel: trio.MemoryReceiveChannel[WatchBatch], timeout: float = 10) -> WatchBatch:
    with trio.fail_after(timeout):
        return await channel.receive()


@asynccontextmanager
async def following(
    cluster: ClusterClient, config: ClusterConfig, own_subnet: IPNetwork | None = None,
) -> AsyncIterator[tuple[WatchBatch, trio.MemoryReceiveChannel[WatchBatch]]]:
    """cluster.follow_leases running as the daemon runs it: yields the first batch (the full
    listing) and the channel the later ones arrive on; stops when the block ends."""
    send, batches = trio.open_memory_channel[WatchBatch](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(cluster.follow_leases, config, send, own_subnet))
        yield await receive(batches), batches
        nursery.cancel_scope.cancel()
