"""Why a record was skipped travels with it (RecordError.reason, kept by str()) through the
watch path to overlayd_dropped_records_total{reason}, instead of every drop counting as malformed."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
import trio

from overlayd.cluster.errors import RecordError
from overlayd.cluster.etcd import KeyValue, Range, WatchChunk
from overlayd.cluster.store import SubnetStore
from overlayd.cluster.watch import LeaseFollower, decode_chunk
from overlayd.metrics.daemon import DROP_REASONS, DaemonMetrics
from overlayd.trust.errors import RejectReason
from tests.unit.test_hardening_records import CONFIG, LAYOUT, put, value
from tests.unit.test_trust_signing import verifier


@pytest.mark.parametrize("key, data, reason", [
    (b"/t/subnets/10.244.1.0-24", b"{bad", "malformed"),
    (b"/t/subnets/junk", value(), "malformed"),
    (b"/t/subnets/10.99.1.0-24", value(), "bad_subnet"),
    (b"/t/subnets/10.244.1.0-25", value(), "bad_subnet"),
    (b"/t/subnets/10.244.1.0-24", value("255.255.255.255"), "bad_endpoint"),
])
def test_each_rejection_carries_its_reason(key: bytes, data: bytes, reason: str) -> None:
    (rejection,) = decode_chunk(LAYOUT, CONFIG, WatchChunk(5, (put(key, data),))).rejected
    assert rejection.reason == reason


def test_trust_rejections_carry_the_trust_layers_reason() -> None:
    chunk = WatchChunk(5, (put(b"/t/subnets/10.244.1.0-24", value()),))
    (rejection,) = decode_chunk(LAYOUT, CONFIG, chunk, verifier()).rejected
    assert rejection.reason == RejectReason.UNSIGNED


def test_every_reason_is_a_fixed_counter_label() -> None:
    assert {"malformed", "bad_subnet", "bad_endpoint"} | {str(r) for r in RejectReason} <= set(DROP_REASONS)


def _drops(metrics: DaemonMetrics) -> dict[str, float]:
    return {reason: metrics.registry.get_sample_value("overlayd_dropped_records_total", {"reason": reason})
            for reason in DROP_REASONS}


def test_counter_counts_by_reason_and_unknown_text_as_malformed() -> None:
    metrics = DaemonMetrics()
    metrics.count_dropped(["plain text from somewhere", str(RecordError("x", reason="bad_subnet")),
                           str(RecordError("y", reason="not-a-label"))])
    drops = _drops(metrics)
    assert drops["malformed"] == 2 and drops["bad_subnet"] == 1
    assert metrics.registry.get_sample_value("overlayd_dropped_records_total", {"reason": "not-a-label"}) is None


class FakeEtcd:
    """Just enough of EtcdClient for SubnetStore.list_leases."""

    def __init__(self, kvs: list[KeyValue]) -> None:
        self.kvs = kvs

    def get_prefix(self, prefix: str) -> Range:
        return Range(9, tuple(kv for kv in self.kvs if kv.key.startswith(prefix.encode())))


def test_a_listing_keeps_the_reasons_through_the_watch_batch() -> None:
    kvs = [KeyValue(b"/t/subnets/10.244.1.0-24", value("127.0.0.1"), 1, 1, 7),
           KeyValue(b"/t/subnets/10.99.1.0-24", value(), 2, 2, 7),
           KeyValue(b"/t/subnets/10.244.2.0-24", b"[]", 3, 3, 7),
           KeyValue(b"/t/subnets/10.244.3.0-24", value("198.18.0.13"), 4, 4, 7)]
    store = SubnetStore(FakeEtcd(kvs), LAYOUT, lease_ttl=60)  # type: ignore[arg-type]
    follower = LeaseFollower(store, CONFIG, None)

    async def first_batch():
        send, receive = trio.open_memory_channel(10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower.run, send)
            batch = await receive.receive()  # the first full listing
            nursery.cancel_scope.cancel()
        return batch

    batch = trio.run(first_batch)
    assert sorted(r.reason for r in batch.rejected) == ["bad_endpoint", "bad_subnet", "malformed"]
    assert list(batch.peers) == [ip_network("10.244.3.0/24")]
    metrics = DaemonMetrics()
    metrics.count_dropped(batch.rejected)
    drops = _drops(metrics)
    assert (drops["bad_endpoint"], drops["bad_subnet"], drops["malformed"]) == (1, 1, 1)
