"""The daemon's peer follower with a fake backend on trio's mock clock: what gets programmed when,
what is saved for the next start, and how health follows kernel failures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ipaddress import ip_address, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import trio
import trio.testing

from ipam.config import ClusterConfig
from overlayd.backend.vxlan import ReconcileResult
from overlayd.cluster.diff import HostRemoved
from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cluster.watch import WatchBatch
from overlayd.config import config_from_mapping
from overlayd.daemon import PEER_GRACE, Daemon
from overlayd.errors import KernelError
from overlayd.hoststate import StateFiles

CONFIG = ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24)
OWN = ip_network("10.244.9.0/24")


def lease(subnet: str, node: str, host: int) -> Lease:
    backend = {"type": "vxlan", "vtep_mac": f"02:00:00:00:00:{host:02x}"}
    record = HostRecord(node, ip_address(f"198.18.0.{host}"), backend)
    return Lease(ip_network(subnet), record)


A, B, C = lease("10.244.1.0/24", "a", 11), lease("10.244.2.0/24", "b", 12), lease("10.244.3.0/24", "c", 13)


def batch(*leases: Lease, resync: bool) -> WatchBatch:
    return WatchBatch((), MappingProxyType({lease.subnet: lease for lease in leases}), 1, resync)


class FakeBackend:
    mtu = 1450

    def __init__(self) -> None:
        self.programmed: list[set[IPNetwork]] = []
        self.fail = False

    def reconcile(self, peers: Mapping[IPNetwork, Any]) -> ReconcileResult:
        if self.fail:
            raise KernelError("netlink: no buffer space")
        self.programmed.append(set(peers))
        return ReconcileResult()

    @property
    def now(self) -> set[IPNetwork]:
        return self.programmed[-1]


async def _direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    d = Daemon(config_from_mapping({"node_name": "h9", "state_dir": str(tmp_path)}))
    d.backend = FakeBackend()  # type: ignore[assignment]
    d.cluster_config, d.subnet = CONFIG, OWN
    d._kernel = _direct  # type: ignore[method-assign]
    d._disk = _direct  # type: ignore[method-assign]
    return d


def run(scenario: Callable[..., Any], daemon: Daemon) -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        send, receive = trio.open_memory_channel[WatchBatch](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon._follow_peers, receive)

            async def deliver(b: WatchBatch) -> None:
                await send.send(b)
                await trio.testing.wait_all_tasks_blocked()

            async def elapse(seconds: float) -> None:
                clock.jump(seconds)
                await trio.testing.wait_all_tasks_blocked()

            await scenario(deliver, elapse)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)


def saved(daemon: Daemon) -> set[IPNetwork]:
    return set(StateFiles(daemon.config.state_dir).load_peers(CONFIG)[0])


def test_a_live_removal_is_applied_at_once(daemon: Daemon) -> None:
    backend: FakeBackend = daemon.backend  # type: ignore[assignment]

    async def scenario(deliver: Any, elapse: Any) -> None:
        await deliver(batch(A, B, resync=False))
        assert backend.now == {A.subnet, B.subnet} and saved(daemon) == {A.subnet, B.subnet}
        await deliver(WatchBatch((HostRemoved(B),), MappingProxyType({A.subnet: A}), 2, False))
        assert backend.now == {A.subnet} and saved(daemon) == {A.subnet}

    run(scenario, daemon)


def test_peers_missing_from_a_post_outage_listing_get_the_grace(daemon: Daemon) -> None:
    backend: FakeBackend = daemon.backend  # type: ignore[assignment]

    async def scenario(deliver: Any, elapse: Any) -> None:
        await deliver(batch(A, B, C, resync=False))
        await deliver(batch(A, resync=True))  # etcd came back; B and C have not claimed again yet
        assert backend.now == {A.subnet, B.subnet, C.subnet}
        assert (await daemon.status())["peers_in_grace"] == 2
        await elapse(PEER_GRACE / 2)
        await deliver(batch(A, B, resync=False))  # B is back: no gap for it
        await elapse(PEER_GRACE / 2 + 0.1)  # C never came back
        assert backend.now == {A.subnet, B.subnet}
        assert all(B.subnet in programmed for programmed in backend.programmed)
        assert (await daemon.status())["peers_in_grace"] == 0 and saved(daemon) == {A.subnet, B.subnet}

    run(scenario, daemon)


def test_kernel_failures_degrade_health_until_a_reconcile_works(daemon: Daemon) -> None:
    backend: FakeBackend = daemon.backend  # type: ignore[assignment]
    daemon.health.set_ready()

    async def scenario(deliver: Any, elapse: Any) -> None:
        backend.fail = True
        await deliver(batch(A, resync=False))
        report = await daemon.status()
        assert report["health"] == "degraded" and report["problems"][0].startswith("kernel: ")
        assert "no buffer space" in report["last_error"]
        assert saved(daemon) == set()  # only what was programmed is saved
        backend.fail = False
        await deliver(batch(A, B, resync=False))
        report = await daemon.status()
        assert report["health"] == "ok" and report["etcd"] == "ok" and backend.now == {A.subnet, B.subnet}

    run(scenario, daemon)
