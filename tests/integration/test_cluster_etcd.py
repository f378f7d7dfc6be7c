"""The cluster layer against a real etcd: claims, races, re-claims, expiry, config, watch resync."""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

import etcd3
import pytest
import trio

from ipam.config import BackendConfig, ClusterConfig
from overlayd.cluster.client import ClusterClient
from overlayd.cluster.diff import HostAdded, HostChanged, HostRemoved
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cluster.store import Listing, SubnetStore
from overlayd.config import EtcdConfig
from overlayd.errors import ClusterError, ConfigError, ConflictError, NotFoundError
from overlayd.lab.etcd_process import EtcdProcess
from tests.integration.etcd_fixture import connected, etcd_config, following, free_ports, receive

pytestmark = pytest.mark.integration

Raw = etcd3.Etcd3Client
CONFIG = ClusterConfig(network=ipaddress.ip_network("10.244.0.0/16"), subnet_len=24)


def record(node: str, host: int, mac_tail: int | None = None) -> HostRecord:
    mac = f"02:00:00:00:00:{mac_tail if mac_tail is not None else host:02x}"
    return HostRecord(node, ipaddress.ip_address(f"198.18.0.{host}"), {"type": "vxlan", "vtep_mac": mac})


# -- errors and endpoints ----------------------------------------------------------------


def test_unreachable_etcd_is_a_clear_cluster_error() -> None:
    (port,) = free_ports(1)

    async def main() -> None:
        config = EtcdConfig(endpoints=(f"http://127.0.0.1:{port}",), timeout=2.0)
        with pytest.raises(ClusterError) as info:
            await ClusterClient.connect(config)
        message = str(info.value)
        assert "etcd unreachable" in message and f"127.0.0.1:{port}" in message
        assert "refused" in message.lower() or "unavailable" in message.lower()
        assert type(info.value).__module__.startswith("overlayd")

    trio.run(main)


def test_second_endpoint_is_used_when_the_first_is_down(etcd_server: EtcdProcess, etcd_prefix: str) -> None:
    (dead,) = free_ports(1)

    async def main() -> None:
        cluster = await ClusterClient.connect(etcd_config(etcd_server, etcd_prefix, f"http://127.0.0.1:{dead}"))
        try:
            assert await cluster.put_config(CONFIG)
            assert await cluster.get_config() == CONFIG
        finally:
            await cluster.aclose()

    trio.run(main)


# -- config ----------------------------------------------------------------------------


def test_config_write_is_idempotent_and_refused_while_leases_exist(
    etcd_server: EtcdProcess, etcd_prefix: str,
) -> None:
    other = ClusterConfig(network=ipaddress.ip_network("10.250.0.0/16"), subnet_len=24)
    vxlan_port = ClusterConfig(network=CONFIG.network, subnet_len=24, backend=BackendConfig("vxlan", port=8472))

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as cluster:
            assert await cluster.put_config(CONFIG) is True
            assert await cluster.put_config(CONFIG) is False
            assert await cluster.put_config(vxlan_port) is True  # no leases yet: a change is fine
            assert await cluster.put_config(CONFIG) is True
            await cluster.acquire(CONFIG, record("h1", 11))
            assert await cluster.put_config(CONFIG) is False  # identical: still a no-op
            with pytest.raises(ConflictError, match="1 host subnet lease"):
                await cluster.put_config(other)
            assert await cluster.get_config() == CONFIG
            assert await cluster.put_config(other, force=True) is True
            assert await cluster.get_config() == other

    trio.run(main)


def test_invalid_stored_config_is_a_config_error(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: Raw,
) -> None:
    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as cluster:
            with pytest.raises(NotFoundError):
                await cluster.get_config()
            raw.put(KeyLayout(etcd_prefix).config, b'{"network": "10.0.0.0/33"}')
            with pytest.raises(ConfigError, match="network"):
                await cluster.get_config()

    trio.run(main)


# -- claims ----------------------------------------------------------------------------


