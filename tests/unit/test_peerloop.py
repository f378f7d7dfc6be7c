"""The peer policy and the loop that drives it, with a fake backend on trio's mock clock:
what gets programmed when, what is saved for the next start, how health follows kernel
failures and refused records. Collaborators are passed in; nothing is monkeypatched."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from ipaddress import ip_address, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import trio
import trio.testing

from ipam.config import ClusterConfig
from overlayd.backend.contract import Observations, ReconcileResult, Refusal
from overlayd.backend.peers import PeerVtep
from overlayd.cluster.diff import HostRemoved
from overlayd.cluster.grace import PeerGrace
from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cluster.watch import WatchBatch
from overlayd.errors import KernelError
from overlayd.health import HealthModel, LoggingReporter
from overlayd.hoststate import StateFiles
from overlayd.metrics import DaemonMetrics
from overlayd.peering import PeerPolicy
from overlayd.peerloop import SAVE_INTERVAL, PeerLoop

CONFIG = ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24)
GRACE = 10.0


def lease(subnet: str, node: str, host: int, backend_type: str = "vxlan") -> Lease:
    backend = {"type": backend_type, "vtep_mac": f"02:00:00:00:00:{host:02x}"}
    if backend_type != "vxlan":
        backend = {"type": backend_type, "public_key": "A" * 43 + "=", "port": "51820"}
    return Lease(ip_network(subnet), HostRecord(node, ip_address(f"198.18.0.{host}"), backend))


A, B, C = lease("10.244.1.0/24", "a", 11), lease("10.244.2.0/24", "b", 12), lease("10.244.3.0/24", "c", 13)


def batch(*leases: Lease, resync: bool = False, refused: Mapping[str, str] | None = None) -> WatchBatch:
    return WatchBatch((), MappingProxyType({lease.subnet: lease for lease in leases}), 1, resync,
                      refused=MappingProxyType(dict(refused or {})))


def parse(record: HostRecord, revision: int) -> PeerVtep:
    return PeerVtep.from_backend_data_untrusted(record.public_ip, record.backend, revision)


class FakeBackend:
    type = "fake"
    observes = False
    mtu = 1450

    def __init__(self) -> None:
        self.programmed: list[set[IPNetwork]] = []
        self.fail = False
        self.refuse: dict[IPNetwork, str] = {}  # subnet -> conflict the backend reports

    def reconcile(self, peers: Mapping[IPNetwork, Any], *, full: bool = False) -> ReconcileResult:
        if self.fail:
            raise KernelError("netlink: no buffer space")
        self.programmed.append(set(peers) - set(self.refuse))
        return ReconcileResult(refused=tuple(Refusal(s, why) for s, why in self.refuse.items() if s in peers))

    def observe(self) -> Observations:
        return Observations()

    @property
    def now(self) -> set[IPNetwork]:
        return self.programmed[-1]


async def direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class Bench:
    def __init__(self, state_dir: Path, screen: Any = None) -> None:
        self.backend = FakeBackend()
        self.health = HealthModel()
        self.health.set_ready()
        self.files = StateFiles(state_dir)
        self.metrics = DaemonMetrics()
        self.loop = PeerLoop(self.backend, PeerPolicy(parse, PeerGrace(GRACE), screen), files=self.files,  # type: ignore[arg-type]
                             metrics=self.metrics, reporter=LoggingReporter(logging.getLogger("t"), self.health),
                             health=self.health, kernel=direct, disk=direct)

    def saved(self) -> set[IPNetwork]:
        return set(self.files.load_peers(CONFIG)[0])

    def dropped(self, reason: str) -> float | None:
        return self.metrics.registry.get_sample_value("overlayd_dropped_records_total", {"reason": reason})

    def components(self) -> set[str]:
        return {p.component for p in self.health.report().problems}

    def run(self, scenario: Callable[..., Any]) -> None:
        clock = trio.testing.MockClock()

        async def main() -> None:
            send, receive = trio.open_memory_channel[WatchBatch](16)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.loop.follow, receive)
                nursery.start_soon(self.loop.save_pending)

                async def deliver(b: WatchBatch) -> None:
                    await send.send(b)
                    await trio.testing.wait_all_tasks_blocked()

                async def elapse(seconds: float) -> None:
                    clock.jump(seconds)
                    await trio.testing.wait_all_tasks_blocked()

                await scenario(deliver, elapse)
                nursery.cancel_scope.cancel()

        trio.run(main, clock=clock)


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)


def test_a_live_removal_is_applied_at_once(bench: Bench) -> None:
    async def scenario(deliver: Any, elapse: Any) -> None:
        await deliver(batch(A, B))
        assert bench.backend.now == {A.subnet, B.subnet} and bench.saved() == {A.subnet, B.subnet}
        await deliver(WatchBatch((HostRemoved(B),), MappingProxyType({A.subnet: A}), 2, False))
        assert bench.backend.now == {A.subnet}  # programmed at once ...
        await elapse(SAVE_INTERVAL)  # ... and saved soon after, off the event's path
        assert bench.saved() == {A.subnet}

    bench.run(scenario)


def test_peers_missing_from_a_post_outage_listing_get_the_grace(bench: Bench) -> None:
    async def scenario(deliver: Any, elapse: Any) -> None:
        await deliver(batch(A, B, C))
        await deliver(batch(A, resync=True))  # etcd came back; B and C have not claimed again yet
        assert bench.backend.now == {A.subnet, B.subnet, C.subnet} and len(bench.loop.policy.held) == 2
        await elapse(GRACE / 2)
        await deliver(batch(A, B))  # B is back: no gap for it
        await elapse(GRACE / 2 + 0.1)  # C never came back
        assert bench.backend.now == {A.subnet, B.subnet}
        assert all(B.subnet in programmed for programmed in bench.backend.programmed)
        await elapse(SAVE_INTERVAL)
        assert len(bench.loop.policy.held) == 0 and bench.saved() == {A.subnet, B.subnet}

    bench.run(scenario)


def test_kernel_failures_degrade_health_until_a_reconcile_works(bench: Bench) -> None:
    async def scenario(deliver: Any, elapse: Any) -> None:
        bench.backend.fail = True
        await deliver(batch(A))
        assert bench.components() == {"kernel"} and "no buffer space" in (bench.health.report().last_error or "")
        assert bench.saved() == set()  # only what was programmed is saved
        bench.backend.fail = False
        await deliver(batch(A, B))
        assert bench.health.report().health == "ok" and bench.backend.now == {A.subnet, B.subnet}

    bench.run(scenario)


def test_refused_records_and_unfit_peers_keep_health_degraded_while_they_last(bench: Bench) -> None:
    odd = lease("10.244.4.0/24", "odd", 14, backend_type="wireguard")  # fine, but not for a VXLAN backend

    async def scenario(deliver: Any, elapse: Any) -> None:
        await deliver(batch(A, refused={"/k/10.244.250.0-24": "10.244.250.0/24: unsigned"}))
        assert bench.components() == {"records"}
        await deliver(batch(A, odd))
        assert bench.components() == {"peers"} and bench.backend.now == {A.subnet} and bench.loop.refused == 1
        await deliver(batch(A))
        assert bench.health.report().health == "ok" and bench.loop.refused == 0

    bench.run(scenario)


def test_unfit_and_refused_peers_are_dropped_records_counted_once_by_reason(bench: Bench) -> None:
    odd = lease("10.244.4.0/24", "odd", 14, backend_type="wireguard")  # fine, but not for a VXLAN backend

    async def scenario(deliver: Any, elapse: Any) -> None:
        bench.backend.refuse = {B.subnet: "VTEP MAC is our own"}
        await deliver(batch(A, B, odd))
        assert (bench.dropped("backend_mismatch"), bench.dropped("conflict")) == (1, 1)
        await bench.loop.converge()  # every resync repeats them: still one drop each
        await deliver(batch(A, B, odd, C))
        assert (bench.dropped("backend_mismatch"), bench.dropped("conflict")) == (1, 1)
        assert bench.dropped("malformed") == 0
        bench.backend.refuse = {}
        await deliver(batch(A, B, C))
        bench.backend.refuse = {B.subnet: "VTEP MAC is our own"}  # refused again after a good spell
        await deliver(batch(A, B, C))
        assert (bench.dropped("backend_mismatch"), bench.dropped("conflict")) == (1, 2)

    bench.run(scenario)


def test_certificate_screening_is_rechecked_from_the_listed_peers(tmp_path: Path) -> None:
    expired: set[str] = set()

    def screen(peers: Mapping[IPNetwork, Lease]) -> tuple[Mapping[IPNetwork, Lease], list[str]]:
        kept = {s: lease for s, lease in peers.items() if lease.record.node not in expired}
        return kept, [f"{s}: dropped" for s in peers if s not in kept]

    bench = Bench(tmp_path, screen)

    async def scenario(deliver: Any, elapse: Any) -> None:
        await deliver(batch(A, B))
        expired.add("b")
        await bench.loop.rescreen()  # no etcd event: the certificate ran out
        assert bench.backend.now == {A.subnet}
        expired.clear()  # b renewed its certificate and re-signed its record in place
        await bench.loop.rescreen()
        assert bench.backend.now == {A.subnet, B.subnet}

    bench.run(scenario)
