"""SubnetStore.reclaim against an in-memory etcd: the same subnet or nothing."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address, ip_network

import pytest

from ipam.config import ClusterConfig
from overlayd.cluster.errors import SubnetTaken
from overlayd.cluster.etcd import KeyValue, TxnResult
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import HostRecord
from overlayd.cluster.store import SubnetStore
from overlayd.errors import ConflictError

CONFIG = ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24)
SUBNET = ip_network("10.244.7.0/24")
LAYOUT = KeyLayout()
KEY = LAYOUT.subnet_key(SUBNET)


def record(node: str) -> HostRecord:
    return HostRecord(node, ip_address("198.18.0.11"), {"type": "vxlan", "vtep_mac": "02:00:00:00:00:11"})


class MemoryEtcd:
    """The few etcd calls reclaim makes, with revisions and leases; `before_put` can race us."""

    def __init__(self) -> None:
        self.kvs: dict[str, KeyValue] = {}
        self.revision = 1
        self.leases: set[int] = set()
        self.revoked: list[int] = []
        self.before_put: Callable[[], None] | None = None

    def put(self, key: str, value: bytes, lease_id: int) -> None:
        self.revision += 1
        old = self.kvs.get(key)
        self.kvs[key] = KeyValue(key.encode(), value, old.create_revision if old else self.revision, self.revision,
                                 lease_id)

    def get(self, key: str) -> KeyValue | None:
        return self.kvs.get(key)

    def grant(self, ttl: int) -> int:
        lease_id = 1000 + len(self.leases)
        self.leases.add(lease_id)
        return lease_id

    def revoke(self, lease_id: int) -> None:
        self.revoked.append(lease_id)
        self.kvs = {k: kv for k, kv in self.kvs.items() if kv.lease_id != lease_id}

    def put_if(self, key: str, value: bytes, *, mod_revision: int, lease_id: int = 0,
               require_empty: str | None = None) -> TxnResult:
        if self.before_put is not None:
            self.before_put()
            self.before_put = None
        current = self.kvs.get(key)
        if (current.mod_revision if current else 0) != mod_revision:
            return TxnResult(False, current)
        self.put(key, value, lease_id)
        return TxnResult(True, self.kvs[key])


@pytest.fixture
def etcd() -> MemoryEtcd:
    return MemoryEtcd()


@pytest.fixture
def store(etcd: MemoryEtcd) -> SubnetStore:
    return SubnetStore(etcd, LAYOUT, lease_ttl=15)  # type: ignore[arg-type]


def test_a_free_subnet_is_claimed_again(store: SubnetStore, etcd: MemoryEtcd) -> None:
    lease = store.reclaim(CONFIG, record("h1"), SUBNET)
    assert lease.subnet == SUBNET and lease.lease_id in etcd.leases
    assert etcd.kvs[KEY].lease_id == lease.lease_id and b'"h1"' in etcd.kvs[KEY].value


def test_our_surviving_key_is_taken_over_in_place(store: SubnetStore, etcd: MemoryEtcd) -> None:
    etcd.put(KEY, record("h1").to_json(), lease_id=7)
    created = etcd.kvs[KEY].create_revision
    lease = store.reclaim(CONFIG, record("h1"), SUBNET)
    assert etcd.kvs[KEY].lease_id == lease.lease_id != 7
    assert etcd.kvs[KEY].create_revision == created  # never deleted: peers see no gap
    assert 7 in etcd.revoked


@pytest.mark.parametrize("value, holder", [(record("h2").to_json(), "h2"), (b"{garbage", None)])
def test_a_subnet_held_by_another_host_is_left_alone(
    store: SubnetStore, etcd: MemoryEtcd, value: bytes, holder: str | None,
) -> None:
    etcd.put(KEY, value, lease_id=7)
    before = dict(etcd.kvs)
    with pytest.raises(SubnetTaken) as info:
        store.reclaim(CONFIG, record("h1"), SUBNET)
    assert info.value.holder == holder and info.value.subnet == SUBNET
    assert etcd.kvs == before and etcd.leases == set()  # nothing written, no lease granted


def test_losing_a_race_for_it_writes_nothing_and_revokes_the_new_lease(store: SubnetStore, etcd: MemoryEtcd) -> None:
    etcd.before_put = lambda: etcd.put(KEY, record("h2").to_json(), lease_id=7)
    with pytest.raises(SubnetTaken, match="h2"):
        store.reclaim(CONFIG, record("h1"), SUBNET)
    assert b'"h2"' in etcd.kvs[KEY].value
    assert etcd.revoked == [1000]


def test_a_subnet_outside_the_cluster_network_is_a_conflict(store: SubnetStore) -> None:
    with pytest.raises(ConflictError, match="not a host subnet"):
        store.reclaim(CONFIG, record("h1"), ip_network("10.9.0.0/24"))
