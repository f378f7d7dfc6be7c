"""The lease keeper against a scripted store on trio's mock clock: renewals, outages, loss, conflicts."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address, ip_network
from typing import Any

import pytest
import trio
import trio.testing

from ipam.config import ClusterConfig
from overlayd.cluster.errors import LeaseLost, SubnetTaken
from overlayd.cluster.keeper import CLAIM_MAX_BACKOFF, CONFLICT_RETRY, RENEW_RETRY, LeaseKeeper
from overlayd.cluster.records import HostRecord, Lease
from overlayd.errors import ClusterError

CONFIG = ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24)
SUBNET = ip_network("10.244.7.0/24")
RECORD = HostRecord("h1", ip_address("198.18.0.11"), {"type": "vxlan", "vtep_mac": "02:00:00:00:00:11"})
TTL = 15


class FakeEtcd:
    """What the keeper sees of etcd: up or down, our lease alive or not, who holds our subnet."""

    lease_ttl = TTL

    def __init__(self) -> None:
        self.down = False
        self.lease_alive = True
        self.holder: str | None = "h1"
        self.next_id = 100
        self.renewals: list[float] = []
        self.claims: list[float] = []

    def renew(self, lease: Lease) -> int:
        self.renewals.append(trio.current_time())
        if self.down:
            raise ClusterError("etcd unreachable (lease keepalive): connection refused")
        if not self.lease_alive:
            raise LeaseLost(lease.lease_id or 0)
        return TTL

    def reclaim(self, config: ClusterConfig, record: HostRecord, subnet: Any) -> Lease:
        self.claims.append(trio.current_time())
        assert subnet == SUBNET  # never another subnet
        if self.down:
            raise ClusterError("etcd unreachable (lease grant): connection refused")
        if self.holder not in (None, record.node):
            raise SubnetTaken(subnet, self.holder)
        self.holder, self.lease_alive = record.node, True
        self.next_id += 1
        return Lease(subnet, record, self.next_id)


class Reports:
    def __init__(self) -> None:
        self.failing: dict[str, int] = {}
        self.recovered: list[str] = []

    def fail(self, component: str, message: str) -> None:
        self.failing[component] = self.failing.get(component, 0) + 1

    def recover(self, component: str) -> None:
        if self.failing.pop(component, None) is not None:
            self.recovered.append(component)


async def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def run(scenario: Callable[[FakeEtcd, Reports], Any]) -> None:
    """Run scenario(etcd, reports) on a mock clock that jumps over idle time."""
    trio.run(scenario, FakeEtcd(), Reports(), clock=trio.testing.MockClock(autojump_threshold=0))


def keeper_for(etcd: FakeEtcd, reports: Reports, lease: Lease | None = Lease(SUBNET, RECORD, 1)) -> LeaseKeeper:
    return LeaseKeeper(etcd, CONFIG, RECORD, SUBNET, lease, reporter=reports, run_sync=_direct)


def test_renews_every_third_of_the_ttl() -> None:
    async def scenario(etcd: FakeEtcd, reports: Reports) -> None:
        keeper = keeper_for(etcd, reports)
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await trio.sleep(60.5)
            assert keeper.state == "held" and keeper.ttl_left() == pytest.approx(TTL - 0.5)
            nursery.cancel_scope.cancel()
        assert etcd.renewals == pytest.approx([5.0 * i for i in range(1, 13)])
        assert reports.failing == {} and etcd.claims == []

    run(scenario)


def test_an_outage_is_retried_every_second_and_reported_once() -> None:
    async def scenario(etcd: FakeEtcd, reports: Reports) -> None:
        keeper = keeper_for(etcd, reports)
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await trio.sleep(1)
            etcd.down = True
            await trio.sleep(4.5)  # first failed renewal at t=5
            assert keeper.state == "unconfirmed" and reports.failing == {"lease": 1}
            await trio.sleep(15)  # past the TTL without a renewal
            assert keeper.state == "expired" and keeper.ttl_left() == 0
            await trio.sleep(40)
            attempts = len(etcd.renewals)
            etcd.down = False  # etcd restarted; it kept the lease
            await trio.sleep(RENEW_RETRY + 0.1)
            assert keeper.state == "held" and reports.recovered == ["lease"] and reports.failing == {}
            nursery.cancel_scope.cancel()
        assert 55 <= attempts <= 58  # one try a second over the 56 s outage
        assert etcd.claims == []  # the lease survived: nothing claimed again

    run(scenario)


def test_a_lost_lease_is_claimed_again_for_the_same_subnet() -> None:
    async def scenario(etcd: FakeEtcd, reports: Reports) -> None:
        keeper = keeper_for(etcd, reports)
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            etcd.lease_alive = False  # revoked, or expired while we were cut off
            etcd.holder = None
            await trio.sleep(5.1)
            assert etcd.claims == pytest.approx([5.0])  # found at the next renewal, claimed at once
            assert keeper.lease == Lease(SUBNET, RECORD, 101) and keeper.state == "held"
            await trio.sleep(5)
            assert etcd.renewals[-1] == pytest.approx(10.0)  # and kept alive again
            nursery.cancel_scope.cancel()

    run(scenario)


def test_a_subnet_taken_meanwhile_is_reported_and_never_replaced() -> None:
    async def scenario(etcd: FakeEtcd, reports: Reports) -> None:
        keeper = keeper_for(etcd, reports)
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            etcd.lease_alive, etcd.holder = False, "intruder"
            await trio.sleep(5.5)
            assert keeper.state == "conflict" and keeper.lease is None and keeper.ttl_left() is None
            assert reports.failing == {"subnet": 1}
            await trio.sleep(4 * CONFLICT_RETRY)
            assert reports.failing == {"subnet": 5}
            assert etcd.claims == pytest.approx([5.0 + CONFLICT_RETRY * i for i in range(5)])
            etcd.holder = None  # the intruder's lease ended
            await trio.sleep(CONFLICT_RETRY)
            assert keeper.state == "held" and reports.recovered == ["subnet"]
            nursery.cancel_scope.cancel()

    run(scenario)


def test_starting_without_a_lease_claims_with_capped_backoff_while_etcd_is_down() -> None:
    async def scenario(etcd: FakeEtcd, reports: Reports) -> None:
        etcd.down = True
        keeper = keeper_for(etcd, reports, lease=None)
        assert keeper.state == "claiming"
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await trio.sleep(10)
            etcd.down = False
            await trio.sleep(CLAIM_MAX_BACKOFF + 0.1)
            assert keeper.state == "held" and reports.recovered == ["lease"]
            nursery.cancel_scope.cancel()
        gaps = [b - a for a, b in zip(etcd.claims, etcd.claims[1:])]
        assert gaps[:3] == pytest.approx([0.5, 1.0, 2.0]) and max(gaps) == pytest.approx(CLAIM_MAX_BACKOFF)

    run(scenario)


def test_a_lease_for_another_subnet_is_refused() -> None:
    with pytest.raises(ValueError):
        LeaseKeeper(FakeEtcd(), CONFIG, RECORD, SUBNET, Lease(ip_network("10.244.8.0/24"), RECORD, 1))
