"""Listings larger than one gRPC message (issue 7, item 7), against a real etcd.

gRPC refuses a response over 4 MB by default, so a cluster whose subnets listing grew
past that could not be listed at all: every restarted daemon failed the same way. The
listing is read in pages, each as of the first page's revision, so it stays one snapshot.
"""

from __future__ import annotations

import ipaddress
import json

import etcd3
import pytest
from etcd3 import etcdrpc

from ipam.config import ClusterConfig
from overlayd.cluster.etcd import EtcdClient, Range
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.store import SubnetStore
from overlayd.lab.etcd_process import EtcdProcess

pytestmark = pytest.mark.integration

CONFIG = ClusterConfig(network=ipaddress.ip_network("10.0.0.0/8"), subnet_len=24)
HOSTS = 5000
PAD = 3 * 250  # three padding fields: a valid record of about 1 kB
PUTS_PER_TXN = 100  # etcd allows 128 operations and 1.5 MB per request


def _subnet(i: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24")


def _record(i: int) -> bytes:
    pad = {f"pad{n}": "x" * (PAD // 3) for n in range(3)}
    backend = {"type": "vxlan", "vtep_mac": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"} | pad
    return json.dumps({"node": f"h{i}", "public_ip": f"198.18.{i // 256}.{i % 256}", "backend": backend}).encode()


def _put_all(raw: etcd3.Etcd3Client, items: list[tuple[str, bytes]]) -> None:
    for start in range(0, len(items), PUTS_PER_TXN):
        puts = [raw.transactions.put(key, value) for key, value in items[start:start + PUTS_PER_TXN]]
        raw.transaction(compare=[], success=puts, failure=[])


def test_a_listing_over_four_megabytes_is_read_whole(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: etcd3.Etcd3Client
) -> None:
    layout = KeyLayout(etcd_prefix)
    _put_all(raw, [(layout.subnet_key(_subnet(i)), _record(i)) for i in range(HOSTS)])
    etcd = EtcdClient([etcd_server.endpoint])
    try:
        listing = SubnetStore(etcd, layout, lease_ttl=30).list_leases(CONFIG)
    finally:
        etcd.close()
    assert sum(len(_record(i)) for i in range(HOSTS)) > 4 * 1024 * 1024
    assert listing.rejected == ()
    assert len(listing.leases) == HOSTS
    assert {lease.subnet for lease in listing.leases} == {_subnet(i) for i in range(HOSTS)}
    assert {lease.record.node for lease in listing.leases} == {f"h{i}" for i in range(HOSTS)}


class _WritesBetweenPages(EtcdClient):
    """Changes the listed range after the first page, as another host would."""

    def __init__(self, endpoint: str, raw: etcd3.Etcd3Client, prefix: str) -> None:
        super().__init__([endpoint])
        self.raw, self.prefix, self.pages = raw, prefix, 0

    def _range_page(self, what: str, request: etcdrpc.RangeRequest) -> etcdrpc.RangeResponse:
        page = super()._range_page(what, request)
        self.pages += 1
        if self.pages == 1:
            self.raw.put(f"{self.prefix}k0999", b"changed")  # a key not listed yet
            self.raw.put(f"{self.prefix}k1999a", b"new")  # a key that did not exist
            self.raw.delete(f"{self.prefix}k1500")
        return page


def test_a_paged_listing_is_one_snapshot(etcd_server: EtcdProcess, etcd_prefix: str, raw: etcd3.Etcd3Client) -> None:
    prefix = f"{etcd_prefix}/paged/"
    _put_all(raw, [(f"{prefix}k{i:04d}", b"v%d" % i) for i in range(2000)])
    etcd = _WritesBetweenPages(etcd_server.endpoint, raw, prefix)
    try:
        listed: Range = etcd.get_prefix(prefix, page_size=100)
    finally:
        etcd.close()
    assert etcd.pages == 20
    snapshot = raw.get_prefix_response(prefix, revision=listed.revision)
    assert [(kv.key, kv.value) for kv in listed.kvs] == [(kv.key, kv.value) for kv in snapshot.kvs]
    values = {kv.key: kv.value for kv in listed.kvs}
    assert len(values) == 2000 and values[f"{prefix}k0999".encode()] == b"v999"
    assert raw.get(f"{prefix}k0999")[0] == b"changed"  # etcd did change in between