def test_claim_is_listed_and_attached_to_a_lease(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: Raw,
) -> None:
    layout = KeyLayout(etcd_prefix)
    # A malformed entry takes its subnet out of play but is otherwise skipped.
    raw.put(layout.subnets + "10.244.7.0-24", b"{not json")

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix, ttl=30) as cluster:
            lease = await cluster.acquire(CONFIG, record("h1", 11))
            assert CONFIG.contains_subnet(lease.subnet)
            assert lease.subnet != ipaddress.ip_network("10.244.7.0/24")
            listing = await cluster.list_leases(CONFIG)
            assert [(l.subnet, l.record) for l in listing.leases] == [(lease.subnet, record("h1", 11))]
            assert listing.taken == {lease.subnet, ipaddress.ip_network("10.244.7.0/24")}
            assert len(listing.rejected) == 1
            value, meta = raw.get(layout.subnet_key(lease.subnet))
            assert json.loads(value)["node"] == "h1"
            assert meta.lease_id == lease.lease_id
            assert 0 < raw.get_lease_info(lease.lease_id).TTL <= 30

    trio.run(main)


def test_racing_claimers_never_share_a_subnet(etcd_server: EtcdProcess, etcd_prefix: str) -> None:
    small = ClusterConfig(network=ipaddress.ip_network("10.244.0.0/26"), subnet_len=29)  # 8 subnets
    outcomes: dict[str, Lease | Exception] = {}

    async def claim(name: str, host: int) -> None:
        async with connected(etcd_server, etcd_prefix) as cluster:
            try:
                outcomes[name] = await cluster.acquire(small, record(name, host))
            except ConflictError as exc:
                outcomes[name] = exc

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as cluster:
            await cluster.put_config(small)
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(claim, f"h{i}", 20 + i)
        async with connected(etcd_server, etcd_prefix) as cluster:
            listing = await cluster.list_leases(small)
        won = {name: o for name, o in outcomes.items() if isinstance(o, Lease)}
        lost = [o for o in outcomes.values() if not isinstance(o, Lease)]
        assert len(won) == 8 and len(lost) == 2
        assert all("no free /29" in str(exc) for exc in lost)
        assert len({lease.subnet for lease in won.values()}) == 8
        # etcd agrees with every winner, and nobody holds two keys.
        assert {l.subnet: l.record.node for l in listing.leases} == {l.subnet: n for n, l in won.items()}
        assert len({l.lease_id for l in listing.leases}) == 8

    trio.run(main)


def test_restart_takes_the_key_over_without_a_gap(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: Raw,
) -> None:
    layout = KeyLayout(etcd_prefix)

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as peer:
            async with following(peer, CONFIG) as (_, batches):
                async with connected(etcd_server, etcd_prefix) as first_run:
                    before = await first_run.acquire(CONFIG, record("h1", 11))
                assert (await receive(batches)).events == (HostAdded(before),)
                _, meta_before = raw.get(layout.subnet_key(before.subnet))

                # The daemon restarts (new process, new etcd lease) with the subnet from its state,
                # and a new VTEP MAC.
                async with connected(etcd_server, etcd_prefix) as second_run:
                    after = await second_run.acquire(CONFIG, record("h1", 11, mac_tail=0x99), previous=before.subnet)
                assert after.subnet == before.subnet and after.lease_id != before.lease_id
                _, meta_after = raw.get(layout.subnet_key(after.subnet))
                assert meta_after.create_revision == meta_before.create_revision  # never deleted
                assert meta_after.lease_id == after.lease_id
                assert raw.get_lease_info(before.lease_id).TTL == -1  # the old lease was revoked

                batch = await receive(batches)
                assert [type(e) for e in batch.events] == [HostChanged]
                assert batch.events[0].new.record.backend["vtep_mac"] == "02:00:00:00:00:99"

    trio.run(main)


