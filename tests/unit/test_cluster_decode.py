"""Turning etcd watch responses into key events (pure part of the watch loop)."""

from ipaddress import ip_network

from ipam.config import ClusterConfig
from overlayd.cluster.diff import LeaseDeleted, LeasePut
from overlayd.cluster.etcd import KeyValue, WatchChunk, WatchEvent
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.watch import decode_chunk

LAYOUT = KeyLayout("/t")
CONFIG = ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24)
GOOD = b'{"node":"h1","public_ip":"198.18.0.11","backend":{"type":"vxlan","vtep_mac":"02:00:00:00:00:01"}}'


def put(key: bytes, value: bytes, revision: int = 5) -> WatchEvent:
    return WatchEvent("put", KeyValue(key, value, revision, revision, 77))


def delete(key: bytes, revision: int = 6) -> WatchEvent:
    return WatchEvent("delete", KeyValue(key, b"", 0, revision, 0))


def test_valid_put_becomes_lease_put_with_metadata() -> None:
    decoded = decode_chunk(LAYOUT, CONFIG, WatchChunk(5, (put(b"/t/subnets/10.244.1.0-24", GOOD),)))
    (event,) = decoded.events
    assert isinstance(event, LeasePut)
    assert event.lease.subnet == ip_network("10.244.1.0/24")
    assert (event.lease.lease_id, event.lease.mod_revision) == (77, 5)
    assert decoded.deleted == () and decoded.rejected == ()


def test_delete_becomes_lease_deleted_and_is_reported_for_cooldown() -> None:
    decoded = decode_chunk(LAYOUT, CONFIG, WatchChunk(6, (delete(b"/t/subnets/10.244.1.0-24"),)))
    assert decoded.events == (LeaseDeleted(ip_network("10.244.1.0/24")),)
    assert decoded.deleted == (ip_network("10.244.1.0/24"),)


def test_malformed_put_counts_as_deletion_but_not_as_freed() -> None:
    decoded = decode_chunk(LAYOUT, CONFIG, WatchChunk(7, (put(b"/t/subnets/10.244.1.0-24", b"{bad"),)))
    assert decoded.events == (LeaseDeleted(ip_network("10.244.1.0/24")),)
    assert decoded.deleted == ()
    assert len(decoded.rejected) == 1 and "10.244.1.0/24" in decoded.rejected[0]


def test_put_outside_the_network_is_rejected() -> None:
    decoded = decode_chunk(LAYOUT, CONFIG, WatchChunk(7, (put(b"/t/subnets/10.99.1.0-24", GOOD),)))
    assert decoded.events == (LeaseDeleted(ip_network("10.99.1.0/24")),)
    assert len(decoded.rejected) == 1


def test_unparsable_key_is_skipped() -> None:
    chunk = WatchChunk(8, (put(b"/t/subnets/junk", GOOD), delete(b"/t/subnets/10.244.1.0-24")))
    decoded = decode_chunk(LAYOUT, CONFIG, chunk)
    assert decoded.events == (LeaseDeleted(ip_network("10.244.1.0/24")),)
    assert len(decoded.rejected) == 1
