"""Records whose public_ip is no usable underlay address (loopback, broadcast, multicast...) are refused,
both when parsed from etcd and when built locally."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network

import pytest

from ipam.config import ClusterConfig
from overlayd.cluster.diff import LeaseDeleted
from overlayd.cluster.errors import RecordError
from overlayd.cluster.etcd import KeyValue, WatchChunk, WatchEvent
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import HostRecord, parse_host_record_untrusted
from overlayd.cluster.watch import decode_chunk

LAYOUT = KeyLayout("/t")
CONFIG = ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24)
BACKEND = {"type": "vxlan", "vtep_mac": "02:00:00:00:00:01"}


def value(public_ip: str = "198.18.0.11") -> bytes:
    return json.dumps({"node": "h1", "public_ip": public_ip, "backend": BACKEND}).encode()


def put(key: bytes, data: bytes, revision: int = 5) -> WatchEvent:
    return WatchEvent("put", KeyValue(key, data, revision, revision, 77))


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "255.255.255.255", "240.0.0.1",
                                     "0.0.0.0", "224.0.0.1", "ff02::1", "fe80::1", "::ffff:198.18.0.11"])
def test_addresses_that_are_no_underlay_are_refused(address: str) -> None:
    with pytest.raises(RecordError) as info:
        parse_host_record_untrusted(value(address))
    assert address in str(info.value)
    with pytest.raises(RecordError):
        HostRecord("h1", ip_address(address), BACKEND)


@pytest.mark.parametrize("address", ["198.18.0.11", "10.0.0.1", "192.168.1.1", "100.64.0.1", "169.254.1.1",
                                     "203.0.113.7", "2001:db8::1", "fd00::1"])
def test_usable_underlay_addresses_still_parse(address: str) -> None:
    assert parse_host_record_untrusted(value(address)).public_ip == ip_address(address)


def test_a_loopback_record_written_to_etcd_is_skipped_as_a_bad_endpoint() -> None:
    decoded = decode_chunk(LAYOUT, CONFIG, WatchChunk(5, (put(b"/t/subnets/10.244.1.0-24", value("127.0.0.1")),)))
    assert decoded.events == (LeaseDeleted(ip_network("10.244.1.0/24")),)
    (rejection,) = decoded.rejected
    assert "127.0.0.1" in rejection