def test_previous_subnet_of_another_node_is_not_taken_over(
    etcd_server: EtcdProcess, etcd_prefix: str,
) -> None:
    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as cluster:
            theirs = await cluster.acquire(CONFIG, record("h1", 11))
            mine = await cluster.acquire(CONFIG, record("h2", 12), previous=theirs.subnet)
            assert mine.subnet != theirs.subnet
            listing = await cluster.list_leases(CONFIG)
            assert {l.subnet: l.record.node for l in listing.leases} == {theirs.subnet: "h1", mine.subnet: "h2"}

    trio.run(main)


# -- lease lifetime ----------------------------------------------------------------------


def test_expired_lease_removes_the_key_and_cools_the_subnet(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: Raw,
) -> None:
    layout = KeyLayout(etcd_prefix)

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix, ttl=2) as cluster:
            async with following(cluster, CONFIG) as (_, batches):
                lease = await cluster.acquire(CONFIG, record("h1", 11))  # nobody keeps it alive
                assert isinstance((await receive(batches)).events[0], HostAdded)
                batch = await receive(batches, timeout=10)
                assert [(type(e), e.lease.subnet) for e in batch.events] == [(HostRemoved, lease.subnet)]
                assert batch.peers == {}
                assert raw.get(layout.subnet_key(lease.subnet)) == (None, None)
                with trio.fail_after(5):
                    while raw.get(layout.cooldown_key(lease.subnet))[0] is None:
                        await trio.sleep(0.05)
                # A newcomer avoids the cooling subnet; the former holder gets it back.
                newcomer = await cluster.acquire(CONFIG, record("h2", 12))
                assert newcomer.subnet != lease.subnet
                again = await cluster.acquire(CONFIG, record("h1", 11), previous=lease.subnet)
                assert again.subnet == lease.subnet

    trio.run(main)


def test_keepalive_holds_the_lease_and_reclaims_it_when_lost(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: Raw,
) -> None:
    layout = KeyLayout(etcd_prefix)

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix, ttl=2) as cluster:
            lease = await cluster.acquire(CONFIG, record("h1", 11))
            keeper = cluster.lease_keeper(CONFIG, lease.record, lease.subnet, lease)

            async def claimed_after(old: Lease) -> Lease:
                """The lease the keeper holds once it has claimed the subnet again."""
                with trio.fail_after(10):
                    while keeper.lease is None or keeper.lease.lease_id == old.lease_id:
                        await trio.sleep(0.05)
                return keeper.lease

            async with trio.open_nursery() as nursery:
                await nursery.start(keeper.run)
                await trio.sleep(4)  # twice the TTL
                assert raw.get(layout.subnet_key(lease.subnet))[1].lease_id == lease.lease_id
                assert keeper.state == "held"
                raw.revoke_lease(lease.lease_id)  # e.g. an operator, or expiry while partitioned
                new = await claimed_after(lease)
                assert new.subnet == lease.subnet and new.lease_id != lease.lease_id
                assert raw.get(layout.subnet_key(new.subnet))[1].lease_id == new.lease_id
                await trio.sleep(3)  # the new lease is kept alive as well
                assert raw.get(layout.subnet_key(new.subnet))[1].lease_id == new.lease_id
                # A live lease whose key was deleted holds nothing: that is a loss too.
                raw.delete(layout.subnet_key(new.subnet))
                newer = await claimed_after(new)
                assert newer.subnet == lease.subnet and newer.lease_id != new.lease_id
                assert raw.get(layout.subnet_key(newer.subnet))[1].lease_id == newer.lease_id
                nursery.cancel_scope.cancel()

    trio.run(main)


# -- watch -----------------------------------------------------------------------------


class RacedStore(SubnetStore):
    """A SubnetStore that runs `meanwhile` once, right after its first listing: what etcd may
    do between the watch's listing and the start of the watch that follows it."""

    def __init__(self, base: SubnetStore, meanwhile: Callable[[], None]) -> None:
        super().__init__(base.etcd, base.layout, lease_ttl=base.lease_ttl)
        self._meanwhile: Callable[[], None] | None = meanwhile

    def list_leases(self, config: ClusterConfig) -> Listing:
        listing = super().list_leases(config)
        meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return listing


def test_watch_resyncs_after_its_revision_was_compacted(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: Raw, caplog: pytest.LogCaptureFixture,
) -> None:
    layout = KeyLayout(etcd_prefix)
    caplog.set_level(logging.INFO, logger="overlayd.cluster.watch")

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as cluster:
            a = await cluster.acquire(CONFIG, record("a", 11))
            b = await cluster.acquire(CONFIG, record("b", 12))
            own = await cluster.acquire(CONFIG, record("me", 19))
            later: dict[str, Lease] = {}

            def meanwhile() -> None:
                # After the first listing, before the watch starts: a goes away, b changes its
                # address, d joins, and the history is compacted past the listing's revision.
                raw.revoke_lease(a.lease_id)
                later["b"] = cluster.store.acquire(CONFIG, record("b", 42), previous=b.subnet)
                later["d"] = cluster.store.acquire(CONFIG, record("d", 14))
                raw.compact(raw.get_response(layout.subnets).header.revision)

            raced = ClusterClient(RacedStore(cluster.store, meanwhile))
            async with following(raced, CONFIG, own.subnet) as (initial, batches):
                assert {l.record.node for l in initial.peers.values()} == {"a", "b"}
                batch = await receive(batches)
                # a's subnet vanished during the missed watch: the watcher marks it cooling.
                with trio.fail_after(5):
                    while raw.get(layout.cooldown_key(a.subnet))[0] is None:
                        await trio.sleep(0.05)

            b2, d = later["b"], later["d"]
            assert "compacted" in caplog.text  # the watch hit the compaction, then re-listed
            assert batch.resync is True
            assert [type(e) for e in batch.events] == [HostRemoved, HostChanged, HostAdded]
            removed, changed, added = batch.events
            assert removed.lease.subnet == a.subnet
            assert changed.old.record == b.record and changed.new.record == b2.record
            assert added.lease.subnet == d.subnet and added.lease.record == d.record
            assert {s: l.record.node for s, l in batch.peers.items()} == {b.subnet: "b", d.subnet: "d"}
            assert batch.revision > initial.revision

    trio.run(main)


def test_watch_survives_an_etcd_restart(etcd_server: EtcdProcess, etcd_prefix: str) -> None:
    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as cluster:
            async with following(cluster, CONFIG) as (_, batches):
                await trio.to_thread.run_sync(etcd_server.stop)
                await trio.sleep(1)
                await trio.to_thread.run_sync(etcd_server.start)
                with trio.fail_after(15):
                    while True:  # etcd may refuse for a moment after its restart
                        try:
                            lease = await cluster.acquire(CONFIG, record("h1", 11))
                            break
                        except ClusterError:
                            await trio.sleep(0.2)
                seen = []
                with trio.fail_after(15):
                    while not any(isinstance(e, HostAdded) and e.lease.subnet == lease.subnet for e in seen):
                        seen.extend((await batches.receive()).events)

    trio.run(main)


# -- the etcd process helper -------------------------------------------------------------


def test_etcd_process_in_a_network_namespace(tmp_path: Path) -> None:
    netns = f"t{secrets.token_hex(3)}-etcd"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        with EtcdProcess(tmp_path / "data", "127.0.0.1", 2379, 2380, netns=netns, log_path=tmp_path / "log") as etcd:
            assert etcd.endpoint == "http://127.0.0.1:2379"
            ready = subprocess.run(
                ["ip", "netns", "exec", netns, "ss", "-Hltn", "sport = :2379"], capture_output=True, text=True
            )
            assert "127.0.0.1:2379" in ready.stdout
            pid = etcd.pid
        assert pid is not None and not Path(f"/proc/{pid}").exists()
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def test_etcd_process_start_failure_shows_the_log(etcd_server: EtcdProcess, tmp_path: Path) -> None:
    (peer_port,) = free_ports(1)
    port = etcd_server.client_port  # taken
    clash = EtcdProcess(tmp_path / "data", "127.0.0.1", port, peer_port, log_path=tmp_path / "log")
    with pytest.raises(ClusterError, match="exited with status") as info:
        clash.start()
    assert "address already in use" in str(info.value)
